"""Issue 11: no silent wrong answer around the kernels (cpp backend and the reference).

Each test reproduces a report of the audit in a loop and fails on the code before the fix:
stale packed weights (fresh masks at a recycled address, fused optimizers that do not bump
`_version`, `.data` assignments and numpy-view writes), dense_weight_grad dropped under
torch.compile, pixels accepted by the compressed conv format, NaN/inf rules, and the torch conv
backward bug the reference path must avoid.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import snnsparse as ss
from conftest import assert_close64, mask, randn, spikes
from snnsparse.ops import reference as R

pytestmark = pytest.mark.skipif(ss.backends.available()["cpp"] is not True,
                                reason=f"cpp backend unavailable: {ss.backends.available()['cpp']}")


# ------------------------------------------------------------------------------------ stale packings
@pytest.mark.parametrize("grad", [False, True])
def test_fresh_mask_every_call(rng, grad):
    # Reported: 2-72 wrong outputs in 500 calls, a new mask allocated where a freed one was.
    x = spikes((16, 64), 0.3, rng)
    w = randn((32, 64), rng)
    with torch.set_grad_enabled(grad):
        for i in range(500):
            m = torch.rand(32, 64, generator=rng) < 0.3
            y = ss.functional.spike_linear(x, w, mask=m, backend="cpp")
            assert_close64(y, F.linear(x.double(), torch.where(m, w, 0).double()), msg=f"call {i}")


@pytest.mark.parametrize("opt_name", ["Adam", "AdamW", "SGD"])
def test_fused_optimizer_step_between_inference_passes(rng, opt_name):
    # Reported: outputs off by 2.4 after a fused step (fused optimizers do not bump _version).
    layer = ss.nn.SpikeLinear(64, 32, backend="cpp")
    layer.set_mask(mask(layer.weight.shape, 0.4, rng))
    kwargs = {"momentum": 0.9} if opt_name == "SGD" else {}
    opt = getattr(torch.optim, opt_name)(layer.parameters(), lr=0.1, fused=True, **kwargs)
    x = spikes((8, 64), 0.3, rng)
    for step in range(5):
        with torch.no_grad():
            y = layer(x)
        assert_close64(y, F.linear(x, layer.weight * layer.weight_mask, layer.bias), msg=f"step {step}")
        opt.zero_grad()
        layer(x).square().sum().backward()
        opt.step()
    with torch.no_grad():
        assert_close64(layer(x), F.linear(x, layer.weight * layer.weight_mask, layer.bias))


def test_data_assignment_and_numpy_writes(rng):
    # Reported: `w.data = new` twice between calls stale in 167-189 of 200 trials; numpy views too.
    layer = ss.nn.SpikeConv2d(3, 8, 3, padding=1, backend="cpp")
    layer.set_mask(mask(layer.weight.shape, 0.5, rng))
    x = spikes((2, 3, 6, 6), 0.4, rng)

    def expect():
        return F.conv2d(x.double(), (layer.weight * layer.weight_mask).double(), layer.bias.double(), padding=1)

    with torch.no_grad():
        for trial in range(200):
            layer(x)
            layer.weight.data = torch.randn(layer.weight.shape, generator=rng)
            layer.weight.data = torch.randn(layer.weight.shape, generator=rng)
            assert_close64(layer(x), expect(), msg=f"trial {trial}")
        for trial in range(20):
            layer(x)
            layer.weight.detach().numpy()[...] = np.random.default_rng(trial).standard_normal(layer.weight.shape)
            assert_close64(layer(x), expect(), msg=f"numpy write {trial}")


def test_packed_snapshot_is_independent_of_the_weight(rng):
    from snnsparse.ops import conv2d as CV
    from snnsparse.ops import linear as L
    w, m = randn((9, 20), rng), mask((9, 20), 0.3, rng)
    x = spikes((5, 20), 0.5, rng)
    expect = F.linear(x.double(), (w * m).double())
    for fmt in (0, 1, 2):
        p = L.pack(w, m, fmt)
        w2 = w.clone()
        w2.mul_(5)  # nothing done to a weight reaches a snapshot packed from another tensor
        y, n = L.forward_packed(x, p, count=True)
        assert_close64(y, expect, msg=f"format {fmt}")
        assert int(n) == int((x @ m.float().t()).sum())
        assert 0 < p.density < 1 and repr(p).startswith("PackedWeight(linear")
    wc, mc = randn((6, 3, 3, 3), rng), mask((6, 3, 3, 3), 0.03, rng)
    xc = spikes((2, 3, 7, 7), 0.5, rng)
    pc = CV.pack(wc, mc, 1, stride=(1, 1), in_width=7, out_width=7)
    yc, _ = CV.forward_packed(xc, pc, None, (1, 1), (1, 1), (1, 1))
    assert_close64(yc, F.conv2d(xc.double(), (wc * mc).double(), padding=1))
    with pytest.raises(ValueError, match="linear PackedWeight"):
        L.forward_packed(x, pc)


# ------------------------------------------------------------------------------ flags lost on a path
@pytest.mark.parametrize("dwg", [False, True])
def test_dense_weight_grad_survives_torch_compile(rng, dwg):
    # Reported: under torch.compile on CPU dense_weight_grad was dropped (the masked gradient came back).
    x = spikes((6, 12), 0.5, rng)
    w, m = randn((5, 12), rng), mask((5, 12), 0.4, rng)
    xc = spikes((2, 3, 6, 6), 0.5, rng)
    wc, mc = randn((4, 3, 3, 3), rng), mask((4, 3, 3, 3), 0.4, rng)

    def f(w_, wc_):
        a = ss.functional.spike_linear(x, w_, mask=m, backend="cpp", dense_weight_grad=dwg)
        b = ss.functional.spike_conv2d(xc, wc_, None, 1, 1, mask=mc, backend="cpp", dense_weight_grad=dwg)
        return a.square().sum() + b.square().sum()

    eager_w, eager_c = w.clone().requires_grad_(), wc.clone().requires_grad_()
    comp_w, comp_c = w.clone().requires_grad_(), wc.clone().requires_grad_()
    f(eager_w, eager_c).backward()
    torch._dynamo.reset()
    torch.compile(f, fullgraph=True)(comp_w, comp_c).backward()
    ref_w, ref_c = w.double().requires_grad_(), wc.double().requires_grad_()
    (F.linear(x.double(), R.masked_weight(ref_w, m, dwg)).square().sum()
     + F.conv2d(xc.double(), R.masked_weight(ref_c, mc, dwg), padding=1).square().sum()).backward()
    for got in (eager_w.grad, comp_w.grad):
        assert_close64(got, ref_w.grad, rtol=1e-4, atol=1e-4)
    for got in (eager_c.grad, comp_c.grad):
        assert_close64(got, ref_c.grad, rtol=1e-4, atol=1e-4)
    assert bool(comp_w.grad[~m].ne(0).any()) == dwg


# ------------------------------------------------------------------- pixels in the compressed format
def test_compressed_conv_refuses_pixels_in_channels_without_synapses(rng):
    # Reported: format 2 skipped channels with no kept synapse unread, so pixels there were accepted
    # and the layer recorded last_input_binary=True (energy.count then booked them as spikes).
    w = randn((4, 3, 3, 3), rng)
    m = torch.zeros(4, 3, 3, 3, dtype=torch.bool)
    m[:, 0] = torch.rand(4, 3, 3, generator=rng) < 0.1  # density < 5%: compressed rows
    m[0, 0, 0, 0] = True
    x = spikes((2, 3, 8, 8), 0.3, rng)
    x[1, 2, 3, 4] = 0.37  # a pixel value in channel 2, which has no kept synapse
    with pytest.raises(ss.functional.NonBinarySpikesError, match="0.37"):
        ss.functional.spike_conv2d(x, w, None, 1, 1, mask=m, backend="cpp")
    layer = ss.nn.SpikeConv2d(3, 4, 3, padding=1, backend="cpp")
    layer.set_mask(m)
    y = layer(x)
    assert layer.last_input_binary is False
    assert_close64(y, F.conv2d(x.double(), (layer.weight * m).double(), layer.bias.double(), padding=1))


# -------------------------------------------------------------------------------------- NaN and inf
@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_pruned_nan_and_inf_weights_are_absent(rng, backend):
    for density in (0.5, 0.02, 1.0):
        w, m = randn((7, 40), rng), mask((7, 40), density, rng)
        w[~m] = torch.tensor([float("nan"), float("inf"), -float("inf")]).repeat(int((~m).sum()))[: int((~m).sum())]
        x = spikes((3, 40), 0.5, rng)
        clean = torch.where(m, w, 0)
        y = ss.functional.spike_linear(x, w, mask=m, backend=backend)
        assert_close64(y, F.linear(x.double(), clean.double()), msg=f"density {density}")
        wc, mc = randn((5, 4, 3, 3), rng), mask((5, 4, 3, 3), density, rng)
        wc[~mc] = float("nan")
        xc = spikes((2, 4, 6, 6), 0.5, rng)
        yc = ss.functional.spike_conv2d(xc, wc, None, 1, 1, mask=mc, backend=backend)
        assert_close64(yc, F.conv2d(xc.double(), torch.where(mc, wc, 0).double(), padding=1))
        # gradients: the input gradient sees the pruned weight as 0 too
        xg = xc.double().requires_grad_()
        wg = wc.double()
        ss.functional.spike_conv2d(xg, wg, None, 1, 1, mask=mc, backend=backend).sum().backward()
        assert torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("v_reset", [0.0, -0.3, None])
@pytest.mark.parametrize("decay_input", [True, False])
def test_lif_nonfinite_input_propagates_as_torch(rng, v_reset, decay_input):
    # Reported: +inf input gave v_last 0.273 on cpp (a select) and NaN on the reference (S*V_reset + (1-S)*H).
    x = randn((5, 30), rng)
    x[1, :10] = float("inf")
    x[2, 10:20] = -float("inf")
    x[3, 20:] = float("nan")
    for dt in (torch.float32, torch.float64):
        args = dict(tau=2.0, v_threshold=1.0, v_reset=v_reset, decay_input=decay_input)
        s_c, v_c = ss.functional.lif(x.to(dt), backend="cpp", **args)
        s_r, v_r = ss.functional.lif(x.to(dt), backend="reference", **args)
        torch.testing.assert_close(s_c, s_r, equal_nan=True, rtol=0, atol=0)
        torch.testing.assert_close(v_c, v_r, equal_nan=True, rtol=0, atol=0)


# --------------------------------------------------------------------------- the oracle's own bug
def test_reference_conv_backward_avoids_torch_channels_last_bug(rng):
    # torch 2.13 CPU: float64, groups > 1, channels_last weight and a channels_last-strided input of
    # batch 1 give a conv input gradient off by up to 3.0. The reference makes its input contiguous.
    x = spikes((1, 1, 4, 5, 5), 0.5, rng, torch.float64)        # [T, B=1, C, H, W]
    x = x.squeeze(0).to(memory_format=torch.channels_last).unsqueeze(0).requires_grad_()
    w = randn((6, 2, 3, 3), rng, torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    y = ss.functional.spike_conv2d(x, w, None, 1, 1, 1, 2, backend="reference")
    g = torch.randn(y.shape, generator=rng, dtype=torch.float64)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    xe, we = x.detach().contiguous().requires_grad_(), w.detach().contiguous().requires_grad_()
    ye = F.conv2d(xe.flatten(0, 1), we, None, 1, 1, 1, 2)
    ex, ew = torch.autograd.grad(ye, (xe, we), g.flatten(0, 1))
    assert_close64(gx, ex, rtol=1e-10, atol=1e-10)
    assert_close64(gw, ew, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
def test_lif_under_torch_compile_equals_eager(rng, surrogate):
    # The lif op has one schema with the surrogate in it, so a compiled graph keeps it (and its h_seq).
    x = randn((4, 3, 17), rng) * 1.5 + 0.5

    def f(x_):
        s, v, h = ss.functional.lif_with_h(x_, backend="cpp", surrogate=surrogate, v_reset=None, return_h=True)
        return (s * torch.arange(17.0)).sum() + v.square().sum() + h.sum()

    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye = f(xe)
    ye.backward()
    torch._dynamo.reset()
    yc = torch.compile(f, fullgraph=True)(xc)
    yc.backward()
    assert_close64(yc, ye)
    assert_close64(xc.grad, xe.grad)


def test_packed_forward_refuses_a_gradient_it_cannot_give(rng):
    # The packed ops run on a zero placeholder weight: a gradient w.r.t. their input would be all zeros.
    from snnsparse.ops import linear as L
    w, m = randn((4, 6), rng), mask((4, 6), 0.5, rng)
    p = L.pack(w, m)
    x = spikes((3, 6), 0.5, rng).requires_grad_()
    with pytest.raises(RuntimeError, match="inference-only"):
        L.forward_packed(x, p)
    with torch.no_grad():
        assert_close64(L.forward_packed(x, p)[0], F.linear(x.double(), (w * m).double()))


def test_state_dict_mask_is_checked_like_set_mask():
    layer = ss.nn.SpikeLinear(4, 3)
    sd = layer.state_dict()
    sd["weight_mask"] = torch.full((3, 4), 0.2)  # scores: copy_ into the bool buffer would make all True
    with pytest.raises(ValueError, match="weight_mask.*only 0 and 1"):
        layer.load_state_dict(sd)
    assert layer.weight_mask.all()  # unchanged (it was all-True before)
    sd["weight_mask"] = (torch.arange(12).reshape(3, 4) % 3 == 0).float()  # torch prune's 0/1 floats: fine
    layer.load_state_dict(sd)
    assert torch.equal(layer.weight_mask, sd["weight_mask"].bool())


@pytest.mark.parametrize("flag", ["return_count", "dense_weight_grad"])
def test_functional_flags_must_be_bools(flag):
    x, w = torch.ones(2, 4), torch.ones(3, 4)
    with pytest.raises(TypeError, match=flag):
        ss.functional.spike_linear(x, w, **{flag: "no"})
    with pytest.raises(TypeError, match=flag):
        ss.functional.spike_conv2d(torch.ones(1, 4, 3, 3), torch.ones(3, 4, 1, 1), **{flag: "no"})
    with pytest.raises(TypeError, match="groups|stride"):
        ss.functional.spike_conv2d(torch.ones(1, 4, 3, 3), torch.ones(3, 4, 1, 1), stride=(True, 1))
