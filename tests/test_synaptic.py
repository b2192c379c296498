"""ss.nn.Synaptic against snnTorch 1.0.0's snn.Synaptic: the same float32 spikes, synaptic currents,
membranes and gradients bit for bit, for every option it supports, in both step modes; bad arguments
refused when built. (convert: tests/test_convert_snntorch.py; NIR: tests/test_nir.py.)"""
import itertools

import pytest
import torch
import torch.nn as nn

import snnsparse as ss

snn = pytest.importorskip("snntorch", reason="snntorch 1.0.0 is a test dependency (requirements-dev.txt)")

N, T = 10, 8
CASES = list(itertools.product(("subtract", "zero", "none"), (True, False), (False, True), (1.0, 0.5)))


def _pair(rng, reset, delay, per_neuron, gsf, learn, step_mode):
    """A snnTorch Synaptic and its ss.nn.Synaptic (snnTorch's spike_grad kept): step mode "s" built by
    from_snntorch (what convert does), "m" by the constructor, returning (spikes, syn, mem)."""
    if per_neuron:  # per-neuron decays and thresholds, some clamped (outside [0, 1]) as snnTorch clamps them
        alpha, beta = torch.rand(N, generator=rng) * 1.2 - 0.1, torch.rand(N, generator=rng) * 1.2 - 0.1
        threshold = torch.rand(N, generator=rng) * 0.6 + 0.4
    else:
        alpha, beta, threshold = 0.8, 0.7, 0.6
    ref = snn.Synaptic(alpha=alpha, beta=beta, threshold=threshold, reset_mechanism=reset, reset_delay=delay,
                       learn_alpha=learn, learn_beta=learn, learn_threshold=learn)
    if gsf != 1.0:  # snnTorch's Synaptic takes no graded_spikes_factor argument; its attribute is used
        ref.graded_spikes_factor = torch.as_tensor(gsf)
    if step_mode == "s":
        return ref, ss.nn.Synaptic.from_snntorch(ref)
    return ref, ss.nn.Synaptic(alpha, beta, threshold, reset_mechanism=reset, reset_delay=delay,
                               graded_spikes_factor=gsf, spike_fn=ref.spike_grad, learn_alpha=learn,
                               learn_beta=learn, learn_threshold=learn, returns_mem=True)


def _inputs(rng, b=4):
    # Fresh random currents around the threshold: every neuron fires sometimes (checked below).
    return torch.randn(T, b, N, generator=rng) * 0.5 + 0.25


def _run_snntorch(ref, x):
    syn, mem = ref.reset_mem()
    spk, syns, mems = [], [], []
    for xt in x:
        s, syn, mem = ref(xt, syn, mem)
        spk.append(s)
        syns.append(syn)
        mems.append(mem)
    return torch.stack(spk), torch.stack(syns), torch.stack(mems)


def _loss(spk, syn, mem):
    return (spk * 1.3).sum() + (mem.square() * 0.1).sum() + (syn * 0.05).sum()


@pytest.mark.parametrize("step_mode", ("s", "m"))
@pytest.mark.parametrize("reset,delay,per_neuron,gsf", CASES,
                         ids=[f"{r}-delay{d}-{'perneuron' if p else 'scalar'}-gsf{g}" for r, d, p, g in CASES])
def test_synaptic_equals_snntorch_bit_for_bit_with_gradients(rng, reset, delay, per_neuron, gsf, step_mode):
    learn = per_neuron  # learnable per-neuron alpha / beta / threshold: their gradients are compared too
    ref, ours = _pair(rng, reset, delay, per_neuron, gsf, learn, step_mode)
    x = _inputs(rng)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    spk_ref, syn_ref, mem_ref = _run_snntorch(ref, xr)
    assert 0 < (spk_ref != 0).float().mean() < 1, "the neurons must fire sometimes, and not always"
    if step_mode == "s":  # snnTorch's convention: the states passed back by hand
        outs = [ours(xo[0], *ours.reset_mem())]
        for xt in xo[1:]:
            outs.append(ours(xt, outs[-1][1], outs[-1][2]))
        spk, syn, mem = (torch.stack([o[i] for o in outs]) for i in range(3))
    else:  # time-major, one call: spikes and the last states; every step's states from prefixes
        spk, syn_last, mem_last = ours(xo)
        with torch.no_grad():
            syn, mem = (torch.stack([ours(xo[:t + 1])[i] for t in range(T)]) for i in (1, 2))
        assert torch.equal(syn_last, syn[-1]) and torch.equal(mem_last, mem[-1])
        syn, mem = torch.cat([syn[:-1], syn_last[None]]), torch.cat([mem[:-1], mem_last[None]])
    assert torch.equal(spk, spk_ref) and torch.equal(syn, syn_ref) and torch.equal(mem, mem_ref)
    _loss(spk_ref, syn_ref[-1], mem_ref[-1]).backward()
    _loss(spk, syn[-1], mem[-1]).backward()
    assert torch.equal(xo.grad, xr.grad)
    if learn:
        for name in ("alpha", "beta", "threshold"):
            assert isinstance(getattr(ours, name), nn.Parameter)
            assert torch.equal(getattr(ours, name).grad, getattr(ref, name).grad), name


def test_synaptic_built_directly_and_float64(rng):
    """ss.nn.Synaptic's own spike function ((u > 0), atan surrogate alpha 2 as snnTorch's default), in
    float32 and float64: spikes and states bit-equal, gradients equal to rounding (another formula)."""
    for reset, delay, dtype in itertools.product(("subtract", "zero", "none"), (True, False),
                                                 (torch.float32, torch.float64)):
        alpha = torch.rand(N, generator=rng, dtype=torch.float64).to(dtype) * 0.5 + 0.45
        ref = snn.Synaptic(alpha=alpha, beta=0.85, threshold=0.5, reset_mechanism=reset, reset_delay=delay).to(dtype)
        ours = ss.nn.Synaptic(alpha, 0.85, 0.5, reset_mechanism=reset, reset_delay=delay, returns_mem=True).to(dtype)
        x = _inputs(rng, b=3).to(dtype)
        xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
        spk_ref, syn_ref, mem_ref = _run_snntorch(ref, xr)
        spk, syn, mem = ours(xo)
        assert spk.dtype == dtype and 0 < spk_ref.mean() < 1
        assert torch.equal(spk, spk_ref) and torch.equal(syn, syn_ref[-1]) and torch.equal(mem, mem_ref[-1])
        assert torch.equal(ours.syn, syn_ref[-1].detach()) and torch.equal(ours.mem, mem_ref[-1].detach())
        spk_ref.sum().backward()
        spk.sum().backward()
        torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("level", (0.0, 5.0), ids=("no-spikes", "all-spikes"))
def test_synaptic_edges_equal_snntorch(rng, level):
    """No input (no spikes, states stay 0) and a large one (every neuron fires at the first step), odd sizes."""
    for reset, delay in itertools.product(("subtract", "zero", "none"), (True, False)):
        ref = snn.Synaptic(alpha=0.9, beta=0.8, threshold=1.0, reset_mechanism=reset, reset_delay=delay)
        ours = ss.nn.Synaptic(0.9, 0.8, 1.0, reset_mechanism=reset, reset_delay=delay, returns_mem=True)
        x = torch.full((5, 3, 7), level) + torch.rand(5, 3, 7, generator=rng) * level
        spk_ref, syn_ref, mem_ref = _run_snntorch(ref, x)
        spk, syn, mem = ours(x)
        assert bool((spk_ref[0] == (level > 0)).all()) and bool((spk_ref.mean() == 0) == (level == 0))
        if level == 0:
            assert not syn_ref.any() and not mem_ref.any()
        assert torch.equal(spk, spk_ref) and torch.equal(syn, syn_ref[-1]) and torch.equal(mem, mem_ref[-1])


def test_synaptic_state_conventions(rng):
    """stateful / reset() in step mode "m"; the kept states and reset_mem() in step mode "s"; empty input."""
    x = _inputs(rng)
    ours = ss.nn.Synaptic(0.8, 0.7, 0.6, stateful=True)
    whole = ss.nn.Synaptic(0.8, 0.7, 0.6)(x)
    assert torch.equal(torch.cat([ours(x[:3]), ours(x[3:])]), whole), "stateful: the second call continues"
    ours.reset()
    assert ours.syn is None and ours.mem is None and torch.equal(ours(x), whole)
    fresh = ss.nn.Synaptic(0.8, 0.7, 0.6)
    assert torch.equal(fresh(x[:3]), whole[:3]) and torch.equal(fresh(x[3:]), ss.nn.Synaptic(0.8, 0.7, 0.6)(x[3:]))
    single = ss.nn.Synaptic(0.8, 0.7, 0.6, step_mode="s")  # init_hidden=True convention: spikes only, states kept
    assert torch.equal(torch.stack([single(xt) for xt in x]), whole)
    syn, mem = single.reset_mem()
    assert not syn.any() and not mem.any() and syn.shape == x.shape[1:]
    assert ss.nn.Synaptic(0.5, 0.5)(torch.zeros(0, 2)).shape == (0, 2)
    assert "alpha=0.8, beta=0.7, threshold=0.6" in repr(ours)


def test_synaptic_loads_snntorch_checkpoint():
    ref = snn.Synaptic(alpha=torch.tensor([0.3, 0.9]), beta=0.6, reset_mechanism="zero", learn_alpha=True)
    ours = ss.nn.Synaptic(torch.zeros(2), 0.0, reset_mechanism="zero", learn_alpha=True)
    ours.load_state_dict(ref.state_dict())
    assert torch.equal(ours.alpha, ref.alpha) and torch.equal(ours.beta, ref.beta)
    state = ref.state_dict()
    state["reset_mechanism_val"] = torch.tensor(0)
    with pytest.raises(RuntimeError, match="reset mechanism .* is not this Synaptic's 'zero'"):
        ours.load_state_dict(state)


def test_synaptic_refuses_bad_arguments_when_built():
    with pytest.raises(ValueError, match="Synaptic: reset_mechanism must be one of"):
        ss.nn.Synaptic(0.9, 0.9, reset_mechanism="soft")
    with pytest.raises(ValueError, match="Synaptic: alpha must be finite"):
        ss.nn.Synaptic(float("nan"), 0.9)
    with pytest.raises(ValueError, match="Synaptic: beta must be finite"):
        ss.nn.Synaptic(0.9, float("inf"))
    with pytest.raises(TypeError, match="Synaptic: learn_alpha must be a bool"):
        ss.nn.Synaptic(0.9, 0.9, learn_alpha=1)
    with pytest.raises(ValueError, match="Synaptic: graded_spikes_factor must be nonzero"):
        ss.nn.Synaptic(0.9, 0.9, graded_spikes_factor=0.0)
    with pytest.raises(ValueError, match="surrogate must be one of"):
        ss.nn.Synaptic(0.9, 0.9, surrogate="relu")
    with pytest.raises(ValueError, match="Synaptic: step_mode must be 'm' or 's'"):
        ss.nn.Synaptic(0.9, 0.9, step_mode="x")
