"""spike_conv2d: the glue of the snnsparse::spike_conv2d_* ops (csrc/registration.cpp), whose kernels
are csrc/cpu/conv.cpp (CPU) and csrc/cuda/spike_ops.cu (CUDA): one fake and one autograd per op,
shared by every device, and the calls the cpp and cuda backends make. Packing as in
snnsparse.ops.linear: the core op packs per call; pack()/forward_packed() are for snapshots.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .linear import _nacc_fake, check_spike_dtype, register_spike_op, save_spike_ctx, spike_backward
from .packed import PackedWeight
from .registry import call, require_cpp

OPS = torch.ops.snnsparse


def output_size(h: int, w: int, kernel: Sequence[int], stride, padding, dilation):
    """Spatial output size of a conv2d (torch's formula); the one place it is written."""
    ho = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return ho, wo


def _fwd_fake(spikes, weight, bias, mask, stride, padding, dilation, groups, count, dense_weight_grad):
    check_spike_dtype(spikes, weight)
    ho, wo = output_size(spikes.shape[2], spikes.shape[3], weight.shape[2:], stride, padding, dilation)
    return weight.new_empty((spikes.shape[0], weight.shape[0], ho, wo)), _nacc_fake(spikes)


def _fwd_packed_fake(spikes, weight, bias, mask, fmt, packed, stride, padding, dilation, groups, count,
                     dense_weight_grad):
    return _fwd_fake(spikes, weight, bias, mask, stride, padding, dilation, groups, count, dense_weight_grad)


def _bwd_fake(grad_out, spikes, weight, mask, stride, padding, dilation, groups, need_input_grad,
              need_weight_grad, dense_weight_grad):
    gi = spikes.new_empty(spikes.shape) if need_input_grad else weight.new_empty((0,))
    gw = weight.new_empty(weight.shape) if need_weight_grad else weight.new_empty((0,))
    return gi, gw


def _setup(ctx, inputs, output):
    save_spike_ctx(ctx, inputs, inputs[9])
    ctx.geom = tuple(inputs[4:8])


def _setup_packed(ctx, inputs, output):
    save_spike_ctx(ctx, inputs, inputs[11])
    ctx.geom = tuple(inputs[6:10])
    ctx.npacked = len(inputs[5])


def _backward_for(ns: str, packed: bool):
    """The one backward body of spike_conv2d, for the ops of namespace `ns` (its own bwd kernel)."""
    def backward(ctx, grad_out, _grad_n):
        stride, padding, dilation, groups = ctx.geom

        def bwd(g, s, w, m, nx, nw, dwg):
            return getattr(torch.ops, ns).spike_conv2d_bwd(g, s, w, m, stride, padding, dilation, groups, nx, nw,
                                                           dwg)

        grads = spike_backward(ctx, grad_out, bwd, (0, 2, 3))
        if packed:  # mask, format, packed, stride, padding, dilation, groups, count, dwg
            return grads + (None, None, [None] * ctx.npacked) + (None,) * 6
        return grads + (None,) * 7  # mask, stride, padding, dilation, groups, count, dwg
    return backward


def _counts_packed_fake(counts, weight, bias, fmt, packed, stride, padding, dilation):
    return _fwd_fake(counts, weight, bias, None, stride, padding, dilation, 1, False, False)[0]


def register(ns: str = "snnsparse"):
    """Fake kernels and autograd of the spike_conv2d ops of namespace `ns` (see ops.linear.register)."""
    register_spike_op("spike_conv2d", ns, (_fwd_fake, _bwd_fake, _fwd_packed_fake), _backward_for,
                      (_setup, _setup_packed))
    if ns == "snnsparse":  # the counts op is CPU-only (csrc/cpu/conv.cpp), like the packings it reads
        torch.library.register_fake(f"{ns}::spike_conv2d_counts_packed", _counts_packed_fake)


def forward(x, weight, bias, mask, stride, padding, dilation, groups, *, count=False, dense_weight_grad=False,
            ns: str = "snnsparse"):
    """out [N, Cout, Ho, Wo], n_acc (0-dim int64, or None unless count) on the kernels of namespace `ns`."""
    out, n = call(getattr(torch.ops, ns).spike_conv2d_fwd, x, weight, bias, mask, list(stride), list(padding),
                                                     list(dilation), int(groups), bool(count),
                                                     bool(dense_weight_grad))
    return out, (n if count else None)


def pack(weight: torch.Tensor, mask: Optional[torch.Tensor], groups: int = 1, fmt: int = 0, *, stride=(1, 1),
         in_width: int = 0, out_width: int = 0) -> PackedWeight:
    """Pack (weight, mask) once (CPU kernels). fmt 0 chooses as the core op does for a call with this
    stride and these input/output widths (format 4 needs stride 1 and widths 1..64; widths 0 = unknown,
    never format 4); 1-4 force one (snnsparse.ops.packed.ConvFormat)."""
    require_cpp(f"{__name__}.pack")
    with torch.no_grad():
        chosen, tensors = OPS.spike_conv2d_pack(weight.detach(), mask, int(groups), list(stride), int(in_width),
                                                int(out_width), int(fmt))
    return PackedWeight.of("conv2d", chosen, tensors, weight, mask, groups)


def forward_packed(x, packed: PackedWeight, bias, stride, padding, dilation, *, count=False):
    """Inference on a packing made by pack(): the values come from the snapshot only (no weight is
    read, none can be stale); no gradient reaches the weight."""
    if packed.kind != "conv2d":
        raise ValueError(f"spike_conv2d: packed must be a conv2d PackedWeight, got {packed.kind}")
    packed.check_inference(x)
    out, n = call(OPS.spike_conv2d_fwd_packed, x, packed.placeholder(), bias, None, int(packed.format),
                                         list(packed.tensors), list(stride),
                                         list(padding), list(dilation), packed.groups, bool(count), False)
    return out, (n if count else None)


def forward_counts_packed(x, packed: PackedWeight, bias, stride, padding, dilation):
    """out [N, Cout, Ho, Wo] of spike COUNTS x (integers 0..15, float of the weight's dtype, bool or uint8;
    SEW ADD's sums of spike tensors) on a format-3 (dense blocks) packing: each count adds its weight row
    that many times, in one pass. A nonzero value that is not an integer 1..15 raises ValueError
    ("spike counts must be"); inference only (no gradient, no operation count)."""
    if packed.kind != "conv2d":
        raise ValueError(f"spike_conv2d: packed must be a conv2d PackedWeight, got {packed.kind}")
    packed.check_inference(x)
    return OPS.spike_conv2d_counts_packed(x, packed.placeholder(), bias, int(packed.format), list(packed.tensors),
                                          list(stride), list(padding), list(dilation))
