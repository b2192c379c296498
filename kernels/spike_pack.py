"""Bit-packing of binary spikes and compaction of active columns, on the device.

Layout shared by every spike kernel (linear and conv):
    bits[r, g, w]  int32, r in [0, R) rows (linear: the N = T*B input rows; conv: the N*H*W input
    pixels, channels-last), g in [0, G) groups, w in [0, ceil(C/32)) words; bit j of word w holds
    the spike of channel 32*w + j of group g. A 0/1 fp16 spike costs 16 bits in HBM, a packed one 1.

Why packed: every spike kernel re-reads its input tile once per output tile (once per Cout/M
block); at 1 bit per spike those re-reads are 16x (fp16) to 32x (fp32) fewer bytes, and an
all-zero tile is recognised by reading its words alone (the skip test costs 1/32 of a load).

compact_active_columns builds, for every block of BLOCK_N rows, the list of columns in which
any of those rows fired, with a running offset inside one program per row block: the list and
its length stay on the device (no host sync, no atomics), and the GEMM reads its trip count
from memory. The linear kernel then gathers only those weight rows (event-driven K).
"""
import triton
import triton.language as tl


@triton.jit
def pack_spikes_kernel(x_ptr, bits_ptr, R, C, HW, G, CW, s_n, s_hw, s_c,
                       BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    """x element (row r, group g, channel c) sits at (r // HW) * s_n + (r % HW) * s_hw + (g*C + c) * s_c.

    Linear [N, K]: HW=1, s_n=K, s_hw=0, s_c=1, G=1.  Conv NCHW: HW=H*W, s_n=C*H*W, s_hw=1, s_c=H*W.
    Grid: (cdiv(R, BLOCK_R), G * cdiv(CW, BLOCK_W)). Writes bits[R, G, CW] (values != 0 are spikes).
    """
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    nwb = tl.cdiv(CW, BLOCK_W)
    g = pid_c // nwb
    wb = pid_c % nwb
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    words = wb * BLOCK_W + tl.arange(0, BLOCK_W)
    bit = tl.arange(0, 32)
    ch = words[:, None] * 32 + bit[None, :]                          # [W, 32]
    rbase = (rows // HW).to(tl.int64) * s_n + (rows % HW).to(tl.int64) * s_hw
    ptrs = x_ptr + rbase[:, None, None] + ((g * C + ch) * s_c)[None, :, :]
    ok = (rows < R)[:, None, None] & (ch < C)[None, :, :]
    x = tl.load(ptrs, mask=ok, other=0)
    b = (x != 0).to(tl.int32) << bit[None, None, :]
    packed = tl.sum(b, axis=2)                                        # disjoint bits: sum == or
    optr = bits_ptr + (rows.to(tl.int64) * G * CW + g * CW)[:, None] + words[None, :]
    tl.store(optr, packed, mask=(rows < R)[:, None] & (words < CW)[None, :])


@triton.jit
def compact_active_columns_kernel(bits_ptr, kidx_ptr, kcnt_ptr, R, K, KW,
                                  BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    """For rows [pid*BLOCK_N, +BLOCK_N) of bits[R, KW]: kidx[pid, :cnt] = columns with any spike
    (ascending), kcnt[pid] = cnt. Grid: (cdiv(R, BLOCK_N),). One program walks its row block
    left to right; the running offset replaces a global prefix sum."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    bit = tl.arange(0, 32)
    pos = tl.zeros([], tl.int32)
    for w0 in range(0, KW, BLOCK_W):
        words = w0 + tl.arange(0, BLOCK_W)
        wv = tl.load(bits_ptr + rows.to(tl.int64)[:, None] * KW + words[None, :],
                     mask=(rows < R)[:, None] & (words < KW)[None, :], other=0)
        if tl.max((wv != 0).to(tl.int32)) != 0:  # skip all-zero word tiles (bit 31 makes a word < 0)
            anyw = tl.max(((wv[:, :, None] >> bit[None, None, :]) & 1), axis=0)   # [W, 32]
            flags = tl.reshape(anyw, [BLOCK_W * 32])
            cols = w0 * 32 + tl.arange(0, BLOCK_W * 32)
            flags = tl.where(cols < K, flags, 0)
            dest = pos + tl.cumsum(flags, axis=0) - 1
            tl.store(kidx_ptr + pid.to(tl.int64) * K + dest, cols, mask=flags != 0)
            pos += tl.sum(flags, axis=0)
    tl.store(kcnt_ptr + pid, pos)
