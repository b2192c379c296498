"""cpp backend: the CPU kernels of snnsparse._C (csrc/cpu/*.cpp), OpenMP + AVX-512/AVX2.

The backend contract of snnsparse.backends (spike_linear, spike_conv2d, lif, supports) over the
snnsparse:: ops, whose fakes and autograd are registered once for every device in
snnsparse/ops/linear.py, conv2d.py and lif.py.

No packing cache: the core ops pack (weight, mask) on every call, so no forward can read values
other than the weight's and mask's at that moment, whatever happened to them in between (fused
optimizers that do not bump `_version`, `.data` assignments, numpy views, a new mask allocated where
a freed one was: issue 11). Packing once is for snapshots: snnsparse.ops.linear.pack / conv2d.pack.

dtypes: the kernels take float32 and float64 (float64 is for gradcheck). float16/bfloat16
inputs are upcast to float32 here and the result is cast back (the ops themselves refuse
them with a TypeError). For LIF this means the membrane is integrated in float32, not rounded to
fp16/bf16 after every step as SpikingJelly, the reference, CUDA and Triton do: a few spikes differ
near the threshold (review measurement on [16, 20000]: 272 in bf16, 39 in fp16; v_last up to 1.0).
Bit-compatibility with SpikingJelly on CPU holds for float32 and float64 only.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from . import conv2d as _conv2d
from . import linear as _linear
from . import lif as _lif
from .registry import ensure_registered

_LOW = (torch.float16, torch.bfloat16)
# The kernels refuse non-binary spikes themselves while bit-packing them (same pass), so
# snnsparse.functional skips its own check for this backend.
CHECKS_BINARY = True


def unavailable_reason() -> Optional[str]:
    reason = _ext.load()
    if reason:
        return reason
    if not hasattr(torch.ops.snnsparse, "spike_linear_pack"):
        return "snnsparse._C is an old build without the cpp backend ops; rebuild it (make install)"
    ensure_registered()
    return None


def cpu_isa() -> str:
    """The CPU kernel variant snnsparse._C selected when it was loaded ("avx512", "avx2", "generic"):
    the widest compiled variant this CPU runs, or SNNSPARSE_CPU_ISA. Asked of the extension itself
    (never /proc/cpuinfo); "" when it is not loaded."""
    return torch.ops.snnsparse.cpu_isa() if _ext.load() is None else ""


def supports(device: torch.device):
    if device.type != "cpu":
        return f"the cpp backend runs on CPU tensors only (got {device})"
    return True


def _up(t):
    return None if t is None else t.float()


def spike_linear(x, weight, bias, mask, *, count=False, dense_weight_grad=False):
    if weight.dtype in _LOW:
        out, n = spike_linear(x.float(), weight.float(), _up(bias), mask, count=count,
                              dense_weight_grad=dense_weight_grad)
        return out.to(weight.dtype), n
    return _linear.forward(x.to(weight.dtype), weight, bias, mask, count=count, dense_weight_grad=dense_weight_grad)


def spike_conv2d(x, weight, bias, mask, stride, padding, dilation, groups, *, count=False,
                 dense_weight_grad=False):
    if weight.dtype in _LOW:
        out, n = spike_conv2d(x.float(), weight.float(), _up(bias), mask, stride, padding, dilation, groups,
                              count=count, dense_weight_grad=dense_weight_grad)
        return out.to(weight.dtype), n
    return _conv2d.forward(x.to(weight.dtype), weight, bias, mask, stride, padding, dilation, groups, count=count,
                           dense_weight_grad=dense_weight_grad)


def lif(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, return_h=False,
        charge="lif", k=None):
    if x_seq.dtype in _LOW:
        s, v, h = lif(x_seq.float(), v0.float(), tau, v_threshold, v_reset, decay_input, detach_reset,
                      surrogate, alpha, return_h, charge, _up(k))
        dt = x_seq.dtype
        return s.to(dt), v.to(dt), (None if h is None else h.to(dt))
    return _lif.run(x_seq, v0.to(x_seq.dtype), tau, v_threshold, v_reset, decay_input, detach_reset, surrogate,
                    alpha, return_h, charge=charge, k=k)
