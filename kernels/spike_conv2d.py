"""Event-driven spike Conv2d as an implicit GEMM over bit-packed, channels-last spikes.

x arrives bit-packed channels-last per group (spike_pack.py): bits[N*H*W, G, CW], CW =
ceil(Cin_g/32). The weight arrives prepared by the op: wt[G, KH*KW, Cin_g, Cout_g] =
(W*mask) with Cout fastest, so one input event (pixel, channel) at one tap meets a contiguous
Cout_g vector (channels-last on both sides, DESIGN.md section 4).

Forward (spike_conv2d_fwd_kernel), grid (cdiv(N*Ho*Wo, BLOCK_P), cdiv(Cout_g, BLOCK_CO), G):
  rows are output pixels (all T frames and the batch flattened: the weight slab of a tap is
  fetched once per BLOCK_P pixels, T frames included), the reduction runs over taps x Cin_g
  chunks. Per (tap, chunk) the kernel skips
    - all-pruned weight blocks (bflag[g, co_block, tap, ci_block] == 0, read before any load),
    - all-zero spike tiles (tested on the packed words alone, 1/32 of an fp32 tile's bytes;
      SKIP_ZERO_TILES, because the data-dependent branch stops the loop's software pipelining
      and at random spike rates >~1% a 64x64 tile is never empty: measure both);
  otherwise the 0/1 tile feeds a tensor-core MMA into a register accumulator (no atomics).
  Counting mode adds colsum(x tile) . mcnt[g, co_block, tap, ci] per processed tile: exactly
  sum(conv2d(x, mask)) including borders, out-of-image taps being masked to zero.
grad_in (spike_conv2d_grad_in_kernel): rows are input pixels, reduction over taps x Cout_g; a
  tap contributes where (ih + pad - kh*dil) is a multiple of the stride inside the output.
grad_w (spike_conv2d_grad_w_kernel), grid (co blocks, ci blocks, G*KH*KW): reduction over output
  pixels, skipping all-zero spike tiles and (unless dense_weight_grad) all-pruned blocks.
"""
import triton
import triton.language as tl

from .common import mma


@triton.jit
def spike_conv2d_fwd_kernel(bits_ptr, wt_ptr, bflag_ptr, mcnt_ptr, b_ptr, out_ptr, part_ptr,
                            P, H, W, Ho, Wo, G, CIN_G, COUT_G, CW, CIB,
                            SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                            DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                            HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, COUNT: tl.constexpr,
                            SPLIT: tl.constexpr, IS_F64: tl.constexpr, SKIP_ZERO_TILES: tl.constexpr,
                            BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_co = tl.program_id(1)
    g = tl.program_id(2)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pv = p < P
    hw_o = Ho * Wo
    n = p // hw_o
    oh = (p % hw_o) // Wo
    ow = p % Wo
    co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    cov = co < COUT_G
    if IS_F64:
        acc = tl.zeros([BLOCK_P, BLOCK_CO], tl.float64)
    else:
        acc = tl.zeros([BLOCK_P, BLOCK_CO], tl.float32)
    cnt = tl.zeros([], tl.int64)
    co_valid = tl.minimum(COUT_G - pid_co * BLOCK_CO, BLOCK_CO)
    n_cob = tl.num_programs(1)
    for t in range(0, KH * KW):
        kh = t // KW
        kw = t % KW
        ih = oh * SH - PH + kh * DH
        iw = ow * SW - PW + kw * DW
        ok = pv & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        pix = ((n.to(tl.int64) * H + ih) * W + iw) * G * CW + g * CW
        for c0 in range(0, CIN_G, BLOCK_C):
            run = True
            if HAS_MASK:
                run = tl.load(bflag_ptr + ((g * n_cob + pid_co) * KH * KW + t) * CIB + c0 // BLOCK_C) != 0
            if run:
                ci = c0 + tl.arange(0, BLOCK_C)
                cv = ci < CIN_G
                words = tl.load(bits_ptr + pix[:, None] + (ci >> 5)[None, :], mask=ok[:, None] & cv[None, :],
                                other=0)
                xb = (words >> (ci & 31)[None, :]) & 1
                nonzero = True
                if SKIP_ZERO_TILES:
                    nonzero = tl.max(xb) != 0
                if nonzero:
                    w = tl.load(wt_ptr + ((g * KH * KW + t) * CIN_G + ci).to(tl.int64)[:, None] * COUT_G
                                + co[None, :], mask=cv[:, None] & cov[None, :], other=0.0)
                    acc = mma(xb.to(w.dtype), w, acc, False, SPLIT)
                    if COUNT:
                        if HAS_MASK:
                            mc = tl.load(mcnt_ptr + ((g * n_cob + pid_co) * KH * KW + t) * CIN_G + ci,
                                         mask=cv, other=0)
                        else:
                            mc = tl.where(cv, co_valid, 0)
                        cnt += tl.sum(tl.sum(xb, axis=0) * mc, axis=0).to(tl.int64)
    if HAS_BIAS:
        acc += tl.load(b_ptr + g * COUT_G + co, mask=cov, other=0.0).to(acc.dtype)[None, :]
    cout = G * COUT_G
    optr = out_ptr + (n.to(tl.int64) * cout * hw_o + p % hw_o)[:, None] + ((g * COUT_G + co) * hw_o)[None, :]
    tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=pv[:, None] & cov[None, :])
    if COUNT:
        tl.store(part_ptr + (g * tl.num_programs(1) + pid_co) * tl.num_programs(0) + pid_p, cnt)


@triton.jit
def spike_conv2d_grad_in_kernel(g_ptr, wt_ptr, bflag_ptr, gin_ptr,
                                NHW, H, W, Ho, Wo, G, CIN_G, COUT_G, CIB, COB,
                                SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                                DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                                HAS_MASK: tl.constexpr, SPLIT: tl.constexpr, IS_F64: tl.constexpr,
                                BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_C: tl.constexpr):
    """gin[n, g*Cin_g + ci, ih, iw] = sum over taps, co of G[n, g*Cout_g + co, oh, ow] W[co, ci, kh, kw].
    Grid (cdiv(N*H*W, BLOCK_P), CIB, G). G is contiguous NCHW."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    g = tl.program_id(2)
    q = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    qv = q < NHW
    hw = H * W
    n = q // hw
    ih = (q % hw) // W
    iw = q % W
    ci = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cv = ci < CIN_G
    if IS_F64:
        acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float64)
    else:
        acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    cout = G * COUT_G
    hw_o = Ho * Wo
    for t in range(0, KH * KW):
        kh = t // KW
        kw = t % KW
        ohn = ih + PH - kh * DH
        own = iw + PW - kw * DW
        oh = ohn // SH
        ow = own // SW
        ok = qv & (ohn >= 0) & (own >= 0) & (ohn % SH == 0) & (own % SW == 0) & (oh < Ho) & (ow < Wo)
        gbase = n.to(tl.int64) * cout * hw_o + oh * Wo + ow
        for co0 in range(0, COUT_G, BLOCK_CO):
            run = True
            if HAS_MASK:
                run = tl.load(bflag_ptr + ((g * COB + co0 // BLOCK_CO) * KH * KW + t) * CIB + pid_c) != 0
            if run:
                co = co0 + tl.arange(0, BLOCK_CO)
                cov = co < COUT_G
                gt = tl.load(g_ptr + gbase[:, None] + ((g * COUT_G + co) * hw_o)[None, :],
                             mask=ok[:, None] & cov[None, :], other=0.0)
                w = tl.load(wt_ptr + ((g * KH * KW + t) * CIN_G + ci).to(tl.int64)[:, None] * COUT_G
                            + co[None, :], mask=cv[:, None] & cov[None, :], other=0.0)
                acc = mma(gt, tl.trans(w), acc, SPLIT, SPLIT)
    cin = G * CIN_G
    optr = gin_ptr + (n.to(tl.int64) * cin * hw + q % hw)[:, None] + ((g * CIN_G + ci) * hw)[None, :]
    tl.store(optr, acc.to(gin_ptr.dtype.element_ty), mask=qv[:, None] & cv[None, :])


@triton.jit
def spike_conv2d_grad_w_kernel(g_ptr, bits_ptr, mask_ptr, bflag_ptr, gw_ptr,
                               P, H, W, Ho, Wo, G, CIN_G, COUT_G, CW, CIB,
                               SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                               DH: tl.constexpr, DW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                               HAS_MASK: tl.constexpr, DENSE: tl.constexpr, SPLIT: tl.constexpr,
                               IS_F64: tl.constexpr, SKIP_ZERO_TILES: tl.constexpr,
                               BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_C: tl.constexpr):
    """gw[g*Cout_g + co, ci, kh, kw] = sum_p G[p, co] x[p @ tap, ci]. Grid (COB, CIB, G*KH*KW)."""
    pid_co = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_t = tl.program_id(2)
    g = pid_t // (KH * KW)
    t = pid_t % (KH * KW)
    kh = t // KW
    kw = t % KW
    co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    ci = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cov = co < COUT_G
    cv = ci < CIN_G
    if IS_F64:
        acc = tl.zeros([BLOCK_CO, BLOCK_C], tl.float64)
    else:
        acc = tl.zeros([BLOCK_CO, BLOCK_C], tl.float32)
    p_end = P
    if HAS_MASK and not DENSE:
        p_end = tl.where(tl.load(bflag_ptr + ((g * tl.num_programs(0) + pid_co) * KH * KW + t) * CIB + pid_c)
                         != 0, P, 0)
    hw_o = Ho * Wo
    cout = G * COUT_G
    for p0 in range(0, p_end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        pv = p < P
        n = p // hw_o
        oh = (p % hw_o) // Wo
        ow = p % Wo
        ih = oh * SH - PH + kh * DH
        iw = ow * SW - PW + kw * DW
        ok = pv & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        pix = ((n.to(tl.int64) * H + ih) * W + iw) * G * CW + g * CW
        words = tl.load(bits_ptr + pix[:, None] + (ci >> 5)[None, :], mask=ok[:, None] & cv[None, :], other=0)
        xb = (words >> (ci & 31)[None, :]) & 1
        nonzero = True
        if SKIP_ZERO_TILES:
            nonzero = tl.max(xb) != 0
        if nonzero:
            gt = tl.load(g_ptr + (n.to(tl.int64) * cout * hw_o + p % hw_o)[:, None]
                         + ((g * COUT_G + co) * hw_o)[None, :], mask=pv[:, None] & cov[None, :], other=0.0)
            acc = mma(tl.trans(gt), xb.to(gt.dtype), acc, SPLIT, False)
    # gw layout [Cout, Cin_g, KH, KW]
    off = ((g * COUT_G + co).to(tl.int64)[:, None] * CIN_G + ci[None, :]) * (KH * KW) + t
    okw = cov[:, None] & cv[None, :]
    if HAS_MASK and not DENSE:
        keep = tl.load(mask_ptr + off, mask=okw, other=0) != 0
        acc = tl.where(keep, acc, 0.0)
    tl.store(gw_ptr + off, acc.to(gw_ptr.dtype.element_ty), mask=okw)
