"""spike_linear: the glue of the snnsparse::spike_linear_* ops (csrc/registration.cpp), whose kernels
are csrc/cpu/linear.cpp (CPU) and csrc/cuda/spike_ops.cu (CUDA): one fake and one autograd per op,
shared by every device, and the calls the cpp and cuda backends make.

Packing: the core op spike_linear_fwd packs (weight, mask) on every call, so a forward can never
run on a packing of other values (issue 11: a cache keyed on tensor identity served stale packings
after fused optimizer steps, `.data` assignments and freed-and-reallocated masks). Owners of an
immutable snapshot of the weights pack once with `pack()` and call `forward_packed()`.
"""
from __future__ import annotations

from typing import Optional

import torch

from .packed import PackedWeight

OPS = torch.ops.snnsparse


def _nacc_fake(like):
    return like.new_empty((), dtype=torch.int64)


def _fwd_fake(spikes, weight, bias, mask, count, dense_weight_grad):
    torch._check(spikes.dtype == weight.dtype, lambda: "spikes and weight must have the same dtype")
    return spikes.new_empty((spikes.shape[0], weight.shape[0])), _nacc_fake(spikes)


def _fwd_packed_fake(spikes, weight, bias, mask, packed, count, dense_weight_grad):
    return _fwd_fake(spikes, weight, bias, mask, count, dense_weight_grad)


def _bwd_fake(grad_out, spikes, weight, mask, need_input_grad, need_weight_grad, dense_weight_grad):
    gi = spikes.new_empty(spikes.shape) if need_input_grad else weight.new_empty((0,))
    gw = weight.new_empty(weight.shape) if need_weight_grad else weight.new_empty((0,))
    return gi, gw


def save_spike_ctx(ctx, inputs, dense_weight_grad):
    """Autograd context shared by spike_linear and spike_conv2d: spikes, weight, mask and the flags."""
    ctx.set_materialize_grads(False)
    spikes, weight, bias, mask = inputs[:4]
    ctx.save_for_backward(spikes, weight, mask)
    ctx.has_bias = bias is not None
    ctx.dwg = bool(dense_weight_grad)


def spike_backward(ctx, grad_out, bwd, bias_dims):
    """(grad spikes, grad weight, grad bias) of a spike linear/conv from its bwd op
    `bwd(grad_out, spikes, weight, mask, need_x, need_w, dense_weight_grad)`; unneeded ones are None."""
    spikes, weight, mask = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_b = ctx.has_bias and ctx.needs_input_grad[2]
    if grad_out is None:
        return None, None, None
    gi = gw = gb = None
    if need_x or need_w:
        gi, gw = bwd(grad_out.contiguous(), spikes, weight, mask, need_x, need_w, ctx.dwg)
        gi = gi if need_x else None
        gw = gw if need_w else None
    if need_b:
        gb = grad_out.sum(bias_dims)
    return gi, gw, gb


def _setup(ctx, inputs, output):
    save_spike_ctx(ctx, inputs, inputs[5])


def _setup_packed(ctx, inputs, output):
    save_spike_ctx(ctx, inputs, inputs[6])
    ctx.npacked = len(inputs[4])


def _grads(ctx, grad_out):
    return spike_backward(ctx, grad_out, OPS.spike_linear_bwd, 0)


def _backward(ctx, grad_out, _grad_n):
    return _grads(ctx, grad_out) + (None, None, None)  # mask, count, dense_weight_grad


def _backward_packed(ctx, grad_out, _grad_n):
    return _grads(ctx, grad_out) + (None, [None] * ctx.npacked, None, None)


def register(lib=torch.library):
    """Fake kernels and autograd of the spike_linear ops (called once by snnsparse.ops.registry)."""
    lib.register_fake("snnsparse::spike_linear_fwd", _fwd_fake)
    lib.register_fake("snnsparse::spike_linear_fwd_packed", _fwd_packed_fake)
    lib.register_fake("snnsparse::spike_linear_bwd", _bwd_fake)
    lib.register_autograd("snnsparse::spike_linear_fwd", _backward, setup_context=_setup)
    lib.register_autograd("snnsparse::spike_linear_fwd_packed", _backward_packed, setup_context=_setup_packed)


def forward(x, weight, bias, mask, *, count=False, dense_weight_grad=False):
    """out [N, M], n_acc (0-dim int64, or None unless count) on the device's kernel."""
    out, n = OPS.spike_linear_fwd(x, weight, bias, mask, bool(count), bool(dense_weight_grad))
    return out, (n if count else None)


def pack(weight: torch.Tensor, mask: Optional[torch.Tensor], fmt: int = 0) -> PackedWeight:
    """Pack (weight, mask) once (CPU kernels). fmt 0 chooses by density as the core op does;
    1 = dense rows [W^T masked (K x M), colnnz]; 2 = compressed rows [rowptr, idx, val, colnnz]."""
    with torch.no_grad():
        tensors = OPS.spike_linear_pack(weight.detach(), mask, int(fmt))
    return PackedWeight.of("linear", tensors, weight, mask)


def forward_packed(x, packed: PackedWeight, bias=None, *, count=False):
    """Inference on a packing made by pack(): the values come from the snapshot only (no weight is
    read, none can be stale); no gradient reaches the weight."""
    if packed.kind != "linear":
        raise ValueError(f"spike_linear: packed must be a linear PackedWeight, got {packed.kind}")
    out, n = OPS.spike_linear_fwd_packed(x, packed.placeholder(), bias, None, list(packed.tensors), bool(count),
                                         False)
    return out, (n if count else None)
