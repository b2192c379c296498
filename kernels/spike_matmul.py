"""spike_matmul on Triton: out[e] = a[e] @ b[e] where one or both operands are spikes (values 0/1).

binary x binary (spike_matmul_bb_kernel): both operands arrive bit-packed along the reduction dim by
spike_pack.pack_spikes_kernel, a as rows abits[Bt*M, KW] and b as columns bbits[Bt*N, KW] (int32 words). A
program owns a [BLOCK_M, BLOCK_N] output tile of one batch entry and accumulates, word by word,
popcount(a_word & b_word): K/32 AND + popcount per output, no float arithmetic, 1/32 of the fp32 bytes
per re-read operand tile. popcount is the SWAR bit count (portable: the interpreter has no popc).

spike x dense (spike_matmul_sd_kernel): out[e, r, c] = sum_k s[e, r, k] * d[e, k, c] on tensor cores with
fp32 accumulation, for any strides, so the "b binary" product runs as out^T = b^T @ a^T without copies. A
K block whose spike tile is all zero is skipped (no dense load, no MMA): the event-driven part on a GPU.
The spike tile is exact in TF32, so an fp32 dense operand is split once (common.mma: 2 TF32 MMAs).
Counting: programs of the first column block add (fired spikes in their tile) x C to a per-program partial.
"""
import triton
import triton.language as tl

from .common import mma


@triton.jit
def popcount32(x):
    """Set bits of each int32 word (SWAR on the unsigned bits)."""
    x = x.to(tl.uint32, bitcast=True)
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    x = (x * 0x01010101) >> 24
    return x.to(tl.int32)


@triton.jit
def spike_matmul_bb_kernel(abits_ptr,   # int32 [Bt*M, KW]: a's rows, bit j of word w = a[e, m, 32w + j]
                           bbits_ptr,   # int32 [Bt*N, KW]: b's columns, bit j of word w = b[e, 32w + j, n]
                           out_ptr,     # [Bt, M, N] float, contiguous
                           part_ptr,    # int64 [programs]: coincidences per program (COUNT)
                           M, N, KW,
                           COUNT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.program_id(2).to(tl.int64)
    ms = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mv = ms < M
    nv = ns < N
    arow = (e * M + ms.to(tl.int64)) * KW
    bcol = (e * N + ns.to(tl.int64)) * KW
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.int32)
    for w in range(0, KW):
        aw = tl.load(abits_ptr + arow + w, mask=mv, other=0)
        bw = tl.load(bbits_ptr + bcol + w, mask=nv, other=0)
        acc += popcount32(aw[:, None] & bw[None, :])
    ok = mv[:, None] & nv[None, :]
    tl.store(out_ptr + (e * M + ms.to(tl.int64))[:, None] * N + ns[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=ok)
    if COUNT:
        pid = (tl.program_id(2) * tl.num_programs(0) + pid_m) * tl.num_programs(1) + pid_n
        tl.store(part_ptr + pid, tl.sum(tl.sum(tl.where(ok, acc, 0), axis=1), axis=0).to(tl.int64))


@triton.jit
def spike_matmul_sd_kernel(s_ptr,      # spikes [Bt, R, K] (0/1, float), strides s_se, s_sr, s_sk
                           d_ptr,      # dense  [Bt, K, C] (float), strides s_de, s_dk, s_dc
                           out_ptr,    # [Bt, R, C], strides s_oe, s_or, s_oc
                           part_ptr,   # int64 [programs]: fired spikes x C per program (COUNT)
                           R, K, C,
                           s_se, s_sr, s_sk, s_de, s_dk, s_dc, s_oe, s_or, s_oc,
                           COUNT: tl.constexpr, SPLIT: tl.constexpr, IS_F64: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    e = tl.program_id(2).to(tl.int64)
    rs = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cs = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    rv = rs < R
    cv = cs < C
    if IS_F64:
        acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float64)
    else:
        acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    fired = tl.zeros([], tl.int64)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kv = ks < K
        s = tl.load(s_ptr + e * s_se + rs.to(tl.int64)[:, None] * s_sr + ks.to(tl.int64)[None, :] * s_sk,
                    mask=rv[:, None] & kv[None, :], other=0.0)
        nz = tl.sum(tl.sum((s != 0).to(tl.int32), axis=1), axis=0)
        if nz != 0:  # no spike in this tile: nothing to add
            d = tl.load(d_ptr + e * s_de + ks.to(tl.int64)[:, None] * s_dk + cs.to(tl.int64)[None, :] * s_dc,
                        mask=kv[:, None] & cv[None, :], other=0.0)
            acc = mma(s.to(d.dtype), d, acc, False, SPLIT)
            fired += nz.to(tl.int64)
    tl.store(out_ptr + e * s_oe + rs.to(tl.int64)[:, None] * s_or + cs.to(tl.int64)[None, :] * s_oc,
             acc.to(out_ptr.dtype.element_ty), mask=rv[:, None] & cv[None, :])
    if COUNT:
        pid = (tl.program_id(2) * tl.num_programs(0) + pid_r) * tl.num_programs(1) + pid_c
        tl.store(part_ptr + pid, tl.where(pid_c == 0, fired * C, 0))
