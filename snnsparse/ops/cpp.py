"""cpp backend: the CPU kernels of snnsparse._C (csrc/cpu/*.cpp), OpenMP + AVX-512/AVX2.

This module registers, for every snnsparse op with a CPU kernel, a fake (meta) kernel and
autograd (torch.library.register_fake / register_autograd), and implements the backend
contract of snnsparse.backends (spike_linear, spike_conv2d, lif, supports).

Weights are packed once per (weight version, mask version, storage) into the kernels' format
and cached here (`_packed`); the cache is never the source of truth: weight and mask are
passed to every op too (for autograd and fake kernels), and any in-place change of either
bumps its version and repacks. Writes through `tensor.data` do not bump the version counter
(that is torch's documented behaviour of .data); after such a write call clear_cache().

dtypes: the kernels take float32 and float64 (float64 is for gradcheck). float16/bfloat16
inputs are upcast to float32 here and the result is cast back (the ops themselves refuse
them with a TypeError).

Formats (dense rows/slabs vs compressed rows) are chosen by mask density with the crossovers
below, measured with bench/sweep.py on the 2-core AMD EPYC (Zen 5) box (bench/RESULTS.md).
"""
from __future__ import annotations

import weakref
from typing import List, Optional

import torch

from .. import _ext

# Linear: dense rows (input-stationary, density-independent cost ~ events x M) vs compressed
# rows (output-stationary masked adds, cost ~ nnz x ceil(N/64)). Measured crossover at
# spike rate 0.1, N=64, 4096x4096: see bench/RESULTS.md ("format crossover").
LINEAR_DENSE_MIN = 0.5
# Conv: dense channels-last slabs (SIMD adds of Cout vectors) vs compressed per-channel synapse
# lists (scalar adds straight into NCHW). Measured crossover: see bench/RESULTS.md.
CONV_DENSE_MIN = 0.05

_LOW = (torch.float16, torch.bfloat16)
# The kernels refuse non-binary spikes themselves while bit-packing them (same pass), so
# snnsparse.functional skips its own check for this backend.
CHECKS_BINARY = True


def unavailable_reason() -> Optional[str]:
    reason = _ext.load()
    if reason:
        return reason
    if not hasattr(torch.ops.snnsparse, "spike_linear_fwd_packed"):
        return "snnsparse._C is an old build without the cpp backend ops; rebuild it (make install)"
    return None


def supports(device: torch.device):
    if device.type != "cpu":
        return f"the cpp backend runs on CPU tensors only (got {device})"
    return True


# ----------------------------------------------------------------------------------------------
# weight packing (mirrors linear_pack / conv_pack in csrc/cpu/*.cpp) and its cache
# ----------------------------------------------------------------------------------------------
def _density(weight: torch.Tensor, mask: Optional[torch.Tensor]) -> float:
    if mask is None or mask.numel() == 0:
        return 1.0
    return float(mask.sum()) / mask.numel()


def pack_linear(weight: torch.Tensor, mask: Optional[torch.Tensor], fmt: int = 0) -> List[torch.Tensor]:
    """fmt 1: [W^T masked (K x M), colnnz]; 2: [rowptr, idx int16/int32, val, colnnz]; 0: by density."""
    with torch.no_grad():
        w = weight.detach().contiguous()
        if fmt == 0:
            fmt = 1 if _density(w, mask) >= LINEAR_DENSE_MIN else 2
        M, K = w.shape
        m = mask if mask is not None else torch.ones_like(w, dtype=torch.bool)
        colnnz = m.sum(0, dtype=torch.int64).contiguous()
        if fmt == 1:
            wt = (w * m if mask is not None else w).t().contiguous()
            return [wt, colnnz]
        rowptr = torch.zeros(M + 1, dtype=torch.int64)
        rowptr[1:] = m.sum(1, dtype=torch.int64).cumsum(0)
        idx = m.nonzero()[:, 1].to(torch.int16 if K < 65536 else torch.int32).contiguous()
        val = w.masked_select(m).contiguous()
        return [rowptr, idx, val, colnnz]


def pack_conv(weight: torch.Tensor, mask: Optional[torch.Tensor], groups: int, fmt: int = 0) -> List[torch.Tensor]:
    """fmt 1: [slabs (Cin x kh*kw x Cout/g, masked), tapnnz]; 2: [rowptr, idx, val, tapnnz];
    3 (groups == 1): [blocks (Cout/64 x kh*kw x Cin x 64, masked, zero-padded), tapnnz];
    4 (float32, stride 1, width <= 64, AVX-512): [rowptr (Cout+1), idx, val, tapnnz, marker];
    0: by density (formats 3/1 when dense, 2 when sparse; spike_conv2d picks 4 when it applies)."""
    with torch.no_grad():
        w = weight.detach().contiguous()
        O, Cg, kh, kw = w.shape
        if fmt == 0:
            fmt = (3 if groups == 1 and Cg <= 65535 else 1) if _density(w, mask) >= CONV_DENSE_MIN else 2
        KK, Og, C = kh * kw, O // groups, Cg * groups
        m = mask if mask is not None else torch.ones_like(w, dtype=torch.bool)

        def slabs(t):
            return t.reshape(groups, Og, Cg, KK).permute(0, 2, 3, 1).contiguous().reshape(C, KK, Og)

        ms = slabs(m)
        tapnnz = ms.sum(2, dtype=torch.int64).contiguous()
        if fmt == 1:
            return [slabs(w * m if mask is not None else w), tapnnz]
        if fmt == 4:  # CSR of the weight viewed as [Cout, Cin/g*kh*kw] (+ a marker tensor)
            m2 = m.reshape(O, Cg * KK)
            rowptr = torch.zeros(O + 1, dtype=torch.int64)
            rowptr[1:] = m2.sum(1, dtype=torch.int64).cumsum(0)
            idx = m2.nonzero()[:, 1].to(torch.int16 if Cg * KK <= 32768 else torch.int32).contiguous()
            val = w.reshape(O, Cg * KK).masked_select(m2).contiguous()
            return [rowptr, idx, val, tapnnz, torch.full((1,), 4, dtype=torch.int64)]
        if fmt == 3:  # groups == 1: [nch, kh*kw, Cin, 64] output-stationary register blocks, zero-padded Cout
            nch = (O + 63) // 64
            pad = torch.zeros(nch * 64, C, KK, dtype=w.dtype)
            pad[:O] = (w * m if mask is not None else w).reshape(O, C, KK)
            return [pad.reshape(nch, 64, C, KK).permute(0, 3, 2, 1).contiguous(), tapnnz]
        ms2 = ms.reshape(C, KK * Og)
        rowptr = torch.zeros(C + 1, dtype=torch.int64)
        rowptr[1:] = ms2.sum(1, dtype=torch.int64).cumsum(0)
        idx = ms2.nonzero()[:, 1].to(torch.int16 if KK * Og <= 32768 else torch.int32).contiguous()
        val = slabs(w).reshape(C, KK * Og).masked_select(ms2).contiguous()
        return [rowptr, idx, val, tapnnz]


def _cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f" in f.read()
    except OSError:
        return False


# The kernels are built with -march=native (setup.py), so AVX-512 code exists where the CPU has it.
HAS_AVX512 = _cpu_has_avx512()


def conv_format(weight, mask, groups, stride, width, out_width) -> int:
    """Weight format for a conv call: dense blocks/slabs above CONV_DENSE_MIN, else compressed rows
    (per output channel with spike-row masks where it applies, else per input channel)."""
    if _density(weight, mask) >= CONV_DENSE_MIN:
        return 3 if groups == 1 and weight.shape[1] <= 65535 else 1
    if (HAS_AVX512 and weight.dtype == torch.float32 and tuple(stride) == (1, 1) and width <= 64
            and out_width <= 64):
        return 4
    return 2


_CACHE: dict = {}
stats = {"hits": 0, "packs": 0}


def fmt_key(fmt):
    return getattr(fmt, "key", None)


def _key(kind, weight, mask, extra):
    return (kind, extra, weight._version, weight.data_ptr(), weight.dtype, tuple(weight.shape), weight.stride(),
            None if mask is None else (id(mask), mask._version, mask.data_ptr()))


def _packed(kind: str, weight: torch.Tensor, mask: Optional[torch.Tensor], groups: int = 1, fmt=None):
    """Packed weight for `kind` ("linear"/"conv"), cached per (weight, mask) versions and storage
    for inference (no grad needed for the weight); packed per call when the weight needs grad.

    fmt: a callable returning the conv format (evaluated only when packing)."""
    if kind == "linear":
        pack = lambda: pack_linear(weight, mask)  # noqa: E731
    else:
        pack = lambda: pack_conv(weight, mask, groups, fmt() if fmt else 0)  # noqa: E731
    if torch.is_grad_enabled() and weight.requires_grad:
        # Training (or gradcheck): the weight changes every step anyway, so a cache would rarely hit,
        # and writes through .data (gradcheck's perturbations, some training code) do not bump the
        # version the cache is keyed on. Packing per call keeps every gradient path exact.
        stats["packs"] += 1
        return pack()
    try:
        key = _key(kind, weight, mask, (groups, LINEAR_DENSE_MIN, CONV_DENSE_MIN, fmt_key(fmt)))
    except Exception:  # tensors without storage (fake/functional): no cache
        stats["packs"] += 1
        return pack()
    wid = id(weight)
    ent = _CACHE.get((kind, wid))
    if ent is not None and ent[0]() is weight and ent[1] == key:
        stats["hits"] += 1
        return ent[2]
    stats["packs"] += 1
    packed = pack()

    def _drop(ref, k=(kind, wid)):
        cur = _CACHE.get(k)
        if cur is not None and cur[0] is ref:
            _CACHE.pop(k, None)

    _CACHE[(kind, wid)] = (weakref.ref(weight, _drop), key, packed)
    return packed


def clear_cache():
    _CACHE.clear()


# ----------------------------------------------------------------------------------------------
# fake kernels and autograd
# ----------------------------------------------------------------------------------------------
def _nacc_fake(like):
    return like.new_empty((), dtype=torch.int64)


def _conv_out_hw(x, weight, stride, padding, dilation):
    kh, kw = weight.shape[2], weight.shape[3]
    ho = (x.shape[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (x.shape[3] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo


def _linear_fwd_fake(spikes, weight, bias, mask, count):
    torch._check(spikes.dtype == weight.dtype, lambda: "spikes and weight must have the same dtype")
    return spikes.new_empty((spikes.shape[0], weight.shape[0])), _nacc_fake(spikes)


def _linear_fwd_packed_fake(spikes, weight, bias, mask, packed, count, dense_weight_grad):
    return _linear_fwd_fake(spikes, weight, bias, mask, count)


def _linear_bwd_fake(grad_out, spikes, weight, mask, need_input_grad, need_weight_grad, dense_weight_grad):
    gi = spikes.new_empty(spikes.shape) if need_input_grad else weight.new_empty((0,))
    gw = weight.new_empty(weight.shape) if need_weight_grad else weight.new_empty((0,))
    return gi, gw


def _conv_fwd_fake(spikes, weight, bias, mask, stride, padding, dilation, groups, count):
    torch._check(spikes.dtype == weight.dtype, lambda: "spikes and weight must have the same dtype")
    ho, wo = _conv_out_hw(spikes, weight, stride, padding, dilation)
    return spikes.new_empty((spikes.shape[0], weight.shape[0], ho, wo)), _nacc_fake(spikes)


def _conv_fwd_packed_fake(spikes, weight, bias, mask, packed, stride, padding, dilation, groups, count,
                          dense_weight_grad):
    return _conv_fwd_fake(spikes, weight, bias, mask, stride, padding, dilation, groups, count)


def _conv_bwd_fake(grad_out, spikes, weight, mask, stride, padding, dilation, groups, need_input_grad,
                   need_weight_grad, dense_weight_grad):
    gi = spikes.new_empty(spikes.shape) if need_input_grad else weight.new_empty((0,))
    gw = weight.new_empty(weight.shape) if need_weight_grad else weight.new_empty((0,))
    return gi, gw


def _lif_fwd_fake(x_seq, v0, tau, v_threshold, v_reset, decay_input, save_h):
    h = torch.empty_like(x_seq) if save_h else x_seq.new_empty((0,))
    return torch.empty_like(x_seq), torch.empty_like(v0), h


def _lif_fwd_sg_fake(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha):
    return torch.empty_like(x_seq), torch.empty_like(v0), torch.empty_like(x_seq)


def _lif_bwd_fake(grad_spikes, grad_v_last, h_seq, tau, v_threshold, v_reset, decay_input, detach_reset,
                  surrogate, alpha):
    return torch.empty_like(h_seq), h_seq.new_empty((h_seq.shape[1],))


def _lif_bwd_h_fake(grad_spikes, grad_v_last, grad_h, h_seq, tau, v_threshold, v_reset, decay_input,
                    detach_reset, surrogate, alpha):
    return torch.empty_like(h_seq), h_seq.new_empty((h_seq.shape[1],))


# --- autograd: linear ---
def _linear_setup(ctx, inputs, output, dwg=False):
    ctx.set_materialize_grads(False)
    spikes, weight, bias, mask = inputs[:4]
    ctx.save_for_backward(spikes, weight, mask)
    ctx.has_bias = bias is not None
    ctx.dwg = dwg


def _linear_setup_core(ctx, inputs, output):
    _linear_setup(ctx, inputs, output, False)


def _linear_setup_packed(ctx, inputs, output):
    _linear_setup(ctx, inputs, output, bool(inputs[6]))
    ctx.npacked = len(inputs[4])


def _spike_backward(ctx, grad_out, bwd, bias_dims):
    """(grad spikes, grad weight, grad bias, None) of a spike linear/conv from its bwd op
    `bwd(grad_out, spikes, weight, mask, need_x, need_w)`; gradients not needed are None."""
    spikes, weight, mask = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_b = ctx.has_bias and ctx.needs_input_grad[2]
    if grad_out is None:
        return None, None, None, None
    gi = gw = gb = None
    if need_x or need_w:
        gi, gw = bwd(grad_out, spikes, weight, mask, need_x, need_w)
        gi = gi if need_x else None
        gw = gw if need_w else None
    if need_b:
        gb = grad_out.sum(bias_dims)
    return gi, gw, gb, None


def _linear_backward(ctx, grad_out, _grad_n):
    return _spike_backward(ctx, grad_out, lambda g, s, w, m, nx, nw: torch.ops.snnsparse.spike_linear_bwd(
        g, s, w, m, nx, nw, ctx.dwg), 0)


def _linear_backward_packed(ctx, grad_out, grad_n):
    return _linear_backward(ctx, grad_out, grad_n) + ([None] * ctx.npacked, None, None)


def _linear_backward_core(ctx, grad_out, grad_n):
    return _linear_backward(ctx, grad_out, grad_n) + (None,)


# --- autograd: conv ---
def _conv_setup(ctx, inputs, output, off, dwg):
    ctx.set_materialize_grads(False)
    spikes, weight, bias, mask = inputs[:4]
    stride, padding, dilation, groups = inputs[off:off + 4]
    ctx.save_for_backward(spikes, weight, mask)
    ctx.has_bias = bias is not None
    ctx.geom = (list(stride), list(padding), list(dilation), int(groups))
    ctx.dwg = dwg


def _conv_setup_core(ctx, inputs, output):
    _conv_setup(ctx, inputs, output, 4, False)


def _conv_setup_packed(ctx, inputs, output):
    _conv_setup(ctx, inputs, output, 5, bool(inputs[10]))
    ctx.npacked = len(inputs[4])


def _conv_backward(ctx, grad_out, _grad_n):
    stride, padding, dilation, groups = ctx.geom
    return _spike_backward(ctx, grad_out, lambda g, s, w, m, nx, nw: torch.ops.snnsparse.spike_conv2d_bwd(
        g, s, w, m, stride, padding, dilation, groups, nx, nw, ctx.dwg), (0, 2, 3))


def _conv_backward_core(ctx, grad_out, grad_n):
    return _conv_backward(ctx, grad_out, grad_n) + (None,) * 5


def _conv_backward_packed(ctx, grad_out, grad_n):
    return _conv_backward(ctx, grad_out, grad_n) + ([None] * ctx.npacked,) + (None,) * 6


# --- autograd: lif ---
def _lif_setup_sg(ctx, inputs, output):
    # Unused output gradients (v_last, h_seq) arrive as None instead of materialised zeros:
    # measured 27 ms of zero fills per step on [8, 64, 16384] otherwise.
    ctx.set_materialize_grads(False)
    _, _, tau, vth, vreset, decay, detach, sur, alpha = inputs
    ctx.save_for_backward(output[2])
    ctx.params = (tau, vth, vreset, decay, detach, sur, alpha)


def _lif_backward_sg(ctx, grad_s, grad_v, grad_h):
    (h,) = ctx.saved_tensors
    if grad_s is None:
        grad_s = torch.zeros_like(h)
    gx, gv0 = torch.ops.snnsparse.lif_bwd_h(grad_s, grad_v, grad_h, h, *ctx.params)
    return (gx, gv0) + (None,) * 7


def _lif_setup_core(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    _, _, tau, vth, vreset, decay, save_h = inputs
    # The core lif_fwd has no surrogate argument: its autograd uses SpikingJelly's LIFNode defaults
    # (sigmoid, alpha=4, detach_reset=False). snnsparse.ops.cpp.lif uses lif_fwd_sg instead.
    ctx.save_for_backward(output[2] if save_h else None)
    ctx.save_h = save_h
    ctx.params = (tau, vth, vreset, decay, False, "sigmoid", 4.0)


def _lif_backward_core(ctx, grad_s, grad_v, grad_h):
    (h,) = ctx.saved_tensors
    if not ctx.save_h:
        raise RuntimeError("snnsparse::lif_fwd: backward needs h_seq; call it with save_h=True")
    if grad_s is None:
        grad_s = torch.zeros_like(h)
    gx, gv0 = torch.ops.snnsparse.lif_bwd_h(grad_s, grad_v, grad_h, h, *ctx.params)
    return (gx, gv0) + (None,) * 5


_REGISTERED = False


def ensure_registered():
    """Register fake kernels and autograd for the snnsparse ops (once; safe to call again).

    Fake kernels and autograd are device-independent, so the CUDA backend shares these."""
    global _REGISTERED
    if _REGISTERED or _ext.load() is not None:
        return
    _REGISTERED = True
    lib = torch.library
    fakes = {
        "spike_linear_fwd": _linear_fwd_fake, "spike_linear_fwd_packed": _linear_fwd_packed_fake,
        "spike_linear_bwd": _linear_bwd_fake, "spike_conv2d_fwd": _conv_fwd_fake,
        "spike_conv2d_fwd_packed": _conv_fwd_packed_fake, "spike_conv2d_bwd": _conv_bwd_fake,
        "lif_fwd": _lif_fwd_fake, "lif_fwd_sg": _lif_fwd_sg_fake, "lif_bwd": _lif_bwd_fake,
        "lif_bwd_h": _lif_bwd_h_fake,
    }
    autograds = {
        "spike_linear_fwd": (_linear_backward_core, _linear_setup_core),
        "spike_linear_fwd_packed": (_linear_backward_packed, _linear_setup_packed),
        "spike_conv2d_fwd": (_conv_backward_core, _conv_setup_core),
        "spike_conv2d_fwd_packed": (_conv_backward_packed, _conv_setup_packed),
        "lif_fwd": (_lif_backward_core, _lif_setup_core),
        "lif_fwd_sg": (_lif_backward_sg, _lif_setup_sg),
    }
    for name, fn in fakes.items():
        if not hasattr(torch.ops.snnsparse, name):
            continue
        try:
            lib.register_fake(f"snnsparse::{name}", fn)
        except RuntimeError:  # already registered (e.g. by another backend module)
            pass
    for name, (bwd, setup) in autograds.items():
        if not hasattr(torch.ops.snnsparse, name):
            continue
        try:
            lib.register_autograd(f"snnsparse::{name}", bwd, setup_context=setup)
        except RuntimeError:
            pass


ensure_registered()


# ----------------------------------------------------------------------------------------------
# backend contract (snnsparse.backends)
# ----------------------------------------------------------------------------------------------
def _up(t):
    return None if t is None else t.float()


def _use_packed_path() -> bool:
    try:
        return not torch.compiler.is_compiling()
    except Exception:
        return True


def spike_linear(x, weight, bias, mask, *, count=False, dense_weight_grad=False):
    if weight.dtype in _LOW:
        out, n = spike_linear(x.float(), weight.float(), _up(bias), mask, count=count,
                              dense_weight_grad=dense_weight_grad)
        return out.to(weight.dtype), n
    if x.dtype != weight.dtype:
        x = x.to(weight.dtype)
    if _use_packed_path():
        packed = _packed("linear", weight, mask)
        out, n = torch.ops.snnsparse.spike_linear_fwd_packed(x, weight, bias, mask, packed, count,
                                                             dense_weight_grad)
    else:
        out, n = torch.ops.snnsparse.spike_linear_fwd(x, weight, bias, mask, count)
    return out, (n if count else None)


def spike_conv2d(x, weight, bias, mask, stride, padding, dilation, groups, *, count=False,
                 dense_weight_grad=False):
    if weight.dtype in _LOW:
        out, n = spike_conv2d(x.float(), weight.float(), _up(bias), mask, stride, padding, dilation, groups,
                              count=count, dense_weight_grad=dense_weight_grad)
        return out.to(weight.dtype), n
    if x.dtype != weight.dtype:
        x = x.to(weight.dtype)
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    if _use_packed_path():
        w_in, w_out = x.shape[3], (x.shape[3] + 2 * padding[1] - dilation[1] * (weight.shape[3] - 1) - 1) // stride[1] + 1

        def fmt():
            return conv_format(weight, mask, groups, stride, w_in, w_out)

        # the format depends on the call's geometry only through "can use output-channel rows"
        fmt.key = (tuple(stride) == (1, 1) and w_in <= 64 and w_out <= 64)
        packed = _packed("conv", weight, mask, groups, fmt)
        out, n = torch.ops.snnsparse.spike_conv2d_fwd_packed(x, weight, bias, mask, packed, stride, padding,
                                                             dilation, groups, count, dense_weight_grad)
    else:
        out, n = torch.ops.snnsparse.spike_conv2d_fwd(x, weight, bias, mask, stride, padding, dilation, groups,
                                                      count)
    return out, (n if count else None)


def lif(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, return_h=False):
    if x_seq.dtype in _LOW:
        s, v, h = lif(x_seq.float(), v0.float(), tau, v_threshold, v_reset, decay_input, detach_reset,
                      surrogate, alpha, return_h)
        dt = x_seq.dtype
        return s.to(dt), v.to(dt), (None if h is None else h.to(dt))
    if v0.dtype != x_seq.dtype:
        v0 = v0.to(x_seq.dtype)
    needs_grad = torch.is_grad_enabled() and (x_seq.requires_grad or v0.requires_grad)
    if needs_grad:
        s, v, h = torch.ops.snnsparse.lif_fwd_sg(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset,
                                                 surrogate, alpha)
    else:
        s, v, h = torch.ops.snnsparse.lif_fwd(x_seq, v0, tau, v_threshold, v_reset, decay_input, bool(return_h))
    return s, v, (h if return_h else None)
