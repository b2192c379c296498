"""ss.functional.lif / ss.nn.LIF vs SpikingJelly 2.0's LIFNode(step_mode="m"), every option, every backend
that can run here; and the fused backward vs autograd through the reference loop."""
import itertools

import pytest
import torch

import snnsparse as ss
from conftest import assert_close64, randn

sj = pytest.importorskip("spikingjelly.activation_based", reason="spikingjelly 2.0 is a test dependency")
from spikingjelly.activation_based import functional as sjf, neuron, surrogate  # noqa: E402

SJ_SURROGATE = {"sigmoid": surrogate.Sigmoid, "atan": surrogate.ATan,
                "piecewise_quadratic": surrogate.PiecewiseQuadratic, "soft_sign": surrogate.SoftSign,
                "erf": surrogate.Erf}
COMBOS = list(itertools.product((2.0, 4.0 / 3.0), (True, False), (0.0, -0.2, None), (False, True),
                                tuple(SJ_SURROGATE)))


def cpu_backends():
    av = ss.backends.available()
    return [b for b in ("reference", "cpp") if av[b] is True]


def _sj(x, tau, decay_input, v_reset, detach_reset, sg, alpha):
    node = neuron.LIFNode(tau=tau, decay_input=decay_input, v_threshold=1.0, v_reset=v_reset,
                          surrogate_function=SJ_SURROGATE[sg](alpha=alpha), detach_reset=detach_reset,
                          step_mode="m")
    sjf.reset_net(node)
    s = node(x)
    return s, node.v


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("tau,decay_input,v_reset,detach_reset,sg", COMBOS)
def test_lif_matches_spikingjelly(rng, backend, tau, decay_input, v_reset, detach_reset, sg):
    alpha = ss.ops.surrogate.DEFAULT_ALPHA[sg] * 1.5  # a non-default alpha, passed to both
    x = (randn((6, 3, 17), rng, torch.float64) * 1.5 + 0.6)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    s_sj, v_sj = _sj(x1, tau, decay_input, v_reset, detach_reset, sg, alpha)
    s, v = ss.functional.lif(x2, tau=tau, decay_input=decay_input, v_reset=v_reset, detach_reset=detach_reset,
                             surrogate=sg, alpha=alpha, backend=backend)
    assert torch.equal(s, s_sj.to(s.dtype)), "spikes differ from SpikingJelly"
    assert 0 < s.mean() < 1, "test input must make some neurons fire and some not"
    assert_close64(v, v_sj, rtol=1e-12, atol=1e-12)
    g = randn(s.shape, rng, torch.float64)
    gv = randn(v.shape, rng, torch.float64)
    ((s_sj * g).sum() + (v_sj * gv).sum()).backward()
    ((s * g).sum() + (v * gv).sum()).backward()
    assert_close64(x2.grad, x1.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", cpu_backends())
def test_lif_v0_and_float32(rng, backend):
    x = randn((4, 2, 3, 5), rng) + 0.5
    v0 = randn((2, 3, 5), rng) * 0.5
    node = neuron.LIFNode(step_mode="m")
    node.v = v0.clone()
    s_sj = node(x)
    s, v = ss.functional.lif(x, v0, backend=backend)
    assert torch.equal(s, s_sj)
    torch.testing.assert_close(v, node.v)


@pytest.mark.parametrize("backend", cpu_backends())
def test_lif_edges(rng, backend):
    # T=1, a single neuron, input exactly at threshold (fires), all-silent input.
    tau = 2.0
    x = torch.full((1, 1), 2.0)  # H = 0 + (2 - 0)/2 = 1.0 == v_threshold -> fires
    s, v = ss.functional.lif(x, tau=tau, backend=backend)
    assert s.item() == 1.0 and v.item() == 0.0
    s, v = ss.functional.lif(torch.zeros(4, 7), backend=backend)
    assert not s.any() and not v.any()
    s, v = ss.functional.lif(torch.zeros(0, 2, 3), v_reset=-0.5, backend=backend)  # T = 0: v stays v0
    assert s.shape == (0, 2, 3) and torch.equal(v, torch.full((2, 3), -0.5))


def test_module_lif_records_h_and_state(rng):
    lif = ss.nn.LIF(tau=2.0, record_h=True, stateful=True)
    x = randn((3, 2, 4), rng) + 1.0
    s1 = lif(x)
    assert lif.h_seq.shape == x.shape and lif.v.shape == x.shape[1:]
    s_ref, v_ref = ss.functional.lif(x, backend="reference")
    assert torch.equal(s1, s_ref)
    s2 = lif(x)  # continues from v
    s_ref2, _ = ss.functional.lif(x, v_ref, backend="reference")
    assert torch.equal(s2, s_ref2)
    lif.reset()
    assert lif.v is None
