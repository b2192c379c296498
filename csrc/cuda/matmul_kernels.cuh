// spike_matmul device code (host launcher: matmul.cu; CPU emulation: tests/cuda_emu.cpp).
//
//  * matmul_pack_kernel: a binary operand, read with any strides, as 32-bit words along the reduction dim:
//    bits[(e*R + r)*KW + w], bit j = x[e, r, 32w + j] != 0. Thread per word. a packs by rows (R = M); b by
//    columns (R = N, strides swapped), so both operands of the binary x binary product are rows of bits.
//  * matmul_bb_kernel: out[e, m, n] = sum_w popc(abits[e, m, w] & bbits[e, n, w]): AND + popcount, no float
//    arithmetic. Thread per output, consecutive threads on consecutive n (coalesced stores).
//  * matmul_sd_kernel: out[e, r, c] = sum over the set bits k of sbits[e, r, :] of d[e, k, c]: a fired spike
//    adds one element of the dense operand per thread, never multiplied, in ascending k; any strides for d
//    and out, so the "b binary" product runs as out^T = b^T @ a^T on the same kernel without copies.
// Counting mode: per-thread sums, reduced in shared memory, one 64-bit atomicAdd per block (no per-event
// atomics). Starting points, not tuned: nothing here has been timed on a GPU (snnsparse/ops/cuda.py).
#pragma once

#include "common.cuh"

namespace snnsparse {
namespace cuda {

struct MatmulShape {
  int64_t Bt, R, K, KW;   // entries, rows, reduction length, 32-bit words per row
};

// Strides (in elements) of a [Bt, R, K] operand as read by the pack kernel.
struct Strides3 {
  int64_t e, r, k;
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
matmul_pack_kernel(const scalar_t* __restrict__ x, uint32_t* __restrict__ bits, const MatmulShape s,
                   const Strides3 st) {
  const int64_t total = s.Bt * s.R * s.KW;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t w = idx % s.KW;
    const int64_t er = idx / s.KW;
    const int64_t r = er % s.R, e = er / s.R;
    const int64_t left = s.K - w * kWord;
    const int nb = left < kWord ? (int)left : kWord;
    const scalar_t* p = x + e * st.e + r * st.r + w * kWord * st.k;
    uint32_t word = 0;
    for (int j = 0; j < nb; ++j)
      if (static_cast<float>(p[j * st.k]) != 0.0f) word |= 1u << j;
    bits[idx] = word;
  }
}

// Sum of v over the block; thread 0 adds it to *n_acc (every thread of the block must call it).
__device__ inline void block_count(unsigned long long v, unsigned long long* n_acc) {
  __shared__ unsigned long long red[kThreads];
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0 && red[0] != 0) atomicAdd(n_acc, red[0]);
}

// out [Bt, M, N] contiguous.
template <typename scalar_t, bool COUNT>
__global__ void __launch_bounds__(kThreads)
matmul_bb_kernel(const uint32_t* __restrict__ abits, const uint32_t* __restrict__ bbits, scalar_t* __restrict__ out,
                 unsigned long long* n_acc, const int64_t Bt, const int64_t M, const int64_t N, const int64_t KW) {
  const int64_t total = Bt * M * N;
  unsigned long long mine = 0;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t n = idx % N;
    const int64_t em = idx / N;  // e * M + m
    const int64_t e = em / M;
    const uint32_t* a = abits + em * KW;
    const uint32_t* b = bbits + (e * N + n) * KW;
    int c = 0;
    for (int64_t w = 0; w < KW; ++w) c += __popc(a[w] & b[w]);
    out[idx] = static_cast<scalar_t>(static_cast<float>(c));
    if (COUNT) mine += (unsigned long long)c;
  }
  if (COUNT) block_count(mine, n_acc);
}

// out[e*o.e + r*o.r + c*o.k] = sum over set bits k of sbits[(e*R + r)*KW] of d[e*ds.e + k*ds.r + c*ds.k].
template <typename scalar_t, typename acc_t, bool COUNT>
__global__ void __launch_bounds__(kThreads)
matmul_sd_kernel(const uint32_t* __restrict__ sbits, const scalar_t* __restrict__ d, scalar_t* __restrict__ out,
                 unsigned long long* n_acc, const MatmulShape s, const int64_t C, const Strides3 ds,
                 const Strides3 os) {
  const int64_t total = s.Bt * s.R * C;
  unsigned long long mine = 0;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = idx % C;
    const int64_t er = idx / C;
    const int64_t r = er % s.R, e = er / s.R;
    const uint32_t* sb = sbits + er * s.KW;
    const scalar_t* de = d + e * ds.e + c * ds.k;
    acc_t acc = acc_t(0);
    int fired = 0;
    for (int64_t w = 0; w < s.KW; ++w) {
      uint32_t bitsw = sb[w];
      fired += __popc(bitsw);
      while (bitsw) {
        const int j = __ffs(bitsw) - 1;
        bitsw &= bitsw - 1;
        acc += static_cast<acc_t>(de[(w * kWord + j) * ds.r]);
      }
    }
    out[e * os.e + r * os.r + c * os.k] = static_cast<scalar_t>(acc);
    if (COUNT && c == 0) mine += (unsigned long long)fired * (unsigned long long)C;
  }
  if (COUNT) block_count(mine, n_acc);
}

}  // namespace cuda
}  // namespace snnsparse
