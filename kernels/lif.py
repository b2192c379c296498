"""Fused multi-step neuron of the LIF family (SpikingJelly LIFNode, IFNode, ParametricLIFNode; step_mode="m"):
forward and surrogate backward.

One program owns BLOCK neurons and walks all T steps with V in registers: HBM traffic is the
minimum the op needs (forward: read X, write S and H; backward: read dS, H, write dX), every
access a contiguous BLOCK vector. H (pre-fire potential) is saved in the input dtype, as
SpikingJelly saves h_seq; the backward recomputes S and the surrogate from H.

Arithmetic follows the reference's operation order (snnsparse/ops/reference.py): in fp32
registers, rounded to the storage dtype after every operation when ROUND (fp16/bf16), which is
what torch does op by op on half tensors, so spikes are bit-identical to the torch loop.
Division by tau is IEEE-rounded (div_rn), never a fused multiply-add.

The forward can also emit bit-packed spikes (bits[t, n // 32], bit n % 32) and per-program spike
counts cnt[t, program] for a following spike layer (EMIT_BITS).

Surrogates (x = H - V_th; SpikingJelly's formulas, snnsparse/ops/surrogate.py):
  0 sigmoid, 1 atan, 2 piecewise_quadratic, 3 soft_sign, 4 erf.
"""
import triton
import triton.language as tl
from triton.language.extra import libdevice

SURROGATES = ("sigmoid", "atan", "piecewise_quadratic", "soft_sign", "erf")
CHARGES = ("lif", "if", "plif")  # the op's `charge` (csrc/registration.cpp): LIFNode, IFNode, ParametricLIFNode


@triton.jit
def _rnd(a, DT: tl.constexpr, ROUND: tl.constexpr):
    if ROUND:
        return a.to(DT).to(tl.float32)
    return a


@triton.jit
def _div(a, b):
    # fp32: IEEE-rounded (Triton's `/` on fp32 is an approximate division); fp64 `/` is already.
    if a.dtype == tl.float64:
        q = a / b
    else:
        q = tl.math.div_rn(a, b)
    return q


@triton.jit
def _mul(a, b, EXACT_MUL: tl.constexpr):
    # IEEE-rounded product that the compiler may not fuse with a following add into an FMA (Triton's
    # default enable_fp_fusion would, and v + a*k would round once instead of twice). libdevice is
    # not in the interpreter, whose numpy product is IEEE-rounded anyway: EXACT_MUL is False there.
    if EXACT_MUL:
        q = libdevice.mul_rn(a, b)
    else:
        q = a * b
    return q


@triton.jit
def _charge(v, x, vr, tau_v, k, DT: tl.constexpr, ROUND: tl.constexpr, CHARGE: tl.constexpr,
            DECAY_INPUT: tl.constexpr, HARD_RESET: tl.constexpr, EXACT_MUL: tl.constexpr):
    """H[t] from X[t] and V[t-1] in SpikingJelly's operation order (CHARGES: 0 lif, 1 if, 2 plif)."""
    if CHARGE == 1:
        h = _rnd(v + x, DT, ROUND)
    else:
        if HARD_RESET:
            dv = _rnd(v - vr, DT, ROUND)
        else:
            dv = v
        if CHARGE == 0:
            if DECAY_INPUT:
                h = _rnd(v + _rnd(_div(_rnd(x - dv, DT, ROUND), tau_v), DT, ROUND), DT, ROUND)
            else:
                h = _rnd(_rnd(v - _rnd(_div(dv, tau_v), DT, ROUND), DT, ROUND) + x, DT, ROUND)
        else:
            if DECAY_INPUT:
                h = _rnd(v + _rnd(_mul(_rnd(x - dv, DT, ROUND), k, EXACT_MUL), DT, ROUND), DT, ROUND)
            else:
                h = _rnd(_rnd(v - _rnd(_mul(dv, k, EXACT_MUL), DT, ROUND), DT, ROUND) + x, DT, ROUND)
    return h


@triton.jit
def _reset(h, vr, vth, DT: tl.constexpr, ROUND: tl.constexpr, HARD_RESET: tl.constexpr):
    # The reference's arithmetic reset, not a select: they differ only for non-finite H, where
    # torch gives 0 * inf = NaN for a hard reset after H = +inf (a select would return V_reset).
    sf = (h >= vth).to(h.dtype)
    if HARD_RESET:
        v = _rnd(_rnd(sf * vr, DT, ROUND) + _rnd((1.0 - sf) * h, DT, ROUND), DT, ROUND)
    else:
        v = _rnd(h - _rnd(sf * vth, DT, ROUND), DT, ROUND)
    return v


@triton.jit
def lif_fwd_kernel(x_ptr,     # *DT [T, N]   input current
                   v0_ptr,    # *DT [N]      V[-1]
                   s_ptr,     # *DT [T, N]   out: spikes
                   v_ptr,     # *DT [N]      out: v_last = V[T-1]
                   h_ptr,     # *DT [T, N]   out: h_seq (written only if SAVE_H)
                   bits_ptr,  # *i32 [T, NW] out: packed spikes (written only if EMIT_BITS)
                   cnt_ptr,   # *i32 [T, num_programs] out: spikes per program (only if EMIT_BITS)
                   k_ptr,     # *DT []       the plif constant k = sigmoid(w) (read only if CHARGE == 2)
                   T, N, NW,  # i32; NW = cdiv(N, 32)
                   tau, v_th, v_reset,  # fp32 scalars (v_reset ignored unless HARD_RESET; tau read only if CHARGE == 0)
                   CHARGE: tl.constexpr, DECAY_INPUT: tl.constexpr, HARD_RESET: tl.constexpr, SAVE_H: tl.constexpr,
                   EMIT_BITS: tl.constexpr, ROUND: tl.constexpr, EXACT_MUL: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    DT: tl.constexpr = x_ptr.dtype.element_ty
    v = tl.load(v0_ptr + offs, mask=m, other=0.0)
    if DT != tl.float64:
        v = v.to(tl.float32)
    # the constants as torch sees them: Python floats rounded to the tensor's dtype; k is a tensor of it
    vr = _rnd(tl.zeros_like(v) + v_reset, DT, ROUND)
    vth = _rnd(tl.zeros_like(v) + v_th, DT, ROUND)
    tau_v = _rnd(tl.zeros_like(v) + tau, DT, ROUND)
    if CHARGE == 2:
        k = tl.zeros_like(v) + tl.load(k_ptr).to(v.dtype)
    else:
        k = tau_v
    for t in range(0, T):
        x = tl.load(x_ptr + offs, mask=m, other=0.0).to(v.dtype)
        h = _charge(v, x, vr, tau_v, k, DT, ROUND, CHARGE, DECAY_INPUT, HARD_RESET, EXACT_MUL)
        fired = h >= vth
        v = _reset(h, vr, vth, DT, ROUND, HARD_RESET)
        tl.store(s_ptr + offs, fired.to(tl.float32).to(DT), mask=m)  # (the interpreter has no i1->bf16)
        x_ptr += N  # pointer increments: 64-bit offsets without an int64 loop counter
        s_ptr += N
        if SAVE_H:
            tl.store(h_ptr + offs, h.to(DT), mask=m)
            h_ptr += N
        if EMIT_BITS:
            sb = tl.reshape(fired.to(tl.int32) & m.to(tl.int32), [BLOCK // 32, 32])
            words = tl.sum(sb << tl.arange(0, 32)[None, :], axis=1)
            wi = pid * (BLOCK // 32) + tl.arange(0, BLOCK // 32)
            tl.store(bits_ptr + wi, words, mask=wi < NW)
            tl.store(cnt_ptr + pid, tl.sum(tl.sum(sb, axis=1), axis=0))
            bits_ptr += NW
            cnt_ptr += tl.num_programs(0)
    tl.store(v_ptr + offs, v.to(DT), mask=m)


@triton.jit
def _surrogate_grad(x, alpha, SURROGATE: tl.constexpr):
    if SURROGATE == 0:
        sg = tl.sigmoid(alpha * x)
        return alpha * sg * (1.0 - sg)
    elif SURROGATE == 1:
        z = 1.5707963267948966 * alpha * x
        return (alpha / 2.0) / (1.0 + z * z)
    elif SURROGATE == 2:
        # NaN in, NaN out, as torch.clamp in the reference (tl.maximum's default drops a NaN operand)
        return tl.maximum(alpha - alpha * alpha * tl.abs(x), 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif SURROGATE == 3:
        z = 1.0 + alpha * tl.abs(x)
        return alpha / (2.0 * z * z)
    else:
        z = alpha * x
        return (alpha * 0.5641895835477563) * tl.exp(-(z * z))


@triton.jit
def lif_bwd_kernel(gs_ptr,    # *DT [T, N]  grad of the spikes
                   gv_ptr,    # *DT [N]     grad of v_last (read only if HAS_GV)
                   gh_ptr,    # *DT [T, N]  grad of h_seq, when it was returned (read only if HAS_GH)
                   h_ptr,     # *DT [T, N]  h_seq saved by the forward
                   gx_ptr,    # *DT [T, N]  out: grad of x_seq
                   gv0_ptr,   # *DT [N]     out: grad of v0
                   k_ptr,     # *DT []      the plif constant k (read only if CHARGE == 2)
                   x_ptr,     # *DT [T, N]  the forward's x_seq (read only if GRAD_K and DECAY_INPUT)
                   v0_ptr,    # *DT [N]     the forward's v0 (read only if GRAD_K)
                   gkn_ptr,   # *ACC [N]    out: per-neuron sum over t of dL/dH * dH/dk (only if GRAD_K)
                   T, N,      # i32
                   tau, v_th, v_reset, alpha,   # fp32 scalars
                   HAS_GV: tl.constexpr, HAS_GH: tl.constexpr, CHARGE: tl.constexpr, DECAY_INPUT: tl.constexpr,
                   HARD_RESET: tl.constexpr, DETACH_RESET: tl.constexpr, SURROGATE: tl.constexpr,
                   GRAD_K: tl.constexpr, ROUND: tl.constexpr, BLOCK: tl.constexpr):
    """Reverse-time recurrence (fp32, fp64 for fp64 tensors):
        gH[t] = gS[t] * sg(H[t] - V_th) + gV[t] * dV/dH (+ gHout[t], the grad of the returned h_seq),
        gX[t] = gH[t] * dH/dX,   gV[t-1] = gH[t] * dH/dV;   gV[T-1] = grad of v_last, gV[-1] = grad of v0.
    dH/dX, dH/dV: lif 1/tau (1 without decay_input), 1 - 1/tau; if 1, 1; plif k (1), 1 - k.
    dV/dH: hard reset (1 - S) + (V_reset - H) sg; soft 1 - V_th sg; detach_reset drops the sg terms.
    GRAD_K: gK += gH[t] * dH/dk, dH/dk = X[t] - (V[t-1] - V_reset) (decay_input) or -(V[t-1] - V_reset),
    V[t-1] recomputed from H[t-1] by the forward's reset (V[-1] = v0).
    """
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    DT: tl.constexpr = gx_ptr.dtype.element_ty
    if DT == tl.float64:
        gv = tl.zeros([BLOCK], tl.float64)
    else:
        gv = tl.zeros([BLOCK], tl.float32)
    if HAS_GV:
        gv += tl.load(gv_ptr + offs, mask=m, other=0.0).to(gv.dtype)
    one = gv * 0.0 + 1.0
    gk = gv * 0.0
    end = T.to(tl.int64) * N  # walk back from the end of the [T, N] arrays
    h_ptr += end
    gs_ptr += end
    gx_ptr += end
    if HAS_GH:
        gh_ptr += end
    if GRAD_K:
        x_ptr += end
    if CHARGE == 0:
        inv_tau = _div(one, one * tau)
        dhdv = 1.0 - inv_tau
        if DECAY_INPUT:
            dhdx = inv_tau
        else:
            dhdx = one
    elif CHARGE == 1:
        dhdv = one
        dhdx = one
    else:
        kk = one * tl.load(k_ptr).to(gv.dtype)
        dhdv = 1.0 - kk
        if DECAY_INPUT:
            dhdx = kk
        else:
            dhdx = one
    vth = (one * v_th).to(DT).to(gv.dtype)
    vr = (one * v_reset).to(DT).to(gv.dtype)
    for i in range(0, T):
        h_ptr -= N
        gs_ptr -= N
        gx_ptr -= N
        h = tl.load(h_ptr + offs, mask=m, other=0.0).to(gv.dtype)
        gs = tl.load(gs_ptr + offs, mask=m, other=0.0).to(gv.dtype)
        sg = _surrogate_grad(h - vth, alpha, SURROGATE)
        if HARD_RESET:
            s = (h >= vth).to(gv.dtype)
            dvdh = 1.0 - s
            if not DETACH_RESET:
                dvdh += (vr - h) * sg
        else:
            dvdh = one
            if not DETACH_RESET:
                dvdh -= vth * sg
        gh = gs * sg + gv * dvdh
        if HAS_GH:  # h_seq is an output too: its gradient enters H[t] directly
            gh_ptr -= N
            gh += tl.load(gh_ptr + offs, mask=m, other=0.0).to(gv.dtype)
        tl.store(gx_ptr + offs, (gh * dhdx).to(DT), mask=m)
        gv = gh * dhdv
        if GRAD_K:
            x_ptr -= N
            if i < T - 1:  # V[t-1] from H[t-1], exactly as the forward reset it
                hp = tl.load(h_ptr - N + offs, mask=m, other=0.0).to(gv.dtype)
                vp = _reset(hp, vr, vth, DT, ROUND, HARD_RESET)
            else:
                vp = tl.load(v0_ptr + offs, mask=m, other=0.0).to(gv.dtype)
            if DECAY_INPUT:
                gk += gh * (tl.load(x_ptr + offs, mask=m, other=0.0).to(gv.dtype) - (vp - vr))
            else:
                gk -= gh * (vp - vr)
    tl.store(gv0_ptr + offs, gv.to(DT), mask=m)
    if GRAD_K:
        tl.store(gkn_ptr + offs, gk, mask=m)
