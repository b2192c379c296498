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
from .registry import call, require_cpp

OPS = torch.ops.snnsparse


def _nacc_fake(like):
    return like.new_empty((), dtype=torch.int64)


# Spike dtypes the kernels read as they are (one byte per spike, no float copy), besides the weight's own.
BYTE_SPIKES = (torch.bool, torch.uint8)


def check_spike_dtype(spikes, weight):
    """The spike ops' dtype rule (every namespace, fake and kernel alike): spikes are bool, uint8 or of the
    weight's dtype; the output has the weight's dtype."""
    torch._check(spikes.dtype == weight.dtype or spikes.dtype in BYTE_SPIKES,
                 lambda: f"spikes must be bool, uint8 or the weight's dtype {weight.dtype}, got {spikes.dtype}")


def _fwd_fake(spikes, weight, bias, mask, count, dense_weight_grad):
    check_spike_dtype(spikes, weight)
    return weight.new_empty((spikes.shape[0], weight.shape[0])), _nacc_fake(spikes)


def _fwd_packed_fake(spikes, weight, bias, mask, fmt, packed, count, dense_weight_grad):
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
    save_spike_ctx(ctx, inputs, inputs[7])
    ctx.npacked = len(inputs[5])


def _backward_for(ns: str, packed: bool):
    """The one backward body of spike_linear, for the ops of namespace `ns` (its own bwd kernel)."""
    def backward(ctx, grad_out, _grad_n):
        grads = spike_backward(ctx, grad_out, getattr(torch.ops, ns).spike_linear_bwd, 0)
        if packed:  # mask, format, packed, count, dense_weight_grad
            return grads + (None, None, [None] * ctx.npacked, None, None)
        return grads + (None, None, None)  # mask, count, dense_weight_grad
    return backward


def register_spike_op(op: str, ns: str, fakes, backward_for, setups):
    """Fake kernels and autograd of one spike op (`op` = "spike_linear" / "spike_conv2d") in namespace
    `ns`: fakes = (fwd, bwd, fwd_packed), setups = (fwd, fwd_packed). The packed forward exists for the
    CPU formats only (namespace "snnsparse")."""
    lib = torch.library
    lib.register_fake(f"{ns}::{op}_fwd", fakes[0])
    lib.register_fake(f"{ns}::{op}_bwd", fakes[1])
    lib.register_autograd(f"{ns}::{op}_fwd", backward_for(ns, False), setup_context=setups[0])
    if ns == "snnsparse":
        lib.register_fake(f"{ns}::{op}_fwd_packed", fakes[2])
        lib.register_autograd(f"{ns}::{op}_fwd_packed", backward_for(ns, True), setup_context=setups[1])


def register(ns: str = "snnsparse"):
    """Fake kernels and autograd of the spike_linear ops of namespace `ns` ("snnsparse" for the C++/CUDA
    kernels, "snnsparse_triton" for Triton: one schema, so one fake and one backward for both)."""
    register_spike_op("spike_linear", ns, (_fwd_fake, _bwd_fake, _fwd_packed_fake), _backward_for,
                      (_setup, _setup_packed))


def forward(x, weight, bias, mask, *, count=False, dense_weight_grad=False, ns: str = "snnsparse"):
    """out [N, M], n_acc (0-dim int64, or None unless count) on the kernels of namespace `ns`."""
    out, n = call(getattr(torch.ops, ns).spike_linear_fwd, x, weight, bias, mask, bool(count), bool(dense_weight_grad))
    return out, (n if count else None)


def pack(weight: torch.Tensor, mask: Optional[torch.Tensor], fmt: int = 0) -> PackedWeight:
    """Pack (weight, mask) once (CPU kernels). fmt 0 chooses by density as the core op does;
    1 = dense rows [W^T masked (K x M), colnnz]; 2 = compressed rows [rowptr, idx, val, colnnz]."""
    require_cpp(f"{__name__}.pack")
    with torch.no_grad():
        chosen, tensors = OPS.spike_linear_pack(weight.detach(), mask, int(fmt))
    return PackedWeight.of("linear", chosen, tensors, weight, mask)


def forward_packed(x, packed: PackedWeight, bias=None, *, count=False):
    """Inference on a packing made by pack(): the values come from the snapshot only (no weight is
    read, none can be stale); no gradient reaches the weight."""
    if packed.kind != "linear":
        raise ValueError(f"spike_linear: packed must be a linear PackedWeight, got {packed.kind}")
    packed.check_inference(x)
    out, n = call(OPS.spike_linear_fwd_packed, x, packed.placeholder(), bias, None, int(packed.format),
                                         list(packed.tensors), bool(count), False)
    return out, (n if count else None)
