"""ss.nn.convert on snnTorch and Norse models: snnTorch's Leaky becomes ss.nn.Leaky with the same
float32 spikes and membranes bit for bit (and the same gradients), its Linear / Conv2d layers Spike*
layers; options ss.nn.Leaky cannot reproduce and Norse's neurons are left and reported."""
import copy
import itertools

import pytest
import torch
import torch.nn as nn

import snnsparse as ss

snn = pytest.importorskip("snntorch", reason="snntorch 1.0.0 is a test dependency (requirements-dev.txt)")


class _Net(nn.Module):
    """snnTorch's tutorial network: the state is passed by hand (init_hidden=False)."""

    def __init__(self, **leaky):
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.lif1 = snn.Leaky(**leaky)
        self.fc2 = nn.Linear(16, 5)
        self.lif2 = snn.Leaky(**leaky)

    def forward(self, x):
        mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()
        spk_rec, mem_rec = [], []
        for xt in x:
            spk1, mem1 = self.lif1(self.fc1(xt), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk_rec.append(spk2)
            mem_rec.append(torch.cat([spk1, mem1, mem2], -1))
        return torch.stack(spk_rec), torch.stack(mem_rec)  # [T, B, 5], [T, B, spk1 16 | mem1 16 | mem2 5]


def _inputs(rng, t=6, b=4):
    return torch.rand(t, b, 12, generator=rng) * 1.5


def _convert_and_compare(net, x, cls, decays, exact, gsf=1.0):
    """convert(net) (fc1, lif1, fc2, lif2; lif2's `decays` learnable, lif1's not): the layers become Spike* layers and
    `cls`, recorded in the report; the outputs, states and gradients equal snnTorch's: the first `exact`
    state columns (layer 1: fc1 sees analog input, the same dense F.linear) bit for bit, the rest to
    rounding (fc2 sees spikes and runs the event kernel, whose summation order differs from F.linear's)."""
    conv = ss.nn.convert(copy.deepcopy(net))
    assert isinstance(conv.fc1, ss.nn.SpikeLinear) and isinstance(conv.fc2, ss.nn.SpikeLinear)
    assert isinstance(conv.lif1, cls) and isinstance(conv.lif2, cls)
    for decay in decays:
        assert isinstance(getattr(conv.lif2, decay), nn.Parameter) and not isinstance(getattr(conv.lif1, decay),
                                                                                      nn.Parameter)
    report = {r.name: (r.original, r.action, r.result) for r in conv.snnsparse_convert_report}
    name = cls.__name__
    assert report["lif1"] == (name, "converted", name) and report["fc2"][1] == "converted"
    xr, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    spk_ref, state_ref = net(xr)
    spk, state = conv(xc)
    for fired in (spk_ref, state_ref[..., :16]):  # output and hidden spikes
        assert 0 < fired.mean() < gsf, "both layers must fire sometimes"
    assert torch.equal(spk, spk_ref) and torch.equal(state[..., :exact], state_ref[..., :exact])
    torch.testing.assert_close(state, state_ref, rtol=1e-5, atol=1e-5)  # fc2 rounds differently, over T steps
    (state_ref.square().sum() + spk_ref.sum()).backward()
    (state.square().sum() + spk.sum()).backward()
    # Gradients to rounding (fc2's backward sums in another order), relative to the largest entry.
    for param in (*(f"lif2.{d}" for d in decays), "fc1.weight", "fc2.weight"):
        ours, ref = conv.get_parameter(param).grad, net.get_parameter(param).grad
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()), msg=param)
    torch.testing.assert_close(xc.grad, xr.grad, rtol=1e-5, atol=1e-5 * float(xr.grad.abs().max()))
    return conv


CASES = list(itertools.product(("subtract", "zero", "none"), (True, False), (1.0, 0.5)))


@pytest.mark.parametrize("reset,delay,gsf", CASES, ids=[f"{r}-delay{d}-gsf{g}" for r, d, g in CASES])
def test_converted_snntorch_leaky_is_bit_exact_with_gradients(rng, reset, delay, gsf):
    torch.manual_seed(rng.initial_seed())
    beta = torch.rand(16, generator=rng) * 0.5 + 0.45  # per-neuron decay on the hidden layer
    net = _Net(beta=0.9, threshold=0.7, reset_mechanism=reset, reset_delay=delay, graded_spikes_factor=gsf,
               learn_beta=True)
    net.lif1 = snn.Leaky(beta=beta, threshold=0.6, reset_mechanism=reset, reset_delay=delay,
                         graded_spikes_factor=gsf)
    x = _inputs(rng)
    with torch.no_grad():  # both layers fire sometimes, and not always (checked below), for any seed
        net.fc1.weight.mul_(2.5)
        net.fc2.weight.uniform_(-0.6 / gsf, 0.6 / gsf, generator=rng)
        cur = net.fc2(net(x)[1][..., :16]).flatten(0, 1)  # fc2's currents from the hidden spikes
        net.fc2.bias += 0.15 - cur.median(0).values
    conv = _convert_and_compare(net, x, ss.nn.Leaky, ("beta",), exact=32, gsf=gsf)
    # The neuron alone, fed the same currents: membranes equal bit for bit for every option.
    for ref_lif, our_lif in ((net.lif1, conv.lif1), (net.lif2, conv.lif2)):
        n = ref_lif.beta.numel() if ref_lif.beta.dim() else 16
        m_ref, m_ours = ref_lif.reset_mem(), our_lif.reset_mem()
        for _ in range(8):
            cur = torch.randn(3, n, generator=rng)
            s_ref, m_ref = ref_lif(cur, m_ref)
            s_ours, m_ours = our_lif(cur, m_ours)
            assert torch.equal(s_ours, s_ref) and torch.equal(m_ours, m_ref)


def test_converted_init_hidden_sequential_and_checkpoint(rng):
    """init_hidden=True layers in an nn.Sequential (the last with output=True), one step per call."""
    torch.manual_seed(rng.initial_seed())
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), snn.Leaky(beta=0.8, init_hidden=True), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(4 * 3 * 3, 3), snn.Leaky(beta=0.7, init_hidden=True, output=True))
    with torch.no_grad():
        net[0].weight.mul_(3.0)
    conv = ss.nn.convert(copy.deepcopy(net))
    assert [type(m).__name__ for m in conv] == ["SpikeConv2d", "Leaky", "AvgPool2d", "Flatten", "SpikeLinear", "Leaky"]
    x = torch.rand(5, 2, 1, 6, 6, generator=rng) * 2

    def run(model):
        for m in model.modules():
            if hasattr(m, "reset_mem"):
                m.reset_mem()
            elif isinstance(m, ss.nn.Leaky):
                m.reset()
        out = [model(xt) for xt in x]
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])

    with torch.no_grad():
        spk_ref, mem_ref = run(net)
        spk, mem = run(conv)
    assert torch.equal(spk, spk_ref) and torch.equal(mem, mem_ref)
    # snnTorch's checkpoint (reset_mechanism_val included) loads; another reset mechanism is refused.
    conv.load_state_dict(net.state_dict())
    state = net.state_dict()
    state["1.reset_mechanism_val"] = torch.tensor(1)
    with pytest.raises(RuntimeError, match="reset mechanism .* is not this Leaky's 'subtract'"):
        conv.load_state_dict(state)


def test_ss_leaky_multistep_equals_snntorch(rng):
    """ss.nn.Leaky built directly (its own (u > 0) spike with an atan surrogate), time-major."""
    for reset, delay in itertools.product(("subtract", "zero", "none"), (True, False)):
        ref = snn.Leaky(beta=0.85, threshold=0.5, reset_mechanism=reset, reset_delay=delay)
        ours = ss.nn.Leaky(0.85, 0.5, reset_mechanism=reset, reset_delay=delay)
        x = torch.randn(7, 3, 10, generator=rng) * 0.6 + 0.2
        xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
        mem = ref.reset_mem()
        spk_ref = []
        for xt in xr:
            s, mem = ref(xt, mem)
            spk_ref.append(s)
        spk_ref = torch.stack(spk_ref)
        spk = ours(xo)
        assert torch.equal(spk, spk_ref), (reset, delay)
        assert torch.equal(ours.mem, mem.detach())
        spk_ref.sum().backward()
        spk.sum().backward()
        torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-5, atol=1e-6)
    assert ss.nn.Leaky(0.5)(torch.zeros(0, 2)).shape == (0, 2)


def test_leaky_refuses_bad_arguments_when_built():
    with pytest.raises(ValueError, match="reset_mechanism must be one of"):
        ss.nn.Leaky(0.9, reset_mechanism="soft")
    with pytest.raises(ValueError, match="graded_spikes_factor must be nonzero"):
        ss.nn.Leaky(0.9, graded_spikes_factor=0.0)
    with pytest.raises(ValueError, match="beta must be finite"):
        ss.nn.Leaky(float("nan"))
    with pytest.raises(TypeError, match="reset_delay must be a bool"):
        ss.nn.Leaky(0.9, reset_delay=0)
    with pytest.raises(ValueError, match="surrogate must be one of"):
        ss.nn.Leaky(0.9, surrogate="relu")


def test_convert_leaves_snntorch_options_it_cannot_reproduce(rng):
    net = nn.Sequential(nn.Linear(4, 6), snn.Leaky(beta=0.9, init_hidden=True, inhibition=True),
                        nn.Linear(6, 3), snn.Leaky(beta=0.9, init_hidden=True, state_quant=lambda m: m.round()))
    with pytest.warns(ss.nn.ConvertWarning) as caught:
        conv = ss.nn.convert(net)
    (message,) = [str(w.message) for w in caught if w.category is ss.nn.ConvertWarning]
    assert "'1' (Leaky): inhibition=True" in message and "'3' (Leaky): state_quant" in message
    assert type(conv[1]) is snn.Leaky and type(conv[3]) is snn.Leaky
    assert isinstance(conv[0], ss.nn.SpikeLinear) and isinstance(conv[2], ss.nn.SpikeLinear)


def test_convert_leaves_norse_neurons_and_says_why(rng):
    norse = pytest.importorskip("norse.torch", reason="norse 1.1.0 is a test dependency")
    net = nn.Sequential(nn.Linear(4, 6), norse.LIFCell(), )
    with pytest.warns(ss.nn.ConvertWarning, match=r"'1' \(LIFCell\): Norse LIFCell integrates"):
        conv = ss.nn.convert(net)
    assert isinstance(conv[0], ss.nn.SpikeLinear) and type(conv[1]) is norse.LIFCell
    (rec,) = [r for r in conv.snnsparse_convert_report if r.name == "1"]
    assert rec.action == "left" and "fires at v > v_th" in rec.reason
    x = (torch.rand(3, 4, generator=rng) > 0.5).float()
    z, _ = conv[1](conv[0](x))  # still runs as Norse
    assert z.shape == (3, 6)


class _SynapticNet(nn.Module):
    """snnTorch's Synaptic tutorial network: (spk, syn, mem) passed by hand (init_hidden=False)."""

    def __init__(self, lif1, lif2):
        super().__init__()
        self.fc1, self.lif1, self.fc2, self.lif2 = nn.Linear(12, 16), lif1, nn.Linear(16, 5), lif2

    def forward(self, x):
        (syn1, mem1), (syn2, mem2) = self.lif1.reset_mem(), self.lif2.reset_mem()
        spk_rec, state_rec = [], []
        for xt in x:
            spk1, syn1, mem1 = self.lif1(self.fc1(xt), syn1, mem1)
            spk2, syn2, mem2 = self.lif2(self.fc2(spk1), syn2, mem2)
            spk_rec.append(spk2)
            state_rec.append(torch.cat([spk1, syn1, mem1, syn2, mem2], -1))
        return torch.stack(spk_rec), torch.stack(state_rec)  # [T, B, 5], [T, B, spk1 | syn1 | mem1 (16 each) | ...]


@pytest.mark.parametrize("reset,delay", list(itertools.product(("subtract", "zero", "none"), (True, False))))
def test_converted_snntorch_synaptic_equals_snntorch(rng, reset, delay):
    torch.manual_seed(rng.initial_seed())
    opts = dict(reset_mechanism=reset, reset_delay=delay)
    net = _SynapticNet(snn.Synaptic(alpha=torch.rand(16, generator=rng) * 0.5 + 0.4, beta=0.8, threshold=0.9, **opts),
                       snn.Synaptic(alpha=0.6, beta=torch.rand(5, generator=rng) * 0.5 + 0.4, threshold=0.7,
                                    learn_alpha=True, learn_beta=True, **opts))
    x = _inputs(rng) * 0.5
    with torch.no_grad():  # both layers fire sometimes, and not always (checked below), for any seed
        net.fc1.weight.mul_(1.5)
        net.fc2.weight.uniform_(-0.4, 0.4, generator=rng)
        cur = net.fc2(net(x)[1][..., :16]).flatten(0, 1)  # fc2's currents from the hidden spikes
        net.fc2.bias += 0.12 - cur.median(0).values
    _convert_and_compare(net, x, ss.nn.Synaptic, ("alpha", "beta"), exact=48)


def test_converted_synaptic_init_hidden_and_what_is_left(rng):
    """init_hidden=True Synaptic layers in an nn.Sequential (the last with output=True: (spk, syn, mem));
    inhibition is left with the reason."""
    net = nn.Sequential(nn.Linear(12, 8), snn.Synaptic(alpha=0.7, beta=0.8, init_hidden=True), nn.Linear(8, 3),
                        snn.Synaptic(alpha=0.5, beta=0.9, init_hidden=True, output=True))
    x = _inputs(rng)

    def run(model):
        for m in model.modules():
            if hasattr(m, "reset_mem"):
                m.reset_mem()
        out = [model(xt) for xt in x]
        return [torch.stack([o[i] for o in out]) for i in range(3)] if isinstance(out[0], tuple) else torch.stack(out)

    with torch.no_grad():  # both layers fire sometimes, and not always (checked), for any seed
        net[0].bias += 0.15 - net[0](x).flatten(0, 1).median(0).values
        net[2].bias += 0.25 - net[2](run(net[:2])).flatten(0, 1).median(0).values
    conv = ss.nn.convert(copy.deepcopy(net))
    assert [type(m).__name__ for m in conv] == ["SpikeLinear", "Synaptic", "SpikeLinear", "Synaptic"]
    with torch.no_grad():
        ref, ours, hidden = run(net), run(conv), run(net[:2])
    assert 0 < ref[0].mean() < 1 and 0 < hidden.mean() < 1
    assert torch.equal(ours[0], ref[0])
    for i in (1, 2):  # layer 2's current and membrane: fc2 runs the event kernel (F.linear's rounding differs)
        torch.testing.assert_close(ours[i], ref[i], rtol=1e-5, atol=1e-5)
    # snnTorch's checkpoint (reset_mechanism_val included) loads into the converted model.
    conv.load_state_dict(net.state_dict())
    left = nn.Sequential(nn.Linear(4, 6), snn.Synaptic(alpha=0.5, beta=0.9, init_hidden=True, inhibition=True))
    with pytest.warns(ss.nn.ConvertWarning, match=r"'1' \(Synaptic\): inhibition=True .* ss.nn.Synaptic"):
        left = ss.nn.convert(left)
    assert type(left[1]) is snn.Synaptic
