"""Event-driven spike Linear: out[N, M] = x[N, K] @ (W*mask)^T + b, and its two gradients.

x arrives bit-packed (spike_pack.py): bits[N, 1, KW]. The weight arrives prepared by the op
(snnsparse/ops/triton.py): wt[K, M] = (W*mask)^T, contiguous, so one spike column k is one
contiguous weight row wt[k, :] (a weight-stationary slab of M values).

Forward (spike_linear_fwd_kernel), grid (cdiv(N, BLOCK_N), cdiv(M, BLOCK_M)):
  - the K loop runs over the *active columns* of this row block only (kidx/kcnt from
    compact_active_columns_kernel): a column none of the BLOCK_N rows fired in is never
    fetched. The trip count is read from device memory: no host sync.
  - BLOCK_N rows (of the flattened T*B frames) share every fetched weight slab: a weight row
    is read once per row block and added into the accumulators of every row that fired in it
    (T-reuse; ordering the rows so a block holds the T frames of the same samples, whose
    spikes correlate, would make the active-column lists shorter: not done, to be measured).
  - the gathered columns form a dense [BLOCK_N, BLOCK_K] 0/1 tile for a tensor-core MMA: per
    event work is an add into a register accumulator, never a global atomic.
  - with a mask, a chunk of gathered columns whose weights are all pruned in this M block is
    skipped (mcnt[m_block, k] = kept synapses of column k in the block).
  - counting mode: the kernel adds, for each processed chunk, sum_k colsum_x[k] * mcnt[k]
    (= accumulations the event-driven kernel performs) into a per-program int64 partial.
grad_in[N, K] = G[N, M] @ (W*mask) (spike_linear_grad_in_kernel): dense G, skips all-pruned
  weight blocks (bflag[m_block, k_block] = kept count).
grad_w[M, K] = G^T @ x (spike_linear_grad_w_kernel): skips row tiles whose spike words are all
  zero (tested on the packed words; SKIP_ZERO_TILES, since the data-dependent branch costs the
  loop its software pipelining where tiles are rarely empty), and whole all-pruned blocks
  unless dense_weight_grad.
"""
import triton
import triton.language as tl

from .common import mma


@triton.jit
def spike_linear_fwd_kernel(bits_ptr, kidx_ptr, kcnt_ptr, wt_ptr, mcnt_ptr, b_ptr, out_ptr, part_ptr,
                            N, M, K, KW,
                            HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, COUNT: tl.constexpr,
                            SPLIT: tl.constexpr, IS_F64: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ms = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rv = rows < N
    mv = ms < M
    rows64 = rows.to(tl.int64)
    if IS_F64:
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float64)
    else:
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    cnt = tl.zeros([], tl.int64)
    n_active = tl.load(kcnt_ptr + pid_n)
    m_valid = tl.minimum(M - pid_m * BLOCK_M, BLOCK_M)
    for i in range(0, n_active, BLOCK_K):
        j = i + tl.arange(0, BLOCK_K)
        jv = j < n_active
        kk = tl.load(kidx_ptr + pid_n.to(tl.int64) * K + j, mask=jv, other=0)
        if HAS_MASK:
            mc = tl.load(mcnt_ptr + pid_m.to(tl.int64) * K + kk, mask=jv, other=0)
            run = tl.max(mc) > 0  # all gathered columns pruned in this M block: nothing to add
        else:
            mc = tl.where(jv, m_valid, 0)
            run = True  # static: no branch, the loop stays pipelinable
        if run:
            words = tl.load(bits_ptr + rows64[:, None] * KW + (kk >> 5)[None, :],
                            mask=rv[:, None] & jv[None, :], other=0)
            xb = (words >> (kk & 31)[None, :]) & 1
            w = tl.load(wt_ptr + kk.to(tl.int64)[:, None] * M + ms[None, :],
                        mask=jv[:, None] & mv[None, :], other=0.0)
            acc = mma(xb.to(w.dtype), w, acc, False, SPLIT)
            if COUNT:
                cnt += tl.sum(tl.sum(xb, axis=0) * mc, axis=0).to(tl.int64)
    if HAS_BIAS:
        acc += tl.load(b_ptr + ms, mask=mv, other=0.0).to(acc.dtype)[None, :]
    tl.store(out_ptr + rows64[:, None] * M + ms[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rv[:, None] & mv[None, :])
    if COUNT:
        tl.store(part_ptr + pid_n * tl.num_programs(1) + pid_m, cnt)


@triton.jit
def spike_linear_grad_in_kernel(g_ptr, wt_ptr, bflag_ptr, gin_ptr, N, M, K, KB,
                                HAS_MASK: tl.constexpr, SPLIT: tl.constexpr, IS_F64: tl.constexpr,
                                BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """gin[N, K] = G[N, M] @ (W*mask)[M, K]; wt = (W*mask)^T [K, M]. Grid (cdiv(N,BN), cdiv(K,BK))."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rv = rows < N
    kv = ks < K
    rows64 = rows.to(tl.int64)
    if IS_F64:
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float64)
    else:
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for m0 in range(0, M, BLOCK_M):
        run = True
        if HAS_MASK:
            run = tl.load(bflag_ptr + (m0 // BLOCK_M) * KB + pid_k) != 0
        if run:
            ms = m0 + tl.arange(0, BLOCK_M)
            mv = ms < M
            g = tl.load(g_ptr + rows64[:, None] * M + ms[None, :], mask=rv[:, None] & mv[None, :], other=0.0)
            w = tl.load(wt_ptr + ks.to(tl.int64)[:, None] * M + ms[None, :], mask=kv[:, None] & mv[None, :],
                        other=0.0)
            acc = mma(g, tl.trans(w), acc, SPLIT, SPLIT)
    tl.store(gin_ptr + rows64[:, None] * K + ks[None, :], acc.to(gin_ptr.dtype.element_ty),
             mask=rv[:, None] & kv[None, :])


@triton.jit
def spike_linear_grad_w_kernel(g_ptr, bits_ptr, mask_ptr, bflag_ptr, gw_ptr, N, M, K, KW, KB,
                               HAS_MASK: tl.constexpr, DENSE: tl.constexpr, SPLIT: tl.constexpr,
                               IS_F64: tl.constexpr, SKIP_ZERO_TILES: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """gw[M, K] = G^T[M, N] @ x[N, K] (times mask unless DENSE). Grid (cdiv(M,BM), cdiv(K,BK))."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    ms = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mv = ms < M
    kv = ks < K
    if IS_F64:
        acc = tl.zeros([BLOCK_M, BLOCK_K], tl.float64)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
    n_end = N
    if HAS_MASK and not DENSE:
        # A block whose synapses are all pruned has a zero (masked) gradient: no work at all.
        n_end = tl.where(tl.load(bflag_ptr + pid_m * KB + pid_k) != 0, N, 0)
    for n0 in range(0, n_end, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rv = rows < N
        words = tl.load(bits_ptr + rows.to(tl.int64)[:, None] * KW + (ks >> 5)[None, :],
                        mask=rv[:, None] & kv[None, :], other=0)
        xb = (words >> (ks & 31)[None, :]) & 1
        run = True
        if SKIP_ZERO_TILES:
            run = tl.max(xb) != 0  # an all-zero spike tile adds nothing (a branch: no pipelining)
        if run:
            g = tl.load(g_ptr + rows.to(tl.int64)[:, None] * M + ms[None, :], mask=rv[:, None] & mv[None, :],
                        other=0.0)
            acc = mma(tl.trans(g), xb.to(g.dtype), acc, SPLIT, False)
    out = ms.to(tl.int64)[:, None] * K + ks[None, :]
    ok = mv[:, None] & kv[None, :]
    if HAS_MASK and not DENSE:
        keep = tl.load(mask_ptr + out, mask=ok, other=0) != 0
        acc = tl.where(keep, acc, 0.0)
    tl.store(gw_ptr + out, acc.to(gw_ptr.dtype.element_ty), mask=ok)
