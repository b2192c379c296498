"""spike_matmul: the glue of the snnsparse::spike_matmul_fwd op (schema: csrc/registration.cpp; kernels:
csrc/cpu/matmul.cpp, csrc/cuda/matmul.cu; the same schema in snnsparse_triton::, snnsparse/ops/triton.py):
one fake, one autograd with one backward body, shared by every namespace and device, and the call every
backend makes.

    spike_matmul_fwd(a [Bt, M, K], b [Bt, K, N], str binary, bool count) -> (out [Bt, M, N], n_acc)

`binary` names the operands that are spikes (all values 0 or 1): "both" (AND + popcount on bit-packed rows
of a and columns of b), "a" or "b" (event-driven accumulation over the spikes of that operand; the other one
holds any values). The CPU kernels refuse a named operand that is not binary, in the pass that packs it; the
CUDA and Triton kernels count any nonzero value as a spike, so snnsparse.functional checks their binary
operands before the call (as it does for the other spike ops on those backends). Dtypes: a floating operand gives
the result dtype; a binary operand may instead be compact spikes, bool or uint8, where the kernels read them
(the cpp backend: BYTE_SPIKES); with both compact the result is float32. n_acc (int64, 0-dim) is the number
of additions executed (reference.spike_matmul_count), 0 unless count.

Gradient: the exact gradient of the product, dL/da = g @ b^T and dL/db = a^T @ g, for every operand. For a
binary operand this is the "straight" dense gradient, as spike_linear gives its spike input (the spikes are
treated as the real numbers 0 and 1; their producer's surrogate takes it from there). The backward runs the
products with a spike operand on the same op (g @ b^T with b binary is again "float x binary"), so a gradient
costs event-driven work where the forward did, and double backward works.
"""
from __future__ import annotations

import torch

from .registry import call

BINARY = ("both", "a", "b")


def out_dtype(a, b) -> torch.dtype:
    """The result dtype: that of the floating operand(s); float32 when both are compact spikes (bool/uint8)."""
    for t in (a, b):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _fwd_fake(a, b, binary, count):
    torch._check(a.dim() == 3 and b.dim() == 3, lambda: "spike_matmul: a and b must be [Bt, M, K] and [Bt, K, N]")
    torch._check(binary in BINARY, lambda: f"spike_matmul: binary must be one of {BINARY}, got {binary!r}")
    return a.new_empty((a.shape[0], a.shape[1], b.shape[2]), dtype=out_dtype(a, b)), a.new_empty((), dtype=torch.int64)


def _setup(ctx, inputs, output):
    a, b, binary, _ = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(a, b)
    ctx.binary = binary


def _backward_for(ns: str):
    """The one backward body of spike_matmul, for the op of namespace `ns`."""
    def backward(ctx, grad, _grad_n):
        if grad is None:
            return None, None, None, None
        a, b = ctx.saved_tensors
        op = getattr(torch.ops, ns).spike_matmul_fwd
        ga = gb = None
        if ctx.needs_input_grad[0]:   # g [Bt, M, N] @ b^T [Bt, N, K]
            bt = b.transpose(1, 2)
            ga = op(grad, bt, "b", False)[0] if ctx.binary in ("both", "b") else torch.matmul(grad, bt)
        if ctx.needs_input_grad[1]:   # a^T [Bt, K, M] @ g [Bt, M, N]
            at = a.transpose(1, 2)
            gb = op(at, grad, "a", False)[0] if ctx.binary in ("both", "a") else torch.matmul(at, grad)
        return ga, gb, None, None
    return backward


def register(ns: str = "snnsparse"):
    """Fake kernel and autograd of spike_matmul_fwd in namespace `ns` (see ops.linear.register)."""
    torch.library.register_fake(f"{ns}::spike_matmul_fwd", _fwd_fake)
    torch.library.register_autograd(f"{ns}::spike_matmul_fwd", _backward_for(ns), setup_context=_setup)


def forward(a, b, binary: str, *, count=False, ns: str = "snnsparse"):
    """out [Bt, M, N], n_acc (0-dim int64, or None unless count) on the kernels of namespace `ns`."""
    out, n = call(getattr(torch.ops, ns).spike_matmul_fwd, a, b, binary, bool(count))
    return out, (n if count else None)
