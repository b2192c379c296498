"""Helpers shared by the spike GEMM kernels."""
import triton
import triton.language as tl


@triton.jit
def tf32_hi(a):
    """The part of fp32 `a` a TF32 tensor core reads exactly (low 13 mantissa bits cleared)."""
    return (a.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def mma(a, b, acc, SPLIT_A: tl.constexpr, SPLIT_B: tl.constexpr):
    """acc + a @ b with fp32 (or fp64) accumulation.

    fp32 on tensor cores without TF32's 10-bit mantissa loss: an operand marked SPLIT is cut
    into hi + lo, both exact in TF32 (hi = a with low mantissa bits cleared, lo = a - hi, exact),
    and the products are summed. The spike operand is 0/1, exact in TF32, so a spike GEMM
    needs 2 TF32 MMAs (not the 3 of tf32x3, nor the SIMT FMAs of "ieee"); the dense-by-dense
    grad_in GEMM splits both (3 MMAs, lo*lo dropped). Error ~2^-21 relative per product,
    below fp32 summation error. fp16/bf16/fp64 operands are never split.
    """
    if SPLIT_A and SPLIT_B:
        a_hi = tf32_hi(a)
        b_hi = tf32_hi(b)
        acc = tl.dot(a_hi, b_hi, acc, input_precision="tf32")
        acc = tl.dot(a - a_hi, b_hi, acc, input_precision="tf32")
        acc = tl.dot(a_hi, b - b_hi, acc, input_precision="tf32")
    elif SPLIT_A:
        a_hi = tf32_hi(a)
        acc = tl.dot(a_hi, b, acc, input_precision="tf32")
        acc = tl.dot(a - a_hi, b, acc, input_precision="tf32")
    elif SPLIT_B:
        b_hi = tf32_hi(b)
        acc = tl.dot(a, b_hi, acc, input_precision="tf32")
        acc = tl.dot(a, b - b_hi, acc, input_precision="tf32")
    else:
        acc = tl.dot(a, b, acc)
    return acc
