"""cuda backend: the CUDA kernels of snnsparse._C (csrc/cuda/*.cu) behind the backend contract.

The ops are the same torch.ops.snnsparse ops as the cpp backend's (one schema each, declared in
csrc/registration.cpp); csrc/cuda registers their CUDA dispatch-key kernels. Fake kernels and
autograd are per op, not per device: snnsparse/ops/linear.py, conv2d.py and lif.py register them
once for both (snnsparse.ops.registry); this module registers nothing of that kind itself. What it adds:

* supports()/unavailable_reason(): the reason when snnsparse._C was built without CUDA
  (build_info() == "cpu"), when no CUDA device is visible, or for non-CUDA tensors;
* fp16/bf16 run natively (the CUDA kernels accumulate in fp32; no upcast as on CPU);
* dense_weight_grad is an argument of the ops themselves (no separate autograd path can drop it);
* `gpu_rule`, the auto-dispatch rule between the cuda and triton backends (below).

Kernel design (csrc/cuda/spike_kernels.cuh, lif_kernels.cuh): bit-packed spikes, weight-stationary
tiles in shared memory reused by all rows (all T frames) of a tile, per-thread walks over the set
bits of spike & mask words, block-wide skipping of all-zero tiles, no per-event atomics, fp32
accumulation. Nothing here has been timed yet: see `gpu_rule`.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _ext, backends
from . import conv2d as _conv2d
from . import linear as _linear
from . import lif as _lif
from .registry import ensure_registered


_UNSET = object()
_reason_cache = _UNSET


def unavailable_reason() -> Optional[str]:
    """None when this backend can run here, else why not (computed once per process)."""
    global _reason_cache
    if _reason_cache is _UNSET:
        _reason_cache = _compute_reason()
    return _reason_cache


def _compute_reason() -> Optional[str]:
    reason = _ext.load()
    if reason:
        return reason
    info = _ext.build_info()
    if "cuda" not in info.split(","):
        return (f"snnsparse._C was built without CUDA (build_info() = {info!r}): it needs a CUDA build of "
                f"torch and nvcc at build time (FORCE_CUDA=1 forces the CUDA sources into the build)")
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    ensure_registered()
    return None


def supports(device: torch.device):
    """True when the cuda backend can run ops on tensors of `device`, else the reason."""
    device = torch.device(device)
    reason = unavailable_reason()
    if reason:
        return reason
    if device.type != "cuda":
        return f"the cuda backend runs on CUDA tensors only (got {device})"
    return True


# ----------------------------------------------------------------------------------------------
# auto-dispatch between the cuda and triton backends (snnsparse.backends.gpu_rule)
# ----------------------------------------------------------------------------------------------
# NOT MEASURED YET. This rule was written on a machine without a GPU; no timing of either GPU
# backend exists in bench/RESULTS.md. Until same-device numbers exist, every op prefers "cuda",
# for reasons that are not timings:
#   * it has no JIT warm-up (Triton compiles each new shape/dtype specialisation on first call);
#   * it is what the registry's default order already does (backends.resolve: cuda, then triton).
# To be measured (bench/gpu_check.sh, H100/H200, median of several runs against each other and
# cuBLAS/cuDNN): per op, the shapes where triton is faster. Write each finding into PREFER_TRITON
# as a predicate over the shape_info that snnsparse.functional passes (linear: n, k, m; conv: n,
# cin, cout, h, w, kh, kw, groups; lif: t, n), with the measured numbers in a comment beside it.
PREFER_TRITON = {
    "spike_linear": None,   # to be measured
    "spike_conv2d": None,   # to be measured
    "lif": None,            # to be measured
}


def gpu_rule(op: str, **shape_info) -> str:
    """"cuda" or "triton" for `op` on CUDA tensors of the given shape (see PREFER_TRITON)."""
    pred = PREFER_TRITON.get(op)
    if pred is not None:
        try:
            if pred(**shape_info):
                return "triton"
        except TypeError:  # a shape key the predicate does not know: keep the default
            pass
    return "cuda"


backends.gpu_rule = gpu_rule


# ----------------------------------------------------------------------------------------------
# backend contract (snnsparse.backends)
# ----------------------------------------------------------------------------------------------
def spike_linear(x, weight, bias, mask, *, count=False, dense_weight_grad=False):
    return _linear.forward(x.to(weight.dtype), weight, bias, mask, count=count, dense_weight_grad=dense_weight_grad)


def spike_conv2d(x, weight, bias, mask, stride, padding, dilation, groups, *, count=False,
                 dense_weight_grad=False):
    return _conv2d.forward(x.to(weight.dtype), weight, bias, mask, stride, padding, dilation, groups, count=count,
                           dense_weight_grad=dense_weight_grad)


def lif(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, return_h=False,
        charge="lif", k=None):
    return _lif.run(x_seq, v0.to(x_seq.dtype), tau, v_threshold, v_reset, decay_input, detach_reset, surrogate,
                    alpha, return_h, charge=charge, k=k)
