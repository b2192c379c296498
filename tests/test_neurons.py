"""IF and ParametricLIF on the fused lif op (charges "if" / "plif") vs SpikingJelly 2.0's IFNode and
ParametricLIFNode: spikes and v bit-exact in float32 and float64, gradients of x and w against SpikingJelly's
own (autograd through its torch code), every CPU backend against the float64 reference, the op's edges and
opcheck, the modules (validation, state_dict, reset, step modes), convert and the PLIF CIFAR10Net zoo model.
Triton (interpreter) and the CUDA kernels (emulator) are tested on the same charges in test_triton_ops.py
and test_cuda_ops.py."""
import copy
import itertools
import math

import pytest
import torch
import torch.nn as nn

import snnsparse as ss
from snnsparse.ops import reference as R
from snnsparse.ops import surrogate as SG
from conftest import ODD_SIZES, assert_close64, randn

sj = pytest.importorskip("spikingjelly.activation_based", reason="spikingjelly 2.0 is a test dependency")
from spikingjelly.activation_based import functional as sjf, layer, neuron, surrogate  # noqa: E402

SJ_SURROGATE = {"sigmoid": surrogate.Sigmoid, "atan": surrogate.ATan,
                "piecewise_quadratic": surrogate.PiecewiseQuadratic, "soft_sign": surrogate.SoftSign,
                "erf": surrogate.Erf}
RESETS = (0.0, -0.2, None)


def cpu_backends():
    av = ss.backends.available()
    return [b for b in ("reference", "cpp") if av[b] is True]


def _ops():
    from snnsparse.ops.registry import require_cpp
    require_cpp("test_neurons")
    return torch.ops.snnsparse


def _sj_node(kind, v_reset, detach_reset, sg, alpha, decay_input=True, init_tau=2.0, step_mode="m"):
    common = dict(v_threshold=1.0, v_reset=v_reset, surrogate_function=SJ_SURROGATE[sg](alpha=alpha),
                  detach_reset=detach_reset, step_mode=step_mode)
    if kind == "if":
        return neuron.IFNode(**common)
    return neuron.ParametricLIFNode(init_tau=init_tau, decay_input=decay_input, **common)


def _ss_run(kind, x, node, backend, v0=None, w=None):
    """ss.functional's neuron with the node's parameters (w: a leaf copy of node.w for plif)."""
    kw = dict(v_threshold=1.0, v_reset=node.v_reset, detach_reset=node.detach_reset,
              surrogate={v: k for k, v in SG_NAMES.items()}[type(node.surrogate_function).__name__],
              alpha=node.surrogate_function.alpha, backend=backend)
    if kind == "if":
        return ss.functional.if_neuron(x, v0, **kw)
    return ss.functional.plif(x, w, v0, decay_input=node.decay_input, **kw)


SG_NAMES = {k: v.__name__ for k, v in SJ_SURROGATE.items()}


def _with_sj_v0(node, v0):
    if v0 is not None:
        node.v = v0.clone()
    return node


# ------------------------------------------------------------------------------------------------
# Against SpikingJelly, every option, float64 (autograd gradients to 1e-10) and float32 (bit-exact)
@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kind,decay_input", [("if", True), ("plif", True), ("plif", False)])
@pytest.mark.parametrize("v_reset,detach_reset,sg", list(itertools.product(RESETS, (False, True), SJ_SURROGATE)))
def test_matches_spikingjelly_float64(rng, backend, kind, decay_input, v_reset, detach_reset, sg):
    alpha = SG.DEFAULT_ALPHA[sg] * 1.5  # a non-default alpha, passed to both
    node = _sj_node(kind, v_reset, detach_reset, sg, alpha, decay_input, init_tau=3.0)
    w = None
    if kind == "plif":
        with torch.no_grad():
            node.w.add_(0.3 * float(torch.randn((), generator=rng)))
        w = node.w.detach().clone().requires_grad_()
    x = randn((6, 3, 17), rng, torch.float64) * 1.5 + (0.6 if kind == "plif" else 0.3)
    v0 = randn((3, 17), rng, torch.float64) * 0.3
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    v1, v2 = v0.clone().requires_grad_(), v0.clone().requires_grad_()
    _with_sj_v0(node, v1)
    s_sj = node(x1)
    v_sj = node.v
    s, v = _ss_run(kind, x2, node, backend, v0=v2, w=w)
    assert torch.equal(s, s_sj.to(s.dtype)), "spikes differ from SpikingJelly"
    assert 0 < s.mean() < 1, "test input must make some neurons fire and some not"
    assert torch.equal(v, v_sj), "v_last differs from SpikingJelly"
    g, gv = randn(s.shape, rng, torch.float64), randn(v.shape, rng, torch.float64)
    ((s_sj * g).sum() + (v_sj * gv).sum()).backward()
    ((s * g).sum() + (v * gv).sum()).backward()
    assert_close64(x2.grad, x1.grad, rtol=1e-10, atol=1e-12)
    assert_close64(v2.grad, v1.grad, rtol=1e-10, atol=1e-12)
    if kind == "plif":
        assert_close64(w.grad, node.w.grad, rtol=1e-5, atol=1e-6)  # w is float32 (SpikingJelly's parameter)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kind,decay_input", [("if", True), ("plif", True), ("plif", False)])
@pytest.mark.parametrize("v_reset", RESETS)
def test_matches_spikingjelly_float32_bit_exact(rng, backend, kind, decay_input, v_reset):
    """float32: spikes and v bit-identical to SpikingJelly's torch code over many steps (an error in the
    operation order shows up as v bits), gradients of x and w close (other summation orders)."""
    node = _sj_node(kind, v_reset, False, "atan", 2.0, decay_input, init_tau=2.7)
    x = randn((16, 4, 301), rng) * 1.2 + 0.4
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = node.w.detach().clone().requires_grad_() if kind == "plif" else None
    s_sj = node(x1)
    s, v = _ss_run(kind, x2, node, backend, w=w)
    assert torch.equal(s, s_sj) and torch.equal(v, node.v)
    assert 0 < s.mean() < 1
    g = randn(s.shape, rng)
    (s_sj * g).sum().backward()
    (s * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-5)
    if kind == "plif":
        torch.testing.assert_close(w.grad, node.w.grad, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# The kernels against the float64 reference (through the op, k's gradient included)
def _charge_args(charge, dtype, rng):
    k = torch.sigmoid(randn((), rng, torch.float64)).to(dtype) if charge == "plif" else None
    return k


@pytest.mark.parametrize("charge", ["if", "plif"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", ODD_SIZES + (4099,))   # 4099: two CPU blocks of 4096 neurons
def test_cpp_op_vs_reference(rng, charge, dtype, n):
    O = _ops()
    for v_reset, decay, detach, sg in itertools.product(RESETS, (True, False), (False, True), ("sigmoid", "erf")):
        if charge == "if" and not decay:
            continue
        k = _charge_args(charge, dtype, rng)
        x = (randn((5, n), rng, torch.float64) * 1.5 + 0.5).to(dtype)
        v0 = (randn((n,), rng, torch.float64) * 0.3).to(dtype)
        args = (0.0, 1.0, v_reset, decay, detach, sg, 3.0)
        s, v, h = O.lif_fwd(x, v0, *args, True, charge, k)
        sr, vr, hr = R.lif(x, v0, *args, return_h=True, charge=charge, k=k)
        what = f"{charge} {dtype} n={n} v_reset={v_reset} decay={decay} detach={detach} {sg}"
        assert torch.equal(s, sr) and torch.equal(v, vr) and torch.equal(h, hr), what
        # gradients vs autograd through the float64 reference (the same spikes: recomputed in float64)
        xr, v0r = x.double().requires_grad_(), v0.double().requires_grad_()
        kr = k.double().requires_grad_() if k is not None else None
        sr, vr, _ = R.lif(xr, v0r, *args, charge=charge, k=kr)
        if not torch.equal(sr.to(dtype), s):
            continue  # a float32 spike within rounding of the threshold: the float64 gradients differ there
        gs, gv = randn(s.shape, rng, torch.float64).to(dtype), randn(v.shape, rng, torch.float64).to(dtype)
        torch.autograd.backward([sr, vr], [gs.double(), gv.double()])
        gx, gv0, gk = O.lif_bwd(gs, gv, None, h, *args, charge, k, x if k is not None else None,
                                v0 if k is not None else None)
        tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
        assert_close64(gx, xr.grad, msg=what, **tol)
        assert_close64(gv0, v0r.grad, msg=what, **tol)
        if charge == "plif":
            scale = max(1.0, float(kr.grad.abs()))
            assert_close64(gk, kr.grad, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10 * scale * math.sqrt(n), msg=what)
        else:
            assert gk.numel() == 0


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kind", ["if", "plif"])
def test_edges(rng, backend, kind):
    w = torch.tensor(0.0)  # k = 0.5 (tau 2)
    run = (lambda x, v0=None, **kw: ss.functional.if_neuron(x, v0, backend=backend, **kw)) if kind == "if" else \
        (lambda x, v0=None, **kw: ss.functional.plif(x, w, v0, backend=backend, **kw))
    # T = 1, input exactly at threshold (fires): IF h = 0 + 1; PLIF h = 0 + (2 - 0) * 0.5
    x = torch.full((1, 1), 1.0 if kind == "if" else 2.0)
    s, v = run(x)
    assert s.item() == 1.0 and v.item() == 0.0
    s, v = run(torch.zeros(4, 7))                       # all-zero input: silent, v stays 0
    assert not s.any() and not v.any()
    s, v = run(torch.zeros(0, 2, 3), v_reset=-0.5)       # T = 0: v stays v0
    assert s.shape == (0, 2, 3) and torch.equal(v, torch.full((2, 3), -0.5))
    big = torch.full((3, 5), 1e30)                       # huge input: every step fires, hard reset to v_reset
    s, v = run(big)
    assert s.all() and not v.any()
    s, v = run(-big)
    assert not s.any()
    s, v = run(big, v_reset=None)                        # soft reset keeps the huge remainder
    assert s.all() and torch.equal(v, R.lif(big, torch.zeros(5), 0.0, 1.0, None, True, False, "sigmoid", 4.0,
                                              charge=kind, k=torch.sigmoid(w) if kind == "plif" else None)[1])
    for n in ODD_SIZES:                                  # odd sizes, soft reset, vs the reference
        x = randn((3, n), rng) + 0.8
        s, v = run(x, v_reset=None)
        sr, vr, _ = R.lif(x, torch.zeros(n), 0.0, 1.0, None, True, False, "sigmoid", 4.0, charge=kind,
                          k=torch.sigmoid(w) if kind == "plif" else None)
        assert torch.equal(s, sr) and torch.equal(v, vr)


def test_op_argument_checks():
    O = _ops()
    x, v0 = torch.zeros(2, 3), torch.zeros(3)
    with pytest.raises(ValueError, match="charge must be one of"):
        O.lif_fwd(x, v0, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True, "qif", None)
    with pytest.raises(ValueError, match="charge 'plif' needs k"):
        O.lif_fwd(x, v0, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True, "plif", None)
    with pytest.raises(ValueError, match="k is read only by charge 'plif'"):
        O.lif_fwd(x, v0, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True, "if", torch.tensor(0.5))
    with pytest.raises(ValueError, match="0-dim"):
        O.lif_fwd(x, v0, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True, "plif", torch.tensor([0.5]))
    with pytest.raises(TypeError, match="k"):
        O.lif_fwd(x, v0, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True, "plif", torch.tensor(0.5).double())
    h = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="together"):
        O.lif_bwd(h, None, None, h, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, "plif", torch.tensor(0.5), x, None)
    with pytest.raises(ValueError, match="gradient of k"):
        O.lif_bwd(h, None, None, h, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, "if", None, x, v0)
    # tau is read (and checked) only by charge "lif"
    O.lif_fwd(x, v0, 0.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True, "if", None)
    with pytest.raises(ValueError, match="tau"):
        O.lif_fwd(x, v0, 0.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True, "lif", None)
    with pytest.raises(TypeError, match="w must be a 0-dim"):
        ss.functional.plif(x, 0.5)
    with pytest.raises(ValueError, match="w must be a 0-dim"):
        ss.functional.plif(x, torch.zeros(3))


def test_opcheck(rng):
    O = _ops()
    xs = randn((4, 10), rng).requires_grad_()
    v0 = randn((10,), rng) * 0.2
    k = torch.tensor(0.4).requires_grad_()
    h = randn((4, 10), rng) + 1.0
    cases = [
        (O.lif_fwd, (xs, v0, 0.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True, "if", None)),
        (O.lif_fwd, (xs, v0.requires_grad_(), 0.0, 1.0, None, True, True, "atan", 2.0, True, "plif", k)),
        (O.lif_fwd, (xs, v0, 0.0, 0.5, 0.1, False, False, "erf", 2.0, True, "plif", k)),
        (O.lif_fwd, (xs.detach(), v0.detach(), 0.0, 1.0, 0.0, False, False, "sigmoid", 4.0, False, "plif",
                     k.detach())),
        (O.lif_bwd, (torch.randn_like(h), torch.randn_like(v0), None, h, 0.0, 1.0, 0.0, True, False, "sigmoid",
                     4.0, "if", None, None, None)),
        (O.lif_bwd, (torch.randn_like(h), None, torch.randn_like(h), h, 0.0, 1.0, None, True, True, "atan", 2.0,
                     "plif", k.detach(), xs.detach(), v0.detach())),
        (O.lif_bwd, (torch.randn_like(h), torch.randn_like(v0), None, h, 0.0, 1.0, -0.1, False, False, "erf", 2.0,
                     "plif", k.detach(), xs.detach(), v0.detach())),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_plif_grad_w_gradcheck(rng):
    """float64 gradcheck of the fused op through w (sigmoid), x and v0: v_last with detach_reset is smooth
    wherever no spike flips (the surrogate never enters), so finite differences are the exact gradient."""
    x = (randn((3, 2, 5), rng, torch.float64) + 0.5).requires_grad_()
    w = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)

    v0 = (randn((2, 5), rng, torch.float64) * 0.2).requires_grad_()
    for decay_input, v_reset in ((True, None), (False, -0.1)):
        def f(x, w, v0):
            return ss.functional.plif(x, w, v0, v_reset=v_reset, decay_input=decay_input, detach_reset=True,
                                      backend="cpp")[1]
        torch.autograd.gradcheck(f, (x, w, v0))


# ------------------------------------------------------------------------------------------------
# Modules
def test_module_validation():
    with pytest.raises(ValueError, match="init_tau must be a finite number > 1"):
        ss.nn.ParametricLIF(init_tau=1.0)
    with pytest.raises(TypeError, match="init_tau"):
        ss.nn.ParametricLIF(init_tau="2")
    with pytest.raises(ValueError, match="IF: step_mode"):
        ss.nn.IF(step_mode="x")
    with pytest.raises(ValueError, match="surrogate must be one of"):
        ss.nn.IF(surrogate="relu")
    with pytest.raises(TypeError, match="v_threshold"):
        ss.nn.ParametricLIF(v_threshold="1")
    with pytest.raises(TypeError, match="detach_reset"):
        ss.nn.IF(detach_reset=1)
    with pytest.raises(ValueError, match="backend"):
        ss.nn.ParametricLIF(backend="nope")
    with pytest.raises(TypeError, match="stateful"):
        ss.nn.IF(stateful="yes")
    with pytest.raises(TypeError, match="base class"):
        ss.nn.FusedNeuron()
    with pytest.raises(TypeError, match="expected SpikingJelly's IFNode"):
        ss.nn.IF.from_spikingjelly(neuron.LIFNode())
    with pytest.raises(ValueError, match="surrogate PiecewiseLeakyReLU is not supported"):
        ss.nn.ParametricLIF.from_spikingjelly(neuron.ParametricLIFNode(surrogate_function=surrogate.PiecewiseLeakyReLU()))


def test_module_state_dict_reset_repr_and_step_modes(rng):
    m = ss.nn.ParametricLIF(init_tau=3.0, v_reset=None, step_mode="m", stateful=True)
    assert list(m.state_dict()) == ["w"] and float(m.w.detach()) == pytest.approx(-math.log(2.0))
    assert float(m.k) == pytest.approx(1 / 3.0)
    with torch.no_grad():
        m.w.fill_(0.7)
    m2 = ss.nn.ParametricLIF()
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.w, m.w)
    node = neuron.ParametricLIFNode(step_mode="m")          # SpikingJelly's state_dict loads as it is
    node.load_state_dict(m.state_dict())
    assert torch.equal(node.w, m.w)
    assert "tau=" in repr(m) and "w=0.7" in repr(m) and "decay_input=True" in repr(m)
    assert repr(ss.nn.IF(v_reset=None)).startswith("IF(v_threshold=1.0, v_reset=None")
    x = randn((4, 2, 6), rng) + 0.8
    s1 = m(x)
    s2 = m(x)                                                # stateful: continues from v
    sr, vr = ss.functional.plif(x, m.w.detach(), v_reset=None, backend="reference")
    sr2, _ = ss.functional.plif(x, m.w.detach(), vr, v_reset=None, backend="reference")
    assert torch.equal(s1, sr) and torch.equal(s2, sr2)
    m.reset()
    assert m.v is None and torch.equal(m(x), sr)
    # step mode "s" (always stateful) equals SpikingJelly's single-step node frame by frame
    for kind in ("if", "plif"):
        node = _sj_node(kind, 0.0, False, "sigmoid", 4.0, step_mode="s")
        mod = (ss.nn.IF if kind == "if" else ss.nn.ParametricLIF).from_spikingjelly(node)
        assert mod.step_mode == "s" and mod.stateful
        for xt in x:
            assert torch.equal(mod(xt), node(xt))
        assert torch.equal(mod.v, node.v)
        mod.reset()
        sjf.reset_net(node)
        assert torch.equal(mod(x[0]), node(x[0]))


def test_from_spikingjelly_copies_w_and_state(rng):
    node = neuron.ParametricLIFNode(init_tau=4.0, decay_input=False, v_reset=-0.1, step_mode="m")
    x = randn((3, 2, 5), rng) + 0.9
    node(x)                                                   # node now carries v
    m = ss.nn.ParametricLIF.from_spikingjelly(node)
    assert torch.equal(m.w, node.w) and m.w is not node.w and m.w.requires_grad
    assert m.decay_input is False and m.v_reset == -0.1
    assert torch.equal(m(x), node(x)) and torch.equal(m.v, node.v)


# ------------------------------------------------------------------------------------------------
# convert and the zoo
def _small_model(step_mode):
    return nn.Sequential(
        layer.Conv2d(2, 8, 3, padding=1, bias=False, step_mode=step_mode),
        layer.BatchNorm2d(8, step_mode=step_mode),
        neuron.IFNode(surrogate_function=surrogate.ATan(), detach_reset=True, step_mode=step_mode),
        layer.MaxPool2d(2, step_mode=step_mode),
        layer.Conv2d(8, 8, 3, padding=1, step_mode=step_mode),
        neuron.ParametricLIFNode(init_tau=3.0, v_reset=None, decay_input=False,
                                 surrogate_function=surrogate.Sigmoid(alpha=3.0), step_mode=step_mode),
        layer.Flatten(step_mode=step_mode),
        layer.Linear(8 * 4 * 4, 5, step_mode=step_mode),
        neuron.ParametricLIFNode(step_mode=step_mode),
    )


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_convert_if_plif_model_outputs_and_gradients(rng, step_mode):
    torch.manual_seed(rng.initial_seed())
    model = _small_model(step_mode)
    with torch.no_grad():
        model[4].weight.mul_(4.0)
        model[7].weight.mul_(6.0)
        model[7].bias.uniform_(0.5, 1.5, generator=rng)  # the output layer fires on every seed (0 < mean < 1)
        model[5].w.fill_(0.3)
    # backend "dense" for the Spike* layers (F.conv2d / F.linear as SpikingJelly's, so no spike can flip on a
    # summation order); the neurons run on the fused kernels ("auto") all the same.
    conv = ss.nn.convert(copy.deepcopy(model), backend="dense")
    assert conv[2].backend == "auto" and conv[5].backend == "auto"
    assert [type(m).__name__ for m in conv] == ["SpikeConv2d", "BatchNorm2d", "IF", "MaxPool2d", "SpikeConv2d",
                                              "ParametricLIF", "Flatten", "SpikeLinear", "ParametricLIF"]
    assert [r.action for r in conv.snnsparse_convert_report if r.original.endswith("Node")] == ["converted"] * 3
    assert conv[5].v_reset is None and conv[5].decay_input is False and torch.equal(conv[5].w, model[5].w)
    x = torch.rand(4, 3, 2, 8, 8, generator=rng) * 3
    outs = []
    for net in (model, conv):
        sjf.reset_net(net)
        for m in net.modules():
            if isinstance(m, ss.nn.FusedNeuron):
                m.reset()
        out = net(x) if step_mode == "m" else torch.stack([net(xt) for xt in x])
        (out * torch.arange(out.numel()).reshape(out.shape).sin()).sum().backward()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    assert 0 < outs[0].mean() < 1
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), conv.named_parameters()):
        assert n1 == n2 and p2.grad is not None, n1
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-4, atol=1e-4, msg=n1)


def test_convert_leaves_what_it_cannot_map_exactly(rng):
    nodes = {
        "store_v_seq": neuron.IFNode(store_v_seq=True, step_mode="m"),
        "not in spiking mode": neuron.ParametricLIFNode(surrogate_function=surrogate.Sigmoid(spiking=False),
                                                        step_mode="m"),
        "set_reset_value": neuron.IFNode(step_mode="m"),
    }
    nodes["set_reset_value"].set_reset_value("v", 0.25)
    nodes["set_reset_value"].reset()
    model = nn.Sequential(*nodes.values())
    with pytest.warns(ss.nn.ConvertWarning) as caught:
        ss.nn.convert(model)
    message = " ".join(str(w.message) for w in caught)
    report = model.snnsparse_convert_report
    assert [r.action for r in report] == ["left"] * 3
    for r, why in zip(report, ("store_v_seq", "not in spiking mode", "resets to 0.25")):
        assert why in r.reason and why in message
    assert [type(m).__name__ for m in model] == ["IFNode", "ParametricLIFNode", "IFNode"]


def test_zoo_plif_cifar10net_converted(rng):
    from snnsparse.zoo import spikingjelly_zoo

    torch.manual_seed(rng.initial_seed())
    model = spikingjelly_zoo("parametric_lif_net").CIFAR10Net(channels=8, spiking_neuron=neuron.ParametricLIFNode)
    sjf.set_step_mode(model, "m")
    with torch.no_grad():  # its linear layers have no BatchNorm: larger weights make their neurons fire
        model.conv_fc[22].weight.normal_(0.0, 2.0, generator=rng)
        model.conv_fc[25].weight.normal_(0.0, 8.0, generator=rng)
        for m in model.modules():
            if isinstance(m, neuron.ParametricLIFNode):
                m.w.normal_(0.0, 0.5, generator=rng)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):  # statistics that bring membranes near threshold
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=rng) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=rng) * 0.05 + 0.01)
                m.weight.copy_(torch.rand(c, generator=rng) + 0.5)
                m.bias.copy_(torch.rand(c, generator=rng) * 1.2 + 0.3)
    model.eval()
    conv = ss.nn.convert(copy.deepcopy(model), backend="dense")  # dense layers: no flip on a summation order
    n_plif = sum(isinstance(m, neuron.ParametricLIFNode) for m in model.modules())
    assert n_plif == sum(isinstance(m, ss.nn.ParametricLIF) for m in conv.modules()) > 0
    x = torch.rand(2, 2, 3, 32, 32, generator=rng)
    rates = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: rates.__setitem__(k, float(o.mean())))
             for k, m in conv.named_modules() if isinstance(m, ss.nn.ParametricLIF)]
    with torch.no_grad():
        sjf.reset_net(model)
        ref = model(x)
        out = conv(x)
    for h in hooks:
        h.remove()
    assert len(rates) == n_plif and all(0 < r < 1 for r in rates.values()), rates  # every neuron layer fires
    assert torch.equal(out, ref)
