"""max_pool2d: the glue of snnsparse::max_pool2d (csrc/registration.cpp; kernel csrc/cpu/pool.cpp), the
inference max-pool of optimize_for_inference: torch's max_pool2d values without the argmax indices
torch's CPU kernel always computes. One fake; no autograd (inference only: an input that wants a
gradient is refused by the caller, SpikeMaxPool2d)."""
from __future__ import annotations

import torch

from . import conv2d as _conv2d

DTYPES = (torch.float32, torch.float64, torch.bool, torch.uint8)


def output_size(h: int, w: int, kernel, stride, padding, dilation, ceil_mode: bool):
    """torch's pooling output size (pool.cpp computes the same): the conv formula, or with ceil_mode the
    rounded-up one whose last window still starts inside the input or its left padding."""
    if not ceil_mode:
        return _conv2d.output_size(h, w, kernel, stride, padding, dilation)
    out = []
    for size, k, s, p, d in zip((h, w), kernel, stride, padding, dilation):
        o = (size + 2 * p - d * (k - 1) - 1 + s - 1) // s + 1
        out.append(o - 1 if (o - 1) * s >= size + p else o)
    return tuple(out)


def _fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    ho, wo = output_size(x.shape[2], x.shape[3], kernel_size, stride, padding, dilation, ceil_mode)
    return x.new_empty((x.shape[0], x.shape[1], ho, wo))


def register(ns: str = "snnsparse"):
    torch.library.register_fake(f"{ns}::max_pool2d", _fake)


def max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode):
    """[N, C, Ho, Wo] max-pool of x [N, C, H, W] on the CPU kernel (arguments as pairs)."""
    return torch.ops.snnsparse.max_pool2d(x, list(kernel_size), list(stride), list(padding), list(dilation),
                                          bool(ceil_mode))
