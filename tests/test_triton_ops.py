"""The triton backend against the float64 reference: forward, gradients, counting, opcheck.

Without a GPU the kernels run on CPU in Triton's interpreter, which needs TRITON_INTERPRET=1
before triton is first imported (triton decorates its own @jit library functions, tl.sum,
tl.cumsum, tl.sigmoid..., at import). This module sets it at its top. When another test module
already imported triton in this process (a whole-suite run: SpikingJelly and others import it),
this file runs itself in a fresh Python process with TRITON_INTERPRET=1 instead
(test_in_fresh_interpreter_process) and its other tests are not collected here.
The interpreter is slow: shapes are tiny, but still span several tiles (16-32 wide there).
With a GPU the same tests run compiled on CUDA, plus bf16 and torch.compile.
"""
import importlib
import os
import subprocess
import sys

import pytest
import torch

ON_GPU = torch.cuda.is_available()
IN_SUBPROCESS = (not ON_GPU and "triton" in sys.modules
                 and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"))
if not ON_GPU and not IN_SUBPROCESS:
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton", reason="triton is not installed")

import snnsparse as ss  # noqa: E402
from snnsparse import backends  # noqa: E402
from snnsparse.ops import reference as R  # noqa: E402

from conftest import assert_close64, mask as make_mask, randn, spikes as make_spikes  # noqa: E402

T = None
if not IN_SUBPROCESS:
    _mod = sys.modules.get("snnsparse.ops.triton")
    if _mod is not None and not _mod.ENABLED and not ON_GPU:
        # imported earlier with neither CUDA nor the interpreter: it registered nothing; redo it now
        importlib.reload(_mod)
        backends._errors.pop("triton", None)
    T = importlib.import_module("snnsparse.ops.triton")
    if T.unavailable_reason():
        pytest.skip(T.unavailable_reason(), allow_module_level=True)

DEV = torch.device("cuda" if ON_GPU else "cpu")
# GPU-only dtypes: the interpreter has no bf16; fp16 runs in both.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-9, atol=1e-9),
       torch.float16: dict(rtol=1e-2, atol=2e-2), torch.bfloat16: dict(rtol=2e-2, atol=1e-1)}
ops = getattr(torch.ops, "snnsparse_triton", None)


def _dev(*ts):
    return [t.to(DEV) if t is not None else None for t in ts]


# --------------------------------------------------------------------------------------------
# backend plumbing

def test_available_and_supports():
    assert backends.available()["triton"] is True
    assert T.supports(DEV) is True
    assert isinstance(T.supports(torch.device("meta")), str)
    if not ON_GPU:
        # Interpreter mode: CUDA tensors are refused with a reason; auto never picks triton on CPU.
        assert "TRITON_INTERPRET" in T.supports(torch.device("cuda"))
        assert backends.resolve("auto", torch.device("cpu"))[0] != "triton"
    assert backends.resolve("triton", DEV)[0] == "triton"


def test_functional_rejects_non_binary(rng):
    x = torch.rand(4, 8, generator=rng).to(DEV) + 0.1
    w = randn((3, 8), rng).to(DEV)
    with pytest.raises(ValueError, match="spike_linear"):
        ss.functional.spike_linear(x, w, backend="triton")


# --------------------------------------------------------------------------------------------
# spike_linear

LINEAR_CASES = [  # (N, K, M, spike rate, mask density or None)
    (1, 3, 1, 1.0, None),
    (12, 127, 33, 0.05, 0.5),
    (37, 70, 45, 0.5, 0.1),
    (20, 64, 40, 0.0, 1.0),    # no spikes
    (17, 33, 35, 1.0, 1.0),    # all spikes
    (16, 40, 36, 0.5, 0.0),    # empty mask
    (9, 0, 5, 0.5, None),      # K = 0: bias only
]


@pytest.mark.parametrize("n,k,m,rate,density", LINEAR_CASES)
def test_spike_linear_forward_and_count(n, k, m, rate, density, rng):
    x = make_spikes((n, k), rate, rng)
    w, b = randn((m, k), rng), randn((m,), rng)
    mk = None if density is None else make_mask((m, k), density, rng)
    out, cnt = T.spike_linear(*_dev(x, w, b, mk), count=True)
    ref, rcnt = R.spike_linear(x.double(), w.double(), b.double(), mk, count=True)
    assert_close64(out.cpu(), ref, **TOL[torch.float32])
    assert cnt.dtype == torch.int64 and int(cnt) == int(rcnt)
    out2, none = T.spike_linear(*_dev(x, w, None, mk))
    assert none is None
    assert_close64(out2.cpu(), ref - b.double(), **TOL[torch.float32])


@pytest.mark.parametrize("dense_weight_grad", [False, True])
@pytest.mark.parametrize("density", [None, 0.5])
def test_spike_linear_grads(dense_weight_grad, density, rng):
    n, k, m = 21, 45, 37
    x = make_spikes((n, k), 0.3, rng)
    w, b, g = randn((m, k), rng), randn((m,), rng), randn((n, m), rng)
    mk = None if density is None else make_mask((m, k), density, rng)
    xd, wd, bd = [t.to(DEV).requires_grad_() for t in (x, w, b)]
    out, _ = T.spike_linear(xd, wd, bd, mk if mk is None else mk.to(DEV), dense_weight_grad=dense_weight_grad)
    got = torch.autograd.grad(out, (xd, wd, bd), g.to(DEV))
    x64, w64, b64 = [t.double().requires_grad_() for t in (x, w, b)]
    ref, _ = R.spike_linear(x64, w64, b64, mk, dense_weight_grad=dense_weight_grad)
    want = torch.autograd.grad(ref, (x64, w64, b64), g.double())
    for a, e, name in zip(got, want, ("x", "weight", "bias")):
        assert_close64(a.cpu(), e, **TOL[torch.float32], msg=f"grad {name}")


def test_spike_linear_only_weight_grad_and_gradcheck(rng):
    n, k, m = 5, 35, 6
    x = make_spikes((n, k), 0.4, rng, torch.float64).to(DEV)
    mk = make_mask((m, k), 0.6, rng).to(DEV)
    w = randn((m, k), rng, torch.float64).to(DEV).requires_grad_()
    b = randn((m,), rng, torch.float64).to(DEV).requires_grad_()
    assert torch.autograd.gradcheck(lambda w_, b_: T.spike_linear(x, w_, b_, mk)[0], (w, b), eps=1e-6, atol=1e-6,
                                    fast_mode=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_spike_linear_dtypes(dtype, rng):
    n, k, m = 19, 96, 50
    x = make_spikes((n, k), 0.2, rng)
    w, b = randn((m, k), rng), randn((m,), rng)
    mk = make_mask((m, k), 0.5, rng)
    out, cnt = T.spike_linear(*_dev(x.to(dtype), w.to(dtype), b.to(dtype), mk), count=True)
    assert out.dtype == dtype
    ref, rcnt = R.spike_linear(x.double(), w.to(dtype).double(), b.to(dtype).double(), mk, count=True)
    assert_close64(out.float().cpu(), ref, **TOL[dtype])
    assert int(cnt) == int(rcnt)


def test_functional_time_major_with_count(rng):
    t, b_, k, m = 4, 3, 50, 20
    s = make_spikes((t, b_, k), 0.3, rng, torch.bool)
    w = randn((m, k), rng)
    mk = make_mask((m, k), 0.3, rng)
    out, n = ss.functional.spike_linear(s.to(DEV), w.to(DEV), mask=mk.to(DEV), backend="triton", return_count=True)
    ref, rn = R.spike_linear(s.double().reshape(-1, k), w.double(), None, mk, count=True)
    assert out.shape == (t, b_, m)
    assert_close64(out.reshape(-1, m).cpu(), ref, **TOL[torch.float32])
    assert n == int(rn)


# --------------------------------------------------------------------------------------------
# spike_conv2d

CONV_CASES = [  # (N, Cin, H, W, Cout, kh, kw, stride, padding, dilation, groups, rate, density)
    (2, 3, 5, 6, 5, 3, 3, (1, 1), (1, 1), (1, 1), 1, 0.3, None),
    (1, 4, 7, 5, 6, 3, 2, (2, 1), (0, 2), (1, 2), 2, 0.5, 0.5),
    (2, 35, 4, 4, 18, 1, 1, (1, 1), (0, 0), (1, 1), 1, 0.1, 0.1),   # Cin > 32: two channel words
    (1, 4, 6, 6, 4, 3, 3, (2, 2), (2, 1), (2, 1), 4, 0.5, 1.0),     # depthwise
    (2, 3, 4, 4, 5, 3, 3, (1, 1), (1, 1), (1, 1), 1, 0.0, 1.0),     # no spikes
    (1, 3, 4, 5, 4, 2, 2, (1, 1), (1, 1), (1, 1), 1, 1.0, None),    # all spikes, borders
    (1, 3, 4, 4, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1, 0.5, 0.0),     # empty mask
]


def _conv_inputs(case, rng, dtype=torch.float32):
    n, cin, h, w, cout, kh, kw, st, pd, dl, gr, rate, density = case
    x = make_spikes((n, cin, h, w), rate, rng)
    wt, b = randn((cout, cin // gr, kh, kw), rng), randn((cout,), rng)
    mk = None if density is None else make_mask(wt.shape, density, rng)
    return x, wt, b, mk, st, pd, dl, gr


@pytest.mark.parametrize("case", CONV_CASES)
def test_spike_conv2d_forward_and_count(case, rng):
    x, w, b, mk, st, pd, dl, gr = _conv_inputs(case, rng)
    out, cnt = T.spike_conv2d(*_dev(x, w, b, mk), st, pd, dl, gr, count=True)
    ref, rcnt = R.spike_conv2d(x.double(), w.double(), b.double(), mk, st, pd, dl, gr, count=True)
    assert out.shape == ref.shape
    assert_close64(out.cpu(), ref, **TOL[torch.float32])
    assert int(cnt) == int(rcnt)


@pytest.mark.parametrize("case_idx,dense_weight_grad", [(0, False), (1, True), (1, False), (3, False)])
def test_spike_conv2d_grads(case_idx, dense_weight_grad, rng):
    x, w, b, mk, st, pd, dl, gr = _conv_inputs(CONV_CASES[case_idx], rng)
    xd, wd, bd = [t.to(DEV).requires_grad_() for t in (x, w, b)]
    out, _ = T.spike_conv2d(xd, wd, bd, None if mk is None else mk.to(DEV), st, pd, dl, gr,
                            dense_weight_grad=dense_weight_grad)
    g = torch.randn(out.shape, generator=rng)
    got = torch.autograd.grad(out, (xd, wd, bd), g.to(DEV))
    x64, w64, b64 = [t.double().requires_grad_() for t in (x, w, b)]
    ref, _ = R.spike_conv2d(x64, w64, b64, mk, st, pd, dl, gr, dense_weight_grad=dense_weight_grad)
    want = torch.autograd.grad(ref, (x64, w64, b64), g.double())
    for a, e, name in zip(got, want, ("x", "weight", "bias")):
        assert_close64(a.cpu(), e, **TOL[torch.float32], msg=f"grad {name}")


def test_without_zero_tile_skipping_and_other_tiles(rng, monkeypatch):
    # The branch-free variants (SNNSPARSE_TRITON_SKIP_ZERO_TILES=0) and overridden tile sizes.
    monkeypatch.setenv("SNNSPARSE_TRITON_SKIP_ZERO_TILES", "0")
    monkeypatch.setenv("SNNSPARSE_TRITON_CONV_TILES", "16,32,64")
    monkeypatch.setenv("SNNSPARSE_TRITON_LINEAR_TILES", "32,16,64")
    x, w, b, mk, st, pd, dl, gr = _conv_inputs(CONV_CASES[0], rng)
    xd, wd = x.to(DEV).requires_grad_(), w.to(DEV).requires_grad_()
    out, cnt = T.spike_conv2d(xd, wd, None, None, st, pd, dl, gr, count=True)
    ref, rcnt = R.spike_conv2d(x.double(), w.double(), None, None, st, pd, dl, gr, count=True)
    assert_close64(out.detach().cpu(), ref, **TOL[torch.float32])
    assert int(cnt) == int(rcnt)
    g = torch.randn(out.shape, generator=rng)
    gw = torch.autograd.grad(out, wd, g.to(DEV))[0]
    assert_close64(gw.cpu(), torch.nn.grad.conv2d_weight(x.double(), w.shape, g.double(), st, pd, dl, gr),
                   **TOL[torch.float32])
    xl, wl = make_spikes((40, 70), 0.2, rng), randn((20, 70), rng)
    wld = wl.to(DEV).requires_grad_()
    gl = randn((40, 20), rng)
    out, cnt = T.spike_linear(xl.to(DEV), wld, None, None, count=True)
    assert_close64(out.detach().cpu(), xl.double() @ wl.double().t(), **TOL[torch.float32])
    gw = torch.autograd.grad(out, wld, gl.to(DEV))[0]
    assert_close64(gw.cpu(), gl.double().t() @ xl.double(), **TOL[torch.float32])


def test_non_contiguous_inputs(rng):
    # channels_last spikes, weight and mask; a transposed linear weight; strided LIF state
    x, w, b, mk, st, pd, dl, gr = _conv_inputs(CONV_CASES[1], rng)
    cl = torch.channels_last
    xd, wd = x.to(DEV).contiguous(memory_format=cl), w.to(DEV).contiguous(memory_format=cl).requires_grad_()
    out, _ = T.spike_conv2d(xd, wd, None, mk.to(DEV).contiguous(memory_format=cl), st, pd, dl, gr)
    assert_close64(out.detach().cpu(), R.spike_conv2d(x.double(), w.double(), None, mk, st, pd, dl, gr)[0],
                   **TOL[torch.float32])
    g = torch.randn(out.shape, generator=rng)
    gw = torch.autograd.grad(out, wd, g.to(DEV))[0]
    w64 = w.double().requires_grad_()
    want = torch.autograd.grad(R.spike_conv2d(x.double(), w64, None, mk, st, pd, dl, gr)[0], w64, g.double())[0]
    assert_close64(gw.cpu(), want, **TOL[torch.float32])
    xl, wt = make_spikes((9, 40), 0.3, rng), randn((40, 21), rng)   # weight = wt.t(): not contiguous
    mt = make_mask((40, 21), 0.5, rng)
    out, n = T.spike_linear(xl.to(DEV), wt.to(DEV).t(), None, mt.to(DEV).t(), count=True)
    ref, rn = R.spike_linear(xl.double(), wt.double().t(), None, mt.t(), count=True)
    assert_close64(out.cpu(), ref, **TOL[torch.float32])
    assert int(n) == int(rn)
    xs = randn((4, 30, 2), rng)[:, :, 0]                              # strided [T, N]
    v0 = randn((30, 2), rng)[:, 1]
    s, v, h = T.lif(xs.to(DEV), v0.to(DEV), 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True)
    rs, rv, rh = R.lif(xs.to(DEV), v0.to(DEV), 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True)
    assert torch.equal(s, rs) and torch.equal(v, rv) and torch.equal(h, rh)


def test_spike_conv2d_gradcheck(rng):
    x, w, b, mk, st, pd, dl, gr = _conv_inputs(CONV_CASES[1], rng)
    x, mk = x.double().to(DEV), mk.to(DEV)
    w = w.double().to(DEV).requires_grad_()
    b = b.double().to(DEV).requires_grad_()
    assert torch.autograd.gradcheck(lambda w_, b_: T.spike_conv2d(x, w_, b_, mk, st, pd, dl, gr)[0], (w, b),
                                    eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_spike_conv2d_half(dtype, rng):
    x, w, b, mk, st, pd, dl, gr = _conv_inputs(CONV_CASES[2], rng)
    out, cnt = T.spike_conv2d(*_dev(x.to(dtype), w.to(dtype), b.to(dtype), mk), st, pd, dl, gr, count=True)
    ref, rcnt = R.spike_conv2d(x.double(), w.to(dtype).double(), b.to(dtype).double(), mk, st, pd, dl, gr,
                               count=True)
    assert out.dtype == dtype
    assert_close64(out.float().cpu(), ref, **TOL[dtype])
    assert int(cnt) == int(rcnt)


# --------------------------------------------------------------------------------------------
# lif

SURROGATES = ("sigmoid", "atan", "piecewise_quadratic", "soft_sign", "erf")
LIF_CASES = [(s, vr, detach, decay) for i, s in enumerate(SURROGATES)
             for vr, detach, decay in ((0.0, i % 2 == 0, True), (None, i % 2 == 1, i % 3 == 0))]


def _lif_oracle_dtype(x, v0, args, spikes):
    """dtype of the reference loop to differentiate for gradients of the kernel run that gave `spikes`.
    float64, except where an fp32 H lands within rounding of the threshold (measure zero, but inputs
    are fresh each run) and the float64 spike train differs: then the loop in x's own dtype, whose
    spikes equal the kernel's (the tests check that bit-exactly)."""
    if torch.equal(R.lif(x.double(), v0.double(), *args)[0].to(x.dtype), spikes.detach().cpu()):
        return torch.float64
    return x.dtype


@pytest.mark.parametrize("surrogate,v_reset,detach_reset,decay_input", LIF_CASES)
def test_lif_forward_backward(surrogate, v_reset, detach_reset, decay_input, rng):
    t, n = 6, 70
    x = randn((t, n), rng) * 1.5
    v0 = randn((n,), rng) * 0.5
    alpha = {"sigmoid": 4.0, "atan": 2.0}.get(surrogate, 1.5)
    xd, vd = x.to(DEV).requires_grad_(), v0.to(DEV).requires_grad_()
    s, v, _ = T.lif(xd, vd, 2.0, 1.0, v_reset, decay_input, detach_reset, surrogate, alpha)
    # Same dtype, same operation order: spikes and v_last are bit-identical to the torch loop.
    rs, rv, _ = R.lif(x.to(DEV), v0.to(DEV), 2.0, 1.0, v_reset, decay_input, detach_reset, surrogate, alpha)
    assert torch.equal(s, rs) and torch.equal(v, rv)
    gs, gv = randn((t, n), rng), randn((n,), rng)
    got = torch.autograd.grad((s * gs.to(DEV)).sum() + (v * gv.to(DEV)).sum(), (xd, vd))
    ref_dtype = _lif_oracle_dtype(x, v0, (2.0, 1.0, v_reset, decay_input, detach_reset, surrogate, alpha), s)
    xr, vr_ = x.to(ref_dtype).requires_grad_(), v0.to(ref_dtype).requires_grad_()
    sr, vr_last, _ = R.lif(xr, vr_, 2.0, 1.0, v_reset, decay_input, detach_reset, surrogate, alpha)
    want = torch.autograd.grad((sr * gs.to(ref_dtype)).sum() + (vr_last * gv.to(ref_dtype)).sum(), (xr, vr_))
    for a, e in zip(got, want):
        assert_close64(a.cpu(), e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tau,v_th", [(3.0, 0.7), (1.7, 1.0)])
def test_lif_float64_other_tau(tau, v_th, rng):
    x, v0 = randn((5, 40), rng, torch.float64), randn((40,), rng, torch.float64)
    s, v, h = T.lif(*_dev(x, v0), tau, v_th, -0.1, True, False, "atan", 2.0, True)
    rs, rv, rh = R.lif(x, v0, tau, v_th, -0.1, True, False, "atan", 2.0, True)
    assert torch.equal(s.cpu(), rs) and torch.equal(h.cpu(), rh) and torch.equal(v.cpu(), rv)


@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_lif_half_bit_exact(dtype, rng):
    # Rounded after every operation like torch's half arithmetic: spikes, H and V match exactly.
    x, v0 = randn((7, 96), rng, dtype) * 2, torch.zeros(96, dtype=dtype)
    s, v, h = T.lif(*_dev(x, v0), 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True)
    rs, rv, rh = R.lif(*_dev(x, v0), 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True)
    assert torch.equal(s, rs) and torch.equal(h, rh) and torch.equal(v, rv)


def test_lif_edges_and_functional(rng):
    # T = 1, odd N, functional API with [T, B, C] shapes and return_h
    x = randn((1, 3, 5), rng).to(DEV)
    s, v, h = ss.functional.lif_with_h(x, tau=2.0, backend="triton", return_h=True)
    rs, rv, rh = R.lif(x.reshape(1, -1), torch.zeros(15, device=DEV), 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0,
                       True)
    assert torch.equal(s.reshape(1, -1), rs) and torch.equal(h.reshape(1, -1), rh)
    assert torch.equal(v.reshape(-1), rv)
    # all neurons fire every step / none fires
    big = torch.full((3, 40), 10.0, device=DEV)
    assert bool(T.lif(big, torch.zeros(40, device=DEV), 2.0, 1.0, 0.0, True, False, "atan", 2.0)[0].all())
    assert not bool(T.lif(-big, torch.zeros(40, device=DEV), 2.0, 1.0, 0.0, True, False, "atan", 2.0)[0].any())


NEURON_CASES = [("if", None, True), ("plif", 0.37, True), ("plif", 0.62, False)]


@pytest.mark.parametrize("charge,k,decay_input", NEURON_CASES)
@pytest.mark.parametrize("v_reset,detach_reset,surrogate", [(0.0, False, "sigmoid"), (None, True, "atan"),
                                                            (-0.2, False, "erf")])
def test_neuron_charges_forward_backward(charge, k, decay_input, v_reset, detach_reset, surrogate, rng):
    """IF / ParametricLIF charges: spikes, v and h bit-identical to the torch loop; gradients of x, v0 and k
    against autograd through the float64 reference."""
    t, n = 6, 70
    x = randn((t, n), rng) * 1.5 + 0.4
    v0 = randn((n,), rng) * 0.3
    args = (0.0, 1.0, v_reset, decay_input, detach_reset, surrogate, 2.0)
    for dtype in (torch.float32, torch.float64, torch.float16):
        kd = None if k is None else torch.tensor(k, dtype=dtype, device=DEV).requires_grad_()
        xd, vd = x.to(DEV, dtype).requires_grad_(), v0.to(DEV, dtype).requires_grad_()
        s, v, h = T.lif(xd, vd, *args, True, charge=charge, k=kd)
        rs, rv, rh = R.lif(xd.detach(), vd.detach(), *args, True, charge=charge,
                           k=None if kd is None else kd.detach())
        assert torch.equal(s, rs) and torch.equal(v, rv) and torch.equal(h, rh), dtype
        if dtype == torch.float16:
            continue
        gs, gv = randn((t, n), rng).to(DEV, dtype), randn((n,), rng).to(DEV, dtype)
        inputs = (xd, vd) + ((kd,) if kd is not None else ())
        got = torch.autograd.grad((s * gs).sum() + (v * gv).sum(), inputs)
        xr, vr_ = x.to(dtype).double().requires_grad_(), v0.to(dtype).double().requires_grad_()
        kr = None if kd is None else kd.detach().double().requires_grad_()
        sr, vlr, _ = R.lif(xr, vr_, *args, charge=charge, k=kr)
        if not torch.equal(sr.to(dtype), s.detach()):
            continue  # a float32 H within rounding of the threshold: the float64 spike train differs
        want = torch.autograd.grad((sr * gs.double()).sum() + (vlr * gv.double()).sum(),
                                   (xr, vr_) + ((kr,) if kr is not None else ()))
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        for a, e in zip(got, want):
            assert_close64(a.cpu(), e, rtol=tol, atol=tol * max(1.0, float(e.abs().max())))


def test_neuron_op_schemas_match_snnsparse():
    """One schema per op: snnsparse_triton's lif_fwd / lif_bwd (inferred from the Python signatures) equal
    snnsparse::'s (csrc/registration.cpp): argument names, types and defaults, and the returns."""
    from snnsparse.ops.registry import require_cpp
    require_cpp("test_neuron_op_schemas_match_snnsparse")
    for name in ("lif_fwd", "lif_bwd"):
        a = getattr(torch.ops.snnsparse, name).default._schema
        b = getattr(ops, name).default._schema
        assert [(x.name, str(x.type), x.default_value) for x in a.arguments] == \
            [(x.name, str(x.type), x.default_value) for x in b.arguments], name
        assert [str(x.type) for x in a.returns] == [str(x.type) for x in b.returns], name


def test_neuron_ss_modules_on_triton(rng):
    """ss.nn.IF / ParametricLIF on the triton backend equal the reference backend, gradient of w too."""
    x = randn((4, 2, 9), rng).to(DEV) + 0.7
    for cls in (ss.nn.IF, ss.nn.ParametricLIF):
        outs = []
        for backend in ("triton", "reference"):
            m = cls(backend=backend).to(DEV)
            xx = x.clone().requires_grad_()
            s = m(xx)
            (s * torch.arange(s.numel(), device=DEV).reshape(s.shape).cos()).sum().backward()
            outs.append((s, xx.grad, getattr(m, "w", None)))
        assert torch.equal(outs[0][0], outs[1][0])
        assert_close64(outs[0][1].cpu(), outs[1][1].cpu(), rtol=1e-5, atol=1e-5)
        if cls is ss.nn.ParametricLIF:
            assert_close64(outs[0][2].grad.cpu(), outs[1][2].grad.cpu(), rtol=1e-5, atol=1e-5)


def test_lif_packed_spikes_and_counts(rng):
    t, n = 3, 100
    x, v0 = randn((t, n), rng).to(DEV) * 2, torch.zeros(n, device=DEV)
    s, v, bits, cnt = T.lif_packed(x, v0)
    rs, rv, _ = R.lif(x, v0, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0)
    assert torch.equal(s, rs) and torch.equal(v, rv)
    unpacked = ((bits.long().unsqueeze(-1) >> torch.arange(32, device=DEV)) & 1).reshape(t, -1)[:, :n]
    assert torch.equal(unpacked.to(s.dtype), s)
    assert torch.equal(cnt.sum(1).long(), s.sum(1).long())


# --------------------------------------------------------------------------------------------
# issue 11: h_seq gradient, dtypes the interpreter cannot compute, non-finite values

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("surrogate,v_reset,detach_reset,decay_input", LIF_CASES)
def test_lif_h_seq_carries_gradient(surrogate, v_reset, detach_reset, decay_input, dtype, rng):
    # h_seq returned by return_h=True is an output like the others: d(a*S + b*H + c*V)/d(x, v0)
    # equals autograd through the reference loop (it used to be non-differentiable: b was dropped).
    t, n = 5, 70
    x = randn((t, n), rng, dtype) * 1.5
    v0 = randn((n,), rng, dtype) * 0.5
    alpha = {"sigmoid": 4.0, "atan": 2.0}.get(surrogate, 1.5)
    args = (2.0, 1.0, v_reset, decay_input, detach_reset, surrogate, alpha)
    xd, vd = x.to(DEV).requires_grad_(), v0.to(DEV).requires_grad_()
    s, v, h = T.lif(xd, vd, *args, True)
    ref_dtype = _lif_oracle_dtype(x, v0, args, s)
    xr, vr_ = x.to(ref_dtype).requires_grad_(), v0.to(ref_dtype).requires_grad_()
    rs, rv, rh = R.lif(xr, vr_, *args, True)
    tol = TOL[torch.float64] if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    a, b, c = (float(u) for u in torch.randn(3, generator=rng))
    # None: the term is left out, so the op's backward gets no gradient (None) for that output
    for coefs in ((1.0, 1.0, None), (None, 1.0, None), (None, b, c), (a, b, c)):
        def loss(outs):
            return sum(o.sum() * k for o, k in zip(outs, coefs) if k is not None)
        got = torch.autograd.grad(loss((s, h, v)), (xd, vd), retain_graph=True)
        want = torch.autograd.grad(loss((rs, rh, rv)), (xr, vr_), retain_graph=True)
        for g_, e, name in zip(got, want, ("x_seq", "v0")):
            assert_close64(g_.cpu(), e, **tol, msg=f"grad {name}, coefficients (S, H, V) = {coefs}")


def test_lif_h_seq_gradient_functional(rng):
    # the report through the public API, T = 1 and odd N included
    for shape in ((3, 1), (1, 3), (4, 2, 5)):
        x = randn(shape, rng) * 1.5
        grads = []
        for backend in ("triton", "reference"):
            xd = x.to(DEV).requires_grad_()
            s, v, h = ss.functional.lif_with_h(xd, backend=backend, return_h=True)
            grads.append(torch.autograd.grad(s.sum() + h.sum(), xd)[0].cpu())
        assert_close64(grads[0], grads[1], rtol=1e-5, atol=1e-5, msg=f"shape {shape}")


ALL_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The interpreter stores bfloat16 as raw uint16 (numpy has none): its results were off by up to 1e6.
REFUSED = () if ON_GPU else (torch.bfloat16,)


@pytest.mark.parametrize("dtype", ALL_FLOATS)
def test_every_float_dtype_is_computed_correctly_or_refused(dtype, rng):
    x, w, b = make_spikes((19, 70), 0.3, rng), randn((37, 70), rng), randn((37,), rng)
    mk = make_mask((37, 70), 0.5, rng)
    xc, wc, bc, mc, st, pd, dl, gr = _conv_inputs(CONV_CASES[1], rng)
    xl, v0 = randn((5, 70), rng) * 2, randn((70,), rng) * 0.5
    lin_args = _dev(x.to(dtype), w.to(dtype), b.to(dtype), mk)
    conv_args = _dev(xc.to(dtype), wc.to(dtype), bc.to(dtype), mc)
    lif_args = _dev(xl.to(dtype), v0.to(dtype))
    lif_params = (2.0, 1.0, 0.0, True, False, "sigmoid", 4.0)
    if dtype in REFUSED:
        # refused before any kernel runs, naming the dtype and why; the backward ops too
        why = r"torch.bfloat16.*TRITON_INTERPRET=1"
        with pytest.raises(TypeError, match="spike_linear: weight is " + why):
            T.spike_linear(*lin_args)
        with pytest.raises(TypeError, match="spike_linear: weight is " + why):
            ss.functional.spike_linear(lin_args[0], lin_args[1], mask=lin_args[3], backend="triton")
        with pytest.raises(TypeError, match="spike_conv2d: weight is " + why):
            T.spike_conv2d(*conv_args, st, pd, dl, gr)
        with pytest.raises(TypeError, match="lif: x_seq is " + why):
            T.lif(*lif_args, *lif_params)
        with pytest.raises(TypeError, match="lif_packed: x_seq is " + why):
            T.lif_packed(*lif_args)
        g = torch.zeros(19, 37, dtype=dtype, device=DEV)
        with pytest.raises(TypeError, match=why):
            ops.spike_linear_bwd(g, lin_args[0], lin_args[1], mk.to(DEV), True, True, False)
        with pytest.raises(TypeError, match=why):
            ops.lif_bwd(lif_args[0], None, None, lif_args[0], *lif_params)
        return
    tol = TOL[dtype]
    # spike_linear forward and gradients against float64 on the same (dtype-rounded) values
    xd, wd = lin_args[0].requires_grad_(), lin_args[1].requires_grad_()
    out, _ = T.spike_linear(xd, wd, lin_args[2], lin_args[3])
    assert out.dtype == dtype
    x64, w64 = x.double().requires_grad_(), w.to(dtype).double().requires_grad_()
    ref, _ = R.spike_linear(x64, w64, b.to(dtype).double(), mk)
    assert_close64(out.detach().cpu(), ref, **tol, msg="spike_linear")
    g = randn(tuple(out.shape), rng, dtype)
    got = torch.autograd.grad(out, (xd, wd), g.to(DEV))
    want = torch.autograd.grad(ref, (x64, w64), g.double())
    for a, e, name in zip(got, want, ("x", "weight")):
        assert a.dtype == dtype
        assert_close64(a.cpu(), e, **tol, msg=f"spike_linear grad {name}")
    # spike_conv2d
    out, _ = T.spike_conv2d(*conv_args, st, pd, dl, gr)
    ref, _ = R.spike_conv2d(xc.double(), wc.to(dtype).double(), bc.to(dtype).double(), mc, st, pd, dl, gr)
    assert out.dtype == dtype
    assert_close64(out.cpu(), ref, **tol, msg="spike_conv2d")
    # lif: the same operation order as the torch loop in that dtype, so bit-identical to it
    s, v, h = T.lif(*lif_args, *lif_params, True)
    rs, rv, rh = R.lif(*lif_args, *lif_params, True)
    assert torch.equal(s, rs) and torch.equal(v, rv) and torch.equal(h, rh)


def _nonfinite_where_pruned(w, mk, rng):
    """w with every pruned entry replaced by NaN, +inf or -inf (at random), and w with them zeroed."""
    bad = torch.tensor([float("nan"), float("inf"), float("-inf")])[torch.randint(3, w.shape, generator=rng)]
    return torch.where(mk, w, bad), torch.where(mk, w, torch.zeros_like(w))


@pytest.mark.parametrize("dense_weight_grad", [False, True])
@pytest.mark.parametrize("density", [0.5, 0.0])
def test_pruned_nonfinite_weights_are_absent(density, dense_weight_grad, rng):
    # A pruned synapse contributes nothing, whatever its weight holds: the output and the gradients
    # equal those with the pruned weights zeroed (weight*mask made every touched output NaN).
    x, w, b = make_spikes((21, 45), 0.5, rng), randn((37, 45), rng), randn((37,), rng)
    mk = make_mask(w.shape, density, rng)
    xc, wc, bc, _, st, pd, dl, gr = _conv_inputs(CONV_CASES[1], rng)
    mc = make_mask(wc.shape, density, rng)
    linear = lambda x_, w_: T.spike_linear(x_, w_, b.to(DEV), mk.to(DEV), count=True,  # noqa: E731
                                           dense_weight_grad=dense_weight_grad)
    conv = lambda x_, w_: T.spike_conv2d(x_, w_, bc.to(DEV), mc.to(DEV), st, pd, dl, gr,  # noqa: E731
                                         count=True, dense_weight_grad=dense_weight_grad)
    for name, f, xs, ws, ms, ref_fn in (
            ("spike_linear", linear, x, w, mk, lambda w64: R.spike_linear(x.double(), w64, b.double(), mk)),
            ("spike_conv2d", conv, xc, wc, mc,
             lambda w64: R.spike_conv2d(xc.double(), w64, bc.double(), mc, st, pd, dl, gr))):
        w_bad, w_zero = _nonfinite_where_pruned(ws, ms, rng)
        runs = []
        for wv in (w_bad, w_zero):
            xd, wd = xs.to(DEV).requires_grad_(), wv.to(DEV).requires_grad_()
            out, cnt = f(xd, wd)
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(DEV)
            runs.append((out.detach(), cnt) + torch.autograd.grad(out, (xd, wd), g))
        for a, e, what in zip(runs[0], runs[1], ("output", "count", "grad x", "grad weight")):
            assert torch.equal(a, e), f"{name} {what}: pruned NaN/inf weights are not absent"
        assert bool(runs[0][0].isfinite().all()), name
        assert_close64(runs[0][0].cpu(), ref_fn(w_zero.double())[0], **TOL[torch.float32], msg=name)


NONFINITE = (float("inf"), float("-inf"), float("nan"))


# numpy, under the interpreter, warns on inf - inf and 0 * inf: those NaNs are what is tested
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("v_reset,decay_input", [(0.0, True), (-0.2, False), (None, True), (None, False)])
def test_lif_non_finite_input_propagates_as_reference(v_reset, decay_input, dtype, rng):
    # +inf / -inf / NaN in x_seq or v0 give what the reference loop gives (a hard reset after
    # H = +inf is 0 * inf = NaN, not V_reset): the same NaN positions and the same finite values,
    # for S, v_last, h_seq and, with every surrogate and detach_reset, the gradients.
    t, n = 6, 48
    x, v0 = randn((t, n), rng, dtype) * 1.5, randn((n,), rng, dtype) * 0.5
    for j in range(8, n):  # columns 0..7 stay finite; each other one gets one non-finite value
        val = NONFINITE[j % 3]
        if j % 4 == 0:
            v0[j] = val
        else:
            x[int(torch.randint(t, (1,), generator=rng)), j] = val
    exact = dict(rtol=0, atol=0, equal_nan=True)
    for i, surrogate in enumerate(SURROGATES):
        args = (2.0, 1.0, v_reset, decay_input, i % 2 == 1, surrogate, 1.5)
        xd, vd = x.to(DEV).requires_grad_(), v0.to(DEV).requires_grad_()
        s, v, h = T.lif(xd, vd, *args, True)
        xr, vr_ = x.clone().requires_grad_(), v0.clone().requires_grad_()
        rs, rv, rh = R.lif(xr, vr_, *args, True)
        for a, e, name in ((s, rs, "spikes"), (v, rv, "v_last"), (h, rh, "h_seq")):
            torch.testing.assert_close(a.detach().cpu(), e.detach(), **exact,
                                       msg=lambda m: f"{surrogate} {name}: {m}")
        assert bool(v[:8].isfinite().all()) and not bool(v[8:].isfinite().all())
        if dtype == torch.float16:
            continue  # the kernel's backward runs in fp32, the fp16 loop's autograd does not
        gs, gh, gv = randn((t, n), rng, dtype), randn((t, n), rng, dtype), randn((n,), rng, dtype)
        got = torch.autograd.grad((s * gs.to(DEV)).sum() + (h * gh.to(DEV)).sum() + (v * gv.to(DEV)).sum(),
                                  (xd, vd))
        want = torch.autograd.grad((rs * gs).sum() + (rh * gh).sum() + (rv * gv).sum(), (xr, vr_))
        tol = TOL[torch.float64] if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
        for a, e, name in zip(got, want, ("x_seq", "v0")):
            torch.testing.assert_close(a.cpu(), e, **tol, equal_nan=True, msg=lambda m: f"{surrogate} grad {name}: {m}")


# --------------------------------------------------------------------------------------------
# torch.library registration

def test_opcheck_all_ops(rng):
    x = make_spikes((10, 37), 0.4, rng).to(DEV)
    w, b = randn((21, 37), rng).to(DEV), randn((21,), rng).to(DEV)
    mk = make_mask((21, 37), 0.5, rng).to(DEV)
    g = randn((10, 21), rng).to(DEV)
    torch.library.opcheck(ops.spike_linear_fwd, (x, w.requires_grad_(), b, mk, True, False))
    torch.library.opcheck(ops.spike_linear_bwd, (g, x, w.detach(), mk, True, True, False))
    xc = make_spikes((2, 4, 5, 5), 0.4, rng).to(DEV)
    wc, bc = randn((6, 2, 3, 3), rng).to(DEV), randn((6,), rng).to(DEV)
    mc = make_mask(wc.shape, 0.5, rng).to(DEV)
    conv = ([2, 1], [1, 1], [1, 1], 2)
    torch.library.opcheck(ops.spike_conv2d_fwd, (xc, wc.requires_grad_(), bc, mc, *conv, True, True))
    gc = randn((2, 6, 3, 5), rng).to(DEV)
    torch.library.opcheck(ops.spike_conv2d_bwd, (gc, xc, wc.detach(), mc, *conv, True, True, False))
    xl = randn((4, 33), rng).to(DEV).requires_grad_()
    v0 = torch.zeros(33, device=DEV)
    torch.library.opcheck(ops.lif_fwd, (xl, v0, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True))
    h = T.lif(xl.detach(), v0, 2.0, 1.0, None, True, False, "atan", 2.0, True)[2]
    torch.library.opcheck(ops.lif_bwd, (torch.randn_like(h), torch.randn_like(v0), torch.randn_like(h), h, 2.0, 1.0,
                                        None, True, False, "atan", 2.0))
    k = torch.tensor(0.4, device=DEV).requires_grad_()
    torch.library.opcheck(ops.lif_fwd, (xl, v0, 0.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True, "plif", k))
    torch.library.opcheck(ops.lif_fwd, (xl, v0, 0.0, 1.0, None, True, True, "atan", 2.0, True, "if", None))
    torch.library.opcheck(ops.lif_bwd, (torch.randn_like(h), torch.randn_like(v0), None, h, 0.0, 1.0, -0.1, False,
                                        False, "erf", 2.0, "plif", k.detach(), xl.detach(), v0))


def test_torch_compile_fullgraph(rng):
    # GPU: inductor traces into the triton_op and sees the kernels. CPU interpreter: the ops are
    # custom_ops, traced through their fake kernels (aot_eager: no C++ compiler needed).
    x = make_spikes((64, 96), 0.2, rng).to(DEV)
    w = randn((48, 96), rng).to(DEV)
    mk = make_mask((48, 96), 0.5, rng).to(DEV)

    def f(x_, w_):
        # the backend ops themselves: snnsparse.functional's binary-input check is data-dependent
        out, n = T.spike_linear(x_, w_, None, mk, count=True)
        s, v, _ = T.lif(out.view(4, -1), torch.zeros(16 * 48, device=DEV), 2.0, 1.0, 0.0, True, False,
                        "sigmoid", 4.0)
        return s, n

    eager = f(x, w)
    compiled = torch.compile(f, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")(x, w)
    assert torch.equal(eager[0], compiled[0]) and int(eager[1]) == int(compiled[1])


@pytest.mark.slow  # a subprocess (heavy); make test runs every slow test too
@pytest.mark.skipif(ON_GPU, reason="on a GPU the other tests compile every kernel for real")
def test_kernels_compile_for_sm90_without_gpu():
    """The interpreter accepts code the GPU compiler rejects: compile for sm_90 through ptxas (no GPU)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-W", "ignore", "-m", "snnsparse.triton_kernels.aot_check", "--quick"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "aot_check: 0 failed" in p.stdout, p.stdout[-6000:] + p.stderr[-3000:]
    assert p.stdout.count("ok    sm_90") >= 15


# --------------------------------------------------------------------------------------------
# whole-suite runs on CPU: this file in its own process (see the module docstring)

@pytest.mark.slow  # a subprocess (heavy); make test runs every slow test too
def test_in_fresh_interpreter_process():
    if not IN_SUBPROCESS:
        pytest.skip("the Triton tests ran in this process")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__)],
                       cwd=root, env=env, capture_output=True, text=True, timeout=900)
    print(p.stdout[-3000:])
    assert p.returncode == 0, p.stdout[-8000:] + p.stderr[-3000:]
    assert " passed" in p.stdout.strip().splitlines()[-1]


if IN_SUBPROCESS:
    for _name in [n for n in list(globals()) if n.startswith("test_") and n != "test_in_fresh_interpreter_process"]:
        del globals()[_name]
