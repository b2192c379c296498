"""The cuda backend (csrc/cuda, snnsparse/ops/cuda.py) against the reference.

Two parts:

1. Emulated device code (runs everywhere g++ exists). The kernels of csrc/cuda/spike_kernels.cuh and
   lif_kernels.cuh are compiled by g++ against the CPU stand-ins of csrc/cuda/emulate.cuh
   (tests/cuda_emu.cpp, loaded with ctypes) and compared with the reference: indexing, tiling,
   bit packing, tile skipping, counting, split-K reduction and the LIF numerics are checked on
   machines without a GPU. Not checked there: the host launchers (*.cu), real-hardware races, speed.

2. The registered CUDA ops on a GPU: every op vs the reference, forward and backward,
   fp32/fp16/bf16 (and fp64 for gradcheck), counting mode, the DESIGN.md grid edges, argument
   checks, opcheck. Skipped with the reason where there is no CUDA device or snnsparse._C was
   built without CUDA. bench/gpu_check.sh also runs this file under compute-sanitizer.
"""
import ctypes
import itertools
import math
import os
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F

import snnsparse as ss
from snnsparse import _ext
from snnsparse.ops import reference
from snnsparse.ops import surrogate as sg

from conftest import DENSITIES, ODD_SIZES, RATES, TIMESTEPS, mask as rand_mask, spikes as rand_spikes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SG_ID = {name: i for i, name in enumerate(sg.NAMES)}  # the order of csrc/cuda/lif_kernels.cuh

# ================================================================================================
# Part 1: the device code under the CPU emulator
# ================================================================================================
EMU_DT = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: the emulated CUDA kernels cannot be built")
    from torch.utils.cpp_extension import include_paths

    out = str(tmp_path_factory.mktemp("cuda_emu") / "cuda_emu.so")
    cmd = [gxx, "-std=c++20", "-O1", "-ffp-contract=off", "-fPIC", "-shared", "-pthread",
           "-I", os.path.join(ROOT, "csrc", "cuda"), *[f"-I{p}" for p in include_paths()],
           os.path.join(ROOT, "tests", "cuda_emu.cpp"), "-o", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"building the CUDA emulator failed:\n{r.stdout}{r.stderr}"
    lib = ctypes.CDLL(out)
    lib.emu_wgrad_splits.restype = ctypes.c_longlong
    lib.emu_fwd_splits.restype = ctypes.c_longlong
    return lib


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _shape15(x, w, stride, padding, dilation, groups):
    n, cin, h, wd = x.shape
    cout, cig, kh, kw = w.shape
    return (ctypes.c_longlong * 15)(n, cin, h, wd, cout, cig, kh, kw, stride[0], stride[1], padding[0],
                                    padding[1], dilation[0], dilation[1], groups)


def emu_conv_fwd(lib, x, w, b, m, stride, padding, dilation, groups, count, sms=132):
    """Forward as on a GPU with `sms` SMs (which decides the reduction split); also returns the split."""
    ho, wo = ss.functional.conv2d_output_size(x.shape[2], x.shape[3], w.shape[2:], stride, padding, dilation)
    out = torch.full((x.shape[0], w.shape[0], ho, wo), float("nan"), dtype=w.dtype)
    n = ctypes.c_longlong(-1)
    shape = _shape15(x, w, stride, padding, dilation, groups)
    rc = lib.emu_conv_fwd(EMU_DT[w.dtype], _ptr(x.contiguous()), _ptr(w.contiguous()), _ptr(b), _ptr(m), _ptr(out),
                          ctypes.byref(n), shape, int(count), ctypes.c_longlong(sms))
    assert rc == 0
    return out, n.value, lib.emu_fwd_splits(shape, ctypes.c_longlong(sms))


def emu_conv_wgrad(lib, go, x, w, stride, padding, dilation, groups, sms):
    gw = torch.full(w.shape, float("nan"), dtype=w.dtype)
    shape = _shape15(x, w, stride, padding, dilation, groups)
    rc = lib.emu_conv_wgrad(EMU_DT[w.dtype], _ptr(go.contiguous()), _ptr(x.contiguous()), _ptr(gw), shape,
                            ctypes.c_longlong(sms))
    assert rc == 0
    return gw, lib.emu_wgrad_splits(shape, ctypes.c_longlong(sms))


def _tol(dtype):
    return {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-2),
            torch.bfloat16: (2e-2, 2e-2)}[dtype]


def _check_conv_emu(lib, gen, n, cin, h, w_, cout, k, stride, padding, dilation, groups, rate, density, dtype,
                    with_bias=True):
    x = rand_spikes((n, cin, h, w_), rate, gen, dtype)
    w = torch.randn((cout, cin // groups, k, k), generator=gen).to(dtype)
    b = torch.randn((cout,), generator=gen).to(dtype) if with_bias else None
    m = None if density is None else rand_mask(w.shape, density, gen)
    args = ((stride, stride), (padding, padding), (dilation, dilation), groups)
    out, n_acc, splits = emu_conv_fwd(lib, x, w, b, m, *args, count=True, sms=132)
    ref = F.conv2d(x.double(), reference.masked_weight(w.double(), m), None if b is None else b.double(), *args)
    rtol, atol = _tol(dtype)
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol * max(1.0, ref.abs().max().item()))
    mm = torch.ones_like(w, dtype=torch.float64) if m is None else m.double()
    n_ref = int(F.conv2d(x.double(), mm, None, *args).sum().round().item())
    assert n_acc == n_ref
    out2, n2, splits2 = emu_conv_fwd(lib, x, w, b, m, *args, count=False, sms=1)
    torch.testing.assert_close(out2.double(), ref, rtol=rtol, atol=atol * max(1.0, ref.abs().max().item()))
    assert n2 == 0
    if splits == splits2:
        assert torch.equal(out2, out)
    return splits


_LINEAR_EMU = [  # (N = T*B, K, M): odd sizes, several 32-bit words, more than one channel tile,
    (1, 1, 1), (3, 3, 3), (4 * 3, 127, 127), (1 * 5, 33, 65), (70, 64, 64),  # enough words to split K
    (4 * 2, 1100, 40),
]


@pytest.mark.parametrize("n,k,m", _LINEAR_EMU)
def test_emu_linear_fwd_grid(emu, rng, n, k, m):
    """Linear (the 1x1 conv) over the spike-rate x mask-density grid, count mode, bias/no bias."""
    for rate, density in itertools.product(RATES, DENSITIES + (None,)):
        _check_conv_emu(emu, rng, n, k, 1, 1, m, 1, 1, 0, 1, 1, rate, density, torch.float32,
                        with_bias=density != 0.5)


def test_emu_fwd_reduction_split(emu, rng):
    """A small grid splits the (tap, word) reduction over grid.z; the sum of the splits, bias and
    count equal the reference, for linear and conv, every dtype."""
    splits = set()
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        splits.add(_check_conv_emu(emu, rng, 4, 1100, 1, 1, 40, 1, 1, 0, 1, 1, 0.3, 0.5, dtype))
        splits.add(_check_conv_emu(emu, rng, 1, 70, 5, 5, 9, 3, 1, 1, 1, 1, 0.3, 0.5, dtype))
    assert max(splits) > 1


_CONV_EMU = [  # n, cin, h, w, cout, k, stride, padding, dilation, groups
    (2, 3, 5, 5, 4, 3, 1, 1, 1, 1),
    (4, 5, 7, 6, 3, 3, 2, 1, 1, 1),
    (1, 8, 9, 9, 6, 3, 1, 2, 2, 2),
    (2, 66, 4, 5, 70, 1, 1, 0, 1, 1),
    (1, 12, 3, 3, 12, 3, 1, 1, 1, 12),      # depthwise (127 channels: the GPU tests)
    (3, 40, 6, 6, 130, 3, 2, 0, 1, 2),      # two channel tiles per group
    (1, 1, 1, 1, 1, 1, 1, 0, 1, 1),
    (2, 4, 3, 3, 5, 3, 3, 3, 1, 1),         # padding wider than the input: border taps only
]


@pytest.mark.parametrize("case", _CONV_EMU, ids=[str(c) for c in _CONV_EMU])
def test_emu_conv_fwd(emu, rng, case):
    for rate, density in ((0.0, 1.0), (0.05, 0.5), (0.5, 0.1), (1.0, 0.0), (0.5, None), (1.0, 1.0)):
        _check_conv_emu(emu, rng, *case, rate, density, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_emu_conv_fwd_dtypes(emu, rng, dtype):
    for case in (_CONV_EMU[1], _CONV_EMU[2], (4 * 2, 127, 1, 1, 127, 1, 1, 0, 1, 1)):
        _check_conv_emu(emu, rng, *case, 0.5, 0.5, dtype)


@pytest.mark.parametrize("case", _CONV_EMU[:6] + [(300, 33, 1, 1, 3, 1, 1, 0, 1, 1)],
                         ids=[str(c) for c in _CONV_EMU[:6]] + ["linear-300x33x3"])
@pytest.mark.parametrize("sms", [1, 132])
def test_emu_weight_grad(emu, rng, case, sms):
    """Event-driven weight gradient, one split and split-K over pixels, vs autograd in float64."""
    n, cin, h, w_, cout, k, stride, padding, dilation, groups = case
    for rate, dtype in ((0.3, torch.float32), (0.0, torch.float32), (1.0, torch.float32), (0.5, torch.float16),
                        (0.5, torch.bfloat16), (0.5, torch.float64)):
        x = rand_spikes((n, cin, h, w_), rate, rng, dtype)
        w = torch.randn((cout, cin // groups, k, k), generator=rng).to(dtype)
        args = ((stride, stride), (padding, padding), (dilation, dilation), groups)
        wd = w.double().requires_grad_()
        y = F.conv2d(x.double(), wd, None, *args)
        go = torch.randn(y.shape, generator=rng).to(dtype)
        y.backward(go.double())
        gw, splits = emu_conv_wgrad(emu, go, x, w, *args, sms)
        assert splits >= 1
        rtol, atol = _tol(dtype)
        torch.testing.assert_close(gw.double(), wd.grad, rtol=rtol, atol=atol * max(1.0, wd.grad.abs().max().item()))


CHARGE_ID = {"lif": 0, "if": 1, "plif": 2}  # csrc/cuda/lif_kernels.cuh Charge


def emu_lif_fwd(lib, x, v0, tau, vth, vr, decay, charge="lif", k=None):
    t, n = x.shape
    s, vl, h = torch.full_like(x, float("nan")), torch.full_like(v0, float("nan")), torch.full_like(x, float("nan"))
    rc = lib.emu_lif_fwd(EMU_DT[x.dtype], _ptr(x), _ptr(v0), _ptr(s), _ptr(vl), _ptr(h), _ptr(k),
                         ctypes.c_longlong(t), ctypes.c_longlong(n), ctypes.c_double(tau), ctypes.c_double(vth),
                         int(vr is not None), ctypes.c_double(0.0 if vr is None else vr), int(decay),
                         CHARGE_ID[charge])
    assert rc == 0
    return s, vl, h


def emu_lif_bwd(lib, gs, gvl, gh, h, tau, vth, vr, decay, detach, name, alpha, charge="lif", k=None, x=None,
                v0=None):
    """(grad_x, grad_v0, grad_k): grad_k (the per-neuron sums of the kernel, summed here as the host
    launcher does) when x and v0 are given, else None."""
    t, n = h.shape
    gx, gv0 = torch.full_like(h, float("nan")), torch.full((n,), float("nan"), dtype=h.dtype)
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    gkn = torch.full((n,), float("nan"), dtype=acc) if x is not None else None
    rc = lib.emu_lif_bwd(EMU_DT[h.dtype], _ptr(gs), _ptr(gvl), _ptr(gh), _ptr(h), _ptr(gx), _ptr(gv0), _ptr(k),
                         _ptr(x), _ptr(v0), _ptr(gkn), ctypes.c_longlong(t), ctypes.c_longlong(n),
                         ctypes.c_double(tau), ctypes.c_double(vth), int(vr is not None),
                         ctypes.c_double(0.0 if vr is None else vr), int(decay), int(detach), SG_ID[name],
                         ctypes.c_double(alpha), CHARGE_ID[charge])
    assert rc == 0
    return gx, gv0, (None if gkn is None else gkn.sum().to(h.dtype))


_LIF_EMU = [  # dtype, tau, v_reset values. fp16/bf16 only where CPU and CUDA torch round alike
    (torch.float32, 1.7, (0.0, None, -0.3)),   # (tau = 2, v_reset exact in the dtype); the reference runs
    (torch.float64, 1.7, (0.0, None, -0.3)),   # on CPU here, the kernels replay torch's CUDA rounding
    (torch.float16, 2.0, (0.0, None)),
    (torch.bfloat16, 2.0, (0.0, None)),
]


@pytest.mark.parametrize("dtype,tau,resets", _LIF_EMU, ids=[str(c[0]) for c in _LIF_EMU])
@pytest.mark.parametrize("t", TIMESTEPS)
def test_emu_lif(emu, rng, dtype, tau, resets, t):
    """Fused LIF forward and backward: every surrogate, hard/soft reset, decay_input, detach_reset."""
    n = 300  # two blocks of 256 threads
    for v_reset, decay, detach, name in itertools.product(resets, (True, False), (False, True), sg.NAMES):
        alpha = sg.DEFAULT_ALPHA[name] * (1.5 if name == "atan" else 1.0)
        x = (torch.randn((t, n), generator=rng) * 1.5 + 0.6).to(dtype)
        v0 = (torch.randn((n,), generator=rng) * 0.3).to(dtype)
        s, vl, h = emu_lif_fwd(emu, x, v0, tau, 1.0, v_reset, decay)
        xr, v0r = x.clone().requires_grad_(), v0.clone().requires_grad_()
        sr, vlr, hr = reference.lif(xr, v0r, tau, 1.0, v_reset, decay, detach, name, alpha, return_h=True)
        what = f"{dtype} v_reset={v_reset} decay={decay} detach={detach} {name}"
        assert torch.equal(s, sr.detach()), what
        rtol, atol = (1e-6, 1e-6) if dtype in (torch.float32, torch.float64) else (0, 0)
        torch.testing.assert_close(h, hr.detach(), rtol=rtol, atol=atol, msg=what)
        torch.testing.assert_close(vl, vlr.detach(), rtol=rtol, atol=atol, msg=what)
        gs = torch.randn((t, n), generator=rng).to(dtype)
        gvl = torch.randn((n,), generator=rng).to(dtype)
        torch.autograd.backward([sr, vlr], [gs, gvl])
        gx, gv0, _ = emu_lif_bwd(emu, gs, gvl, None, h, tau, 1.0, v_reset, decay, detach, name, alpha)
        # The reference's fp16/bf16 autograd rounds every op; the kernel accumulates in fp32.
        rtol, atol = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-2),
                      torch.bfloat16: (5e-2, 5e-2)}[dtype]
        for got, want in ((gx, xr.grad), (gv0, v0r.grad)):
            scale = max(1.0, want.abs().max().item())
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol * scale, msg=what)


def test_emu_lif_grad_h_and_threshold_ties(emu, rng):
    """A gradient into h_seq is added to dL/dH; h exactly at threshold fires; no grad_v_last."""
    t, n = 4, 70
    x = torch.full((t, n), 2.0)  # tau 2, v 0: h = 1.0 = threshold at t = 0, fires
    v0 = torch.zeros(n)
    s, vl, h = emu_lif_fwd(emu, x, v0, 2.0, 1.0, 0.0, True)
    assert torch.all(s[0] == 1) and torch.all(h[0] == 1.0)
    x = (torch.randn((t, n), generator=rng) + 0.8)
    s, vl, h = emu_lif_fwd(emu, x, v0, 2.0, 1.0, None, True)
    xr = x.clone().requires_grad_()
    sr, vlr, hr = reference.lif(xr, v0, 2.0, 1.0, None, True, False, "sigmoid", 4.0, return_h=True)
    gs, gh = torch.randn((t, n), generator=rng), torch.randn((t, n), generator=rng)
    torch.autograd.backward([sr, hr], [gs, gh])
    gx, _, _ = emu_lif_bwd(emu, gs, None, gh, h, 2.0, 1.0, None, True, False, "sigmoid", 4.0)
    torch.testing.assert_close(gx, xr.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("charge,decay", [("if", True), ("plif", True), ("plif", False)])
def test_emu_neuron_charges(emu, rng, dtype, charge, decay):
    """IF / ParametricLIF charges of the CUDA kernels: forward bit-identical to the reference (fp32/fp64; the
    fp16/bf16 rounding replay too), gradients of x, v0 and k (the per-neuron sums + host sum) vs autograd."""
    t, n = 5, 300  # two blocks of 256 threads
    resets = (0.0, None, -0.3) if dtype in (torch.float32, torch.float64) else (0.0, None)
    for v_reset, detach, name in itertools.product(resets, (False, True), ("sigmoid", "atan", "erf")):
        x = (torch.randn((t, n), generator=rng) * 1.5 + 0.5).to(dtype)
        v0 = (torch.randn((n,), generator=rng) * 0.3).to(dtype)
        k = torch.sigmoid(torch.randn((), generator=rng)).to(dtype) if charge == "plif" else None
        s, vl, h = emu_lif_fwd(emu, x, v0, 0.0, 1.0, v_reset, decay, charge, k)
        xr, v0r = x.clone().requires_grad_(), v0.clone().requires_grad_()
        kr = None if k is None else k.clone().requires_grad_()
        sr, vlr, hr = reference.lif(xr, v0r, 0.0, 1.0, v_reset, decay, detach, name, 2.0, return_h=True,
                                    charge=charge, k=kr)
        what = f"{charge} {dtype} v_reset={v_reset} decay={decay} detach={detach} {name}"
        assert torch.equal(s, sr.detach()), what
        assert torch.equal(h, hr.detach()) and torch.equal(vl, vlr.detach()), what
        gs = torch.randn((t, n), generator=rng).to(dtype)
        gvl = torch.randn((n,), generator=rng).to(dtype)
        torch.autograd.backward([sr, vlr], [gs, gvl])
        gx, gv0, gk = emu_lif_bwd(emu, gs, gvl, None, h, 0.0, 1.0, v_reset, decay, detach, name, 2.0, charge, k,
                                  x if k is not None else None, v0 if k is not None else None)
        rtol, atol = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-2),
                      torch.bfloat16: (5e-2, 5e-2)}[dtype]
        pairs = [(gx, xr.grad), (gv0, v0r.grad)] + ([(gk, kr.grad)] if k is not None else [])
        for got, want in pairs:
            scale = max(1.0, want.abs().max().item()) * (math.sqrt(n) if got.dim() == 0 else 1.0)
            torch.testing.assert_close(got, want, rtol=rtol * 10, atol=atol * scale, msg=what)


# ================================================================================================
# Part 2: the registered CUDA ops on a GPU
# ================================================================================================
def _gpu_skip_reason():
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    reason = ss.backends.available().get("cuda")
    return None if reason is True else f"cuda backend unavailable: {reason}"


_GPU_REASON = _gpu_skip_reason()
gpu = pytest.mark.skipif(_GPU_REASON is not None, reason=str(_GPU_REASON))
DEV = "cuda"
LOW = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _gtol(dtype, scale=1.0):
    rtol, atol = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-5), torch.float16: (1e-2, 1e-2),
                  torch.bfloat16: (2e-2, 2e-2)}[dtype]
    return dict(rtol=rtol, atol=atol * max(1.0, scale))


def _close(actual, expected, dtype, msg="", loose=False):
    """assert_close against a reference; loose: fp16/bf16 gradients of the LIF, where the reference's
    autograd rounds every op to the dtype and the kernel accumulates in fp32."""
    expected = expected.double().cpu()
    tol = _gtol(dtype, expected.abs().max().item() if expected.numel() else 1.0)
    if loose and dtype in LOW:
        tol = {k: v * 2.5 for k, v in tol.items()}
    torch.testing.assert_close(actual.double().cpu(), expected, msg=msg or None, **tol)


def _to(t, dtype=None):
    if t is None:
        return None
    return t.to(DEV) if dtype is None or t.dtype == torch.bool else t.to(DEV, dtype)


def _linear_case(gen, t, b, k, m, rate, density, dtype, bias=True):
    x = rand_spikes((t, b, k), rate, gen)
    w = torch.randn((m, k), generator=gen) / math.sqrt(max(k, 1))
    bb = torch.randn((m,), generator=gen) if bias else None
    mk = rand_mask((m, k), density, gen)
    return _to(x, dtype), _to(w, dtype), _to(bb, dtype), _to(mk)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("t", TIMESTEPS)
@pytest.mark.parametrize("size", ODD_SIZES)
def test_gpu_linear_grid(rng, dtype, t, size):
    """Forward + count over rate x density, odd sizes, T in {1, 4}; backward vs float64 autograd."""
    for rate, density in itertools.product(RATES, DENSITIES):
        x, w, b, m = _linear_case(rng, t, 3, size, size + 2, rate, density, dtype)
        what = f"rate={rate} density={density}"
        w.requires_grad_(True)
        b.requires_grad_(True)
        xg = x.clone().requires_grad_(True)
        out, n = ss.functional.spike_linear(xg, w, b, mask=m, backend="cuda", return_count=True)
        wd, bd = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
        xd = x.detach().double().requires_grad_()
        ref, n_ref = reference.spike_linear(xd.reshape(-1, size), wd, bd, m, count=True)
        ref = ref.reshape(out.shape)
        _close(out, ref, dtype, what)
        assert n == int(n_ref), what
        go = torch.randn(out.shape, generator=rng).to(DEV, dtype)
        out.backward(go)
        ref.backward(go.double())
        _close(xg.grad, xd.grad, dtype, what + " grad spikes")
        _close(w.grad, wd.grad, dtype, what + " grad weight")
        _close(b.grad, bd.grad, dtype, what + " grad bias")


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_linear_dense_weight_grad(rng, dtype):
    x, w, b, m = _linear_case(rng, 4, 5, 70, 33, 0.3, 0.5, dtype)
    w.requires_grad_(True)
    out = ss.functional.spike_linear(x, w, b, mask=m, backend="cuda", dense_weight_grad=True)
    go = torch.randn(out.shape, generator=rng).to(DEV, dtype)
    out.backward(go)
    expected = go.double().reshape(-1, 33).t() @ x.double().reshape(-1, 70)  # pruned entries included
    _close(w.grad, expected, dtype)
    assert bool((w.grad[~m] != 0).any())


_CONV_GPU = [  # cin, cout, h, w, k, stride, padding, dilation, groups
    (3, 4, 9, 9, 3, 1, 1, 1, 1),
    (8, 16, 10, 7, 3, 2, 1, 1, 2),
    (6, 6, 8, 8, 3, 1, 2, 2, 6),          # depthwise, dilated
    (127, 65, 5, 5, 1, 1, 0, 1, 1),
    (16, 130, 6, 6, 3, 1, 1, 1, 1),
    (4, 8, 3, 3, 5, 1, 2, 1, 4),
    (1, 1, 1, 1, 1, 1, 0, 1, 1),
]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", _CONV_GPU, ids=[str(c) for c in _CONV_GPU])
def test_gpu_conv_grid(rng, dtype, case):
    cin, cout, h, w_, k, stride, padding, dilation, groups = case
    for (rate, density), t in itertools.product(((0.0, 1.0), (0.05, 0.5), (0.5, 0.1), (1.0, 0.0), (0.5, 1.0)),
                                                TIMESTEPS):
        what = f"rate={rate} density={density} T={t}"
        x = _to(rand_spikes((t, 2, cin, h, w_), rate, rng), dtype)
        w = _to(torch.randn((cout, cin // groups, k, k), generator=rng) / math.sqrt(cin // groups * k * k), dtype)
        b = _to(torch.randn((cout,), generator=rng), dtype)
        m = _to(rand_mask(w.shape, density, rng))
        xg, wg, bg = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
        out, n = ss.functional.spike_conv2d(xg, wg, bg, stride, padding, dilation, groups, mask=m, backend="cuda",
                                            return_count=True)
        xd, wd, bd = (x.double().requires_grad_(), w.double().requires_grad_(), b.double().requires_grad_())
        ref, n_ref = reference.spike_conv2d(xd.flatten(0, 1), wd, bd, m, (stride, stride), (padding, padding),
                                            (dilation, dilation), groups, count=True)
        ref = ref.reshape(out.shape)
        _close(out, ref, dtype, what)
        assert n == int(n_ref), what
        go = torch.randn(out.shape, generator=rng).to(DEV, dtype)
        out.backward(go)
        ref.backward(go.double())
        _close(xg.grad, xd.grad, dtype, what + " grad spikes")
        _close(wg.grad, wd.grad, dtype, what + " grad weight")
        _close(bg.grad, bd.grad, dtype, what + " grad bias")


@gpu
def test_gpu_conv_dense_weight_grad(rng):
    x = _to(rand_spikes((2, 3, 4, 6, 6), 0.4, rng))
    w = _to(torch.randn((5, 4, 3, 3), generator=rng)).requires_grad_()
    m = _to(rand_mask((5, 4, 3, 3), 0.5, rng))
    out = ss.functional.spike_conv2d(x, w, None, 1, 1, mask=m, backend="cuda", dense_weight_grad=True)
    go = torch.randn(out.shape, generator=rng).to(DEV)
    out.backward(go)
    wd = w.detach().double().requires_grad_()
    F.conv2d(x.double().flatten(0, 1), wd, None, 1, 1).backward(go.double().flatten(0, 1))
    _close(w.grad, wd.grad, torch.float32)


@gpu
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,), ids=str)
@pytest.mark.parametrize("t", TIMESTEPS)
def test_gpu_lif(rng, dtype, t):
    """Fused LIF vs the reference loop on the same device and dtype: spikes and v exactly (the
    kernel replays torch's CUDA rounding), gradients to rounding, for every option."""
    n = 1000
    for v_reset, decay, detach, name in itertools.product((0.0, None, -0.3), (True, False), (False, True), sg.NAMES):
        what = f"v_reset={v_reset} decay={decay} detach={detach} {name}"
        x = (torch.randn((t, 4, n // 4), generator=rng) * 1.5 + 0.6).to(DEV, dtype)
        v0 = (torch.randn((4, n // 4), generator=rng) * 0.3).to(DEV, dtype)
        xg, v0g = x.clone().requires_grad_(), v0.clone().requires_grad_()
        s, vl = ss.functional.lif(xg, v0g, tau=1.7, v_reset=v_reset, decay_input=decay, detach_reset=detach,
                                  surrogate=name, backend="cuda")
        xr, v0r = x.clone().requires_grad_(), v0.clone().requires_grad_()
        sr, vlr = ss.functional.lif(xr, v0r, tau=1.7, v_reset=v_reset, decay_input=decay, detach_reset=detach,
                                    surrogate=name, backend="reference")
        # Neurons whose spike trains agree over all T. Exact for fp32/fp64; for fp16/bf16 a rare
        # flip is tolerated should a rounding step differ from torch's, and such neurons are
        # left out of the value and gradient comparisons (their trajectories diverge).
        same = (s == sr).flatten(1).all(0)
        if dtype in (torch.float32, torch.float64):
            assert bool(same.all()), what
        else:
            assert same.float().mean().item() >= 0.99, what
        _close(vl.flatten()[same], vlr.detach().flatten()[same], dtype, what)
        gs = torch.randn(s.shape, generator=rng).to(DEV, dtype)
        gv = torch.randn(vl.shape, generator=rng).to(DEV, dtype)
        torch.autograd.backward([s, vl], [gs, gv])
        torch.autograd.backward([sr, vlr], [gs, gv])
        _close(xg.grad.flatten(1)[:, same], xr.grad.flatten(1)[:, same], dtype, what + " grad x", loose=True)
        _close(v0g.grad.flatten()[same], v0r.grad.flatten()[same], dtype, what + " grad v0", loose=True)


@gpu
def test_gpu_lif_v0_none_and_no_grad(rng):
    x = (torch.randn((4, 3, 7), generator=rng) + 0.5).to(DEV)
    s, v = ss.functional.lif(x, backend="cuda")
    sr, vr_ = ss.functional.lif(x, backend="reference")
    assert torch.equal(s, sr) and torch.equal(v, vr_)
    s, v, h = ss.functional.lif_with_h(x, backend="cuda", return_h=True)
    _, _, hr = ss.functional.lif_with_h(x, backend="reference", return_h=True)
    assert torch.equal(h, hr)


@gpu
def test_gpu_edges_empty_and_zero():
    w = torch.randn(5, 4, device=DEV)
    out, n = ss.functional.spike_linear(torch.zeros(0, 4, device=DEV), w, backend="cuda", return_count=True)
    assert out.shape == (0, 5) and n == 0
    out = ss.functional.spike_linear(torch.zeros(3, 4, device=DEV), w, torch.ones(5, device=DEV), backend="cuda")
    assert torch.equal(out, torch.ones(3, 5, device=DEV))
    s, v, h = torch.ops.snnsparse.lif_fwd(torch.zeros(0, 6, device=DEV), torch.ones(6, device=DEV), 2.0, 1.0,
                                          0.0, True, False, "sigmoid", 4.0, True)
    assert s.shape == (0, 6) and h.shape == (0, 6) and torch.equal(v, torch.ones(6, device=DEV))
    gx, gv0, _ = torch.ops.snnsparse.lif_bwd(torch.zeros(0, 6, device=DEV), torch.ones(6, device=DEV), None,
                                          torch.zeros(0, 6, device=DEV), 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0)
    assert gx.shape == (0, 6) and torch.equal(gv0, torch.ones(6, device=DEV))
    out = ss.functional.spike_conv2d(torch.ones(1, 2, 3, 3, device=DEV),
                                     torch.ones(4, 2, 3, 3, device=DEV), padding=1, backend="cuda",
                                     mask=torch.zeros(4, 2, 3, 3, dtype=torch.bool, device=DEV))
    assert torch.equal(out, torch.zeros_like(out))


@gpu
@pytest.mark.parametrize("t,b,k,m", [(4, 64, 300, 1000), (4, 2, 4096, 64), (1, 1, 2048, 3)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_linear_shapes_and_reduction_split(rng, t, b, k, m, dtype):
    """Many pixel and channel tiles; and grids small enough that the forward splits its reduction
    over grid.z (fp32 partials summed on the host, bias added once)."""
    x, w, bb, mk = _linear_case(rng, t, b, k, m, 0.05, 0.5, dtype)
    out, n = ss.functional.spike_linear(x, w, bb, mask=mk, backend="cuda", return_count=True)
    ref, n_ref = reference.spike_linear(x.double().reshape(-1, k), w.double(), bb.double(), mk, count=True)
    _close(out.reshape(-1, m), ref, dtype)
    assert n == int(n_ref)


@gpu
def test_gpu_argument_checks():
    """Bad arguments raise with a message naming the argument (TypeError for dtypes, ValueError for
    values, RuntimeError otherwise, as the CPU kernels do)."""
    errors = (RuntimeError, TypeError, ValueError)
    w = torch.randn(5, 4, device=DEV)
    x = torch.ones(3, 4, device=DEV)
    with pytest.raises(errors, match="mask"):
        torch.ops.snnsparse.spike_linear_fwd(x, w, None, torch.ones(5, 3, dtype=torch.bool, device=DEV), False,
                                             False)
    with pytest.raises(errors, match="bias"):
        torch.ops.snnsparse.spike_linear_fwd(x, w, torch.ones(4, device=DEV), None, False, False)
    with pytest.raises(errors, match="spikes"):
        torch.ops.snnsparse.spike_linear_fwd(x.half(), w, None, None, False, False)
    with pytest.raises(errors, match="channels|groups"):
        torch.ops.snnsparse.spike_conv2d_fwd(torch.ones(1, 3, 4, 4, device=DEV), torch.ones(4, 1, 1, 1, device=DEV),
                                             None, None, [1, 1], [0, 0], [1, 1], 2, False, False)
    with pytest.raises(errors, match="surrogate"):
        torch.ops.snnsparse.lif_bwd(torch.ones(2, 3, device=DEV), None, None, torch.ones(2, 3, device=DEV), 2.0,
                                    1.0, 0.0, True, False, "nope", 1.0)
    with pytest.raises(errors, match="v0"):
        torch.ops.snnsparse.lif_fwd(torch.ones(2, 3, device=DEV), torch.ones(4, device=DEV), 2.0, 1.0, 0.0, True,
                                    False, "sigmoid", 4.0, False)


@gpu
def test_gpu_current_stream(rng):
    """Kernels run on the current stream: results are right when read after that stream only."""
    x, w, b, m = _linear_case(rng, 4, 8, 256, 128, 0.2, 0.5, torch.float32)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out, n = ss.functional.spike_linear(x, w, b, mask=m, backend="cuda", return_count=True)
    stream.synchronize()
    ref, n_ref = reference.spike_linear(x.double().reshape(-1, 256), w.double(), b.double(), m, count=True)
    _close(out.reshape(-1, 128), ref, torch.float32)
    assert n == int(n_ref)


@gpu
def test_gpu_gradcheck_float64(rng):
    x = _to(rand_spikes((6, 9), 0.5, rng), torch.float64)
    w = _to(torch.randn((5, 9), generator=rng), torch.float64).requires_grad_()
    b = _to(torch.randn((5,), generator=rng), torch.float64).requires_grad_()
    m = _to(rand_mask((5, 9), 0.5, rng))
    assert torch.autograd.gradcheck(lambda w_, b_: ss.functional.spike_linear(x, w_, b_, mask=m, backend="cuda"),
                                    (w, b))
    xc = _to(rand_spikes((2, 4, 5, 5), 0.5, rng), torch.float64)
    wc = _to(torch.randn((6, 2, 3, 3), generator=rng), torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda w_: ss.functional.spike_conv2d(xc, w_, None, 1, 1, 1, 2, backend="cuda"), (wc,))


def _opcheck_cases(gen):
    x = _to(rand_spikes((6, 9), 0.5, gen))
    w = _to(torch.randn((5, 9), generator=gen))
    b = _to(torch.randn((5,), generator=gen))
    m = _to(rand_mask((5, 9), 0.5, gen))
    go = _to(torch.randn((6, 5), generator=gen))
    xc = _to(rand_spikes((2, 4, 6, 6), 0.5, gen))
    wc = _to(torch.randn((6, 2, 3, 3), generator=gen))
    mc = _to(rand_mask((6, 2, 3, 3), 0.5, gen))
    goc = _to(torch.randn((2, 6, 3, 3), generator=gen))
    xs = _to(torch.randn((4, 10), generator=gen))
    v0 = _to(torch.zeros(10))
    h = _to(torch.randn((4, 10), generator=gen) + 1.0)
    ops = torch.ops.snnsparse
    return [
        (ops.spike_linear_fwd.default, (x, w.requires_grad_(), b, m, True, False)),
        (ops.spike_linear_bwd.default, (go, x, w.detach(), m, True, True, False)),
        (ops.spike_conv2d_fwd.default, (xc, wc.requires_grad_(), None, mc, [2, 2], [1, 1], [1, 1], 2, True, True)),
        (ops.spike_conv2d_bwd.default, (goc, xc, wc.detach(), mc, [2, 2], [1, 1], [1, 1], 2, True, True, True)),
        (ops.lif_fwd.default, (xs, v0, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True)),
        (ops.lif_bwd.default, (torch.ones_like(h), None, torch.ones_like(h), h, 2.0, 1.0, None, False, True, "atan",
                                 2.0)),
        (ops.lif_fwd.default, (xs, v0, 0.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True, "if", None)),
        (ops.lif_fwd.default, (xs, v0, 0.0, 1.0, None, False, False, "atan", 2.0, True, "plif",
                               _to(torch.tensor(0.4)).requires_grad_())),
        (ops.lif_bwd.default, (torch.ones_like(h), torch.ones_like(v0), None, h, 0.0, 1.0, -0.1, True, False, "erf",
                               2.0, "plif", _to(torch.tensor(0.4)), xs.detach(), v0)),
    ]


@gpu
def test_gpu_opcheck(rng):
    for op, args in _opcheck_cases(rng):
        torch.library.opcheck(op, args)


def test_cuda_backend_reports_why_unavailable():
    """Without a CUDA build or device, the backend says why; it never claims CPU tensors."""
    from snnsparse.ops import cuda as cuda_backend

    reason = cuda_backend.supports(torch.device("cpu"))
    assert isinstance(reason, str) and reason
    if _ext.build_info() == "cpu":
        assert "without CUDA" in cuda_backend.unavailable_reason()
    assert ss.backends.gpu_rule is cuda_backend.gpu_rule
    assert cuda_backend.gpu_rule("spike_linear", n=8, k=16, m=4) in ("cuda", "triton")
