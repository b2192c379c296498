// Event-driven spike conv2d / linear kernels (device code). Host launchers: spike_ops.cu.
//
// Design (DESIGN.md section 4, GPU notes):
//  * Bit-packed spikes. pack_spikes_kernel turns binary spikes [N, Cin, H, W] into 32-bit words,
//    channels-last and per group: xb[N, H, W, G, CWg] (bit j of word cw = channel g*Cig+32cw+j).
//    A linear layer is the 1x1 conv over a 1x1 image, so one kernel family serves both.
//  * Implicit GEMM with weight-stationary tiles. A block owns kTilePx output pixels (rows; for
//    linear, rows are the N = T*B frames) x kTileCo output channels. The reduction runs over
//    (kernel tap, 32-channel word). For each step the block gathers one spike word per pixel
//    (padding reads as 0), and stages the 32 x kTileCo weight slab in shared memory once; every
//    fired spike of every pixel of the tile adds a shared-memory weight row into its register
//    accumulators. That is the T reuse: the T frames of a sample are rows of the same tile, so a
//    weight slab is fetched from global memory once per tile, not once per frame or per event.
//  * Only the work that exists: a thread walks the set bits of (spike word & mask word), so a
//    silent input or a pruned synapse costs no add, and binary input means no multiplies.
//    Whole steps whose spike words (or mask words) are all zero over the tile are skipped with
//    a block vote (__syncthreads_or): no weight load, no compute.
//  * No atomics per event: every output element is owned by one thread. Counting mode sums the
//    popcounts per thread and issues one 64-bit atomicAdd per block.
//  * fp32 accumulation for fp16/bf16/fp32 (double for float64); weights are converted when staged.
//  * A grid too small to fill the GPU (few rows, e.g. a linear layer with small T*B) splits the
//    reduction over grid.z into fp32 partials that the host sums (fwd_split_plan in common.cuh).
//  * The weight gradient (grad_out^T x spikes) is event-driven the same way, split over pixels
//    into fp32 partial sums that the host reduces with a deterministic sum (no atomics).
//    The input gradient is dense (grad_out is dense): the host uses cuBLAS / cuDNN for it.
#pragma once

#include "common.cuh"

namespace snnsparse {
namespace cuda {

// xb[((n*H*W + hw)*G + g)*CWg + cw]: thread per word; consecutive threads take consecutive
// pixels, so each of the 32 channel reads is coalesced across the warp (NCHW input).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
pack_spikes_kernel(const scalar_t* __restrict__ x, uint32_t* __restrict__ xb, const ConvShape s) {
  const int64_t HW = s.H * s.W;
  const int64_t total = s.N * s.G * s.CWg * HW;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t hw = idx % HW;
    int64_t t = idx / HW;
    const int64_t cw = t % s.CWg;
    t /= s.CWg;
    const int64_t g = t % s.G;
    const int64_t n = t / s.G;
    const int64_t c0 = g * s.Cig + cw * kWord;
    const int64_t left = s.Cig - cw * kWord;
    const int nb = left < kWord ? (int)left : kWord;
    const scalar_t* px = x + (n * s.Cin + c0) * HW + hw;
    uint32_t word = 0;
    for (int j = 0; j < nb; ++j) {
      if (static_cast<float>(px[j * HW]) != 0.0f) word |= 1u << j;
    }
    xb[((n * HW + hw) * s.G + g) * s.CWg + cw] = word;
  }
}

// mask [Cout, Cig, KH, KW] bool -> mb[(tap*CWg + cw)*Cout + co], bit j = mask[co, 32cw+j, tap].
// Input channels past Cig are 0, so they never count and never accumulate.
__global__ void __launch_bounds__(kThreads)
pack_mask_kernel(const bool* __restrict__ mask, uint32_t* __restrict__ mb, const ConvShape s) {
  const int64_t KHKW = s.KH * s.KW;
  const int64_t total = KHKW * s.CWg * s.Cout;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t co = idx % s.Cout;
    const int64_t t = idx / s.Cout;
    const int64_t cw = t % s.CWg;
    const int64_t tap = t / s.CWg;
    const int64_t left = s.Cig - cw * kWord;
    const int nb = left < kWord ? (int)left : kWord;
    uint32_t word = 0;
    for (int j = 0; j < nb; ++j) {
      if (mask[(co * s.Cig + cw * kWord + j) * KHKW + tap]) word |= 1u << j;
    }
    mb[idx] = word;
  }
}

// Forward. Grid: x = pixel tiles (ceil(P / kTilePx)), y = G * co_tiles, z = reduction splits.
// wt: weight transposed to [KH*KW, Cig, Cout] (coalesced slab loads along Cout).
// mb: packed mask or nullptr (HAS_MASK=false). out: [N, Cout, Ho, Wo] of out_t.
// The reduction runs over steps (tap, word) = 0 .. KH*KW*CWg-1; block z takes steps
// [z*steps_per_split, (z+1)*steps_per_split). With one split, out_t = scalar_t and the bias is
// added here; with several (a grid too small to fill the GPU, e.g. a linear layer with few rows),
// out_t = acc_t, out points at fp32 partials [splits, N, Cout, Ho, Wo], bias is nullptr, and the
// host sums the splits (deterministic; no atomics).
template <typename scalar_t, typename acc_t, typename out_t, bool HAS_MASK, bool COUNT>
__global__ void __launch_bounds__(kThreads)
spike_conv_fwd_kernel(const uint32_t* __restrict__ xb, const scalar_t* __restrict__ wt,
                      const scalar_t* __restrict__ bias, const uint32_t* __restrict__ mb,
                      out_t* __restrict__ out, unsigned long long* __restrict__ n_acc,
                      const ConvShape s, int64_t steps_per_split) {
  constexpr int kSlab = kWord * kTileCo;               // staged weight slab ws[32][kTileCo]
  constexpr int kStage = kTileCo * (kTilePx + 1);       // output staging os[kTileCo][kTilePx+1]
  constexpr int kSmem = kSlab > kStage ? kSlab : kStage;
  __shared__ __align__(16) acc_t smem[kSmem];
  __shared__ uint32_t xs[kTilePx];
  __shared__ uint32_t mk[kTileCo];
  __shared__ int64_t px_n[kTilePx];
  __shared__ int64_t px_ih[kTilePx];
  __shared__ int64_t px_iw[kTilePx];
  __shared__ unsigned long long s_cnt;

  const int tid = threadIdx.x;
  const int tx = tid % kTileCo;  // output channel within the tile
  const int ty = tid / kTileCo;  // row group: pixels ty, ty+4, ty+8, ...
  const int64_t g = blockIdx.y / s.co_tiles;
  const int64_t co0 = (blockIdx.y % s.co_tiles) * kTileCo;
  const int64_t p0 = (int64_t)blockIdx.x * kTilePx;
  const int64_t co = co0 + tx;         // within the group
  out += (int64_t)blockIdx.z * s.P * s.Cout;  // this split's partial (z = 0 without splitting)
  const bool co_ok = co < s.Coutg;
  const int64_t cog = g * s.Coutg + co;  // global output channel

  if (tid < kTilePx) {
    const int64_t p = p0 + tid;
    if (p < s.P) {
      const int64_t n = p / s.HWo;
      const int64_t hw = p % s.HWo;
      px_n[tid] = n;
      px_ih[tid] = (hw / s.Wo) * s.sh - s.ph;
      px_iw[tid] = (hw % s.Wo) * s.sw - s.pw;
    } else {
      px_n[tid] = -1;
    }
  }
  if (COUNT && tid == 0) s_cnt = 0;
  __syncthreads();

  acc_t acc[kRowsPerThread];
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) acc[r] = acc_t(0);
  unsigned long long cnt = 0;

  acc_t(*ws)[kTileCo] = reinterpret_cast<acc_t(*)[kTileCo]>(smem);
  const int64_t HW = s.H * s.W;
  const int64_t steps = s.KH * s.KW * s.CWg;
  const int64_t step0 = (int64_t)blockIdx.z * steps_per_split;
  const int64_t step1 = step0 + steps_per_split < steps ? step0 + steps_per_split : steps;
  for (int64_t step = step0; step < step1; ++step) {
    const int64_t tap = step / s.CWg, cw = step % s.CWg;
    const int64_t ki = tap / s.KW, kj = tap % s.KW;
    {
      __syncthreads();  // the previous step's readers of xs / mk / ws are done
      uint32_t word = 0;
      if (tid < kTilePx) {
        const int64_t n = px_n[tid];
        if (n >= 0) {
          const int64_t ih = px_ih[tid] + ki * s.dh;
          const int64_t iw = px_iw[tid] + kj * s.dw;
          if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W)
            word = xb[((n * HW + ih * s.W + iw) * s.G + g) * s.CWg + cw];
        }
        xs[tid] = word;
      }
      uint32_t mword = 0;
      if (tid < kTileCo) {
        if (co_ok) mword = HAS_MASK ? mb[(tap * s.CWg + cw) * s.Cout + cog] : 0xffffffffu;
        mk[tid] = mword;
      }
      // Skip the step when no pixel of the tile fired on these 32 channels at this tap, or
      // when every synapse of the tile's slab is pruned (both votes are block-uniform).
      if (!__syncthreads_or(word != 0)) continue;
      if (HAS_MASK && !__syncthreads_or(mword != 0)) continue;
      for (int e = tid; e < kSlab; e += kThreads) {
        const int ci = e / kTileCo, c = e % kTileCo;
        const int64_t cig = cw * kWord + ci;
        acc_t v = acc_t(0);
        if (cig < s.Cig && co0 + c < s.Coutg)
          v = static_cast<acc_t>(wt[(tap * s.Cig + cig) * s.Cout + g * s.Coutg + co0 + c]);
        ws[ci][c] = v;
      }
      __syncthreads();
      const uint32_t m = mk[tx];
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) {
        uint32_t bits = xs[r * kRowGroups + ty] & m;
        if (COUNT) cnt += (unsigned long long)__popc(bits);
        while (bits) {
          const int k = __ffs(bits) - 1;
          bits &= bits - 1;
          acc[r] += ws[k][tx];
        }
      }
    }
  }

  if (COUNT) {
    atomicAdd(&s_cnt, cnt);  // shared-memory atomic, once per thread
    __syncthreads();
    if (tid == 0 && s_cnt) atomicAdd(n_acc, s_cnt);  // one global atomic per block
  }

  const acc_t b = (bias != nullptr && co_ok) ? static_cast<acc_t>(bias[cog]) : acc_t(0);
  if (s.HWo == 1) {
    // Linear (and 1x1 outputs): out[p, cog] is contiguous along the channel: store directly.
#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r) {
      const int64_t p = p0 + r * kRowGroups + ty;
      if (p < s.P && co_ok) out[p * s.Cout + cog] = static_cast<out_t>(acc[r] + b);
    }
  } else {
    // NCHW output is contiguous along pixels: transpose the tile through shared memory
    // (row pitch kTilePx + 1 keeps both the write and the read conflict-free).
    __syncthreads();  // ws is reused as the staging buffer
    acc_t(*os)[kTilePx + 1] = reinterpret_cast<acc_t(*)[kTilePx + 1]>(smem);
#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r) os[tx][r * kRowGroups + ty] = acc[r] + b;
    __syncthreads();
    for (int e = tid; e < kTileCo * kTilePx; e += kThreads) {
      const int c = e / kTilePx, pp = e % kTilePx;
      const int64_t p = p0 + pp;
      if (p < s.P && co0 + c < s.Coutg) {
        const int64_t n = p / s.HWo, hw = p % s.HWo;
        out[(n * s.Cout + g * s.Coutg + co0 + c) * s.HWo + hw] = static_cast<out_t>(os[c][pp]);
      }
    }
  }
}

// Weight gradient, event-driven over the spikes:
//   gw[cog, ci, tap] = sum over output pixels p of gout[p, cog] * x[p shifted by tap, g*Cig+ci].
// Grid: x = G * co_tiles, y = taps * CWg, z = pixel splits of `chunks_per_split` pixel tiles.
// Thread (tx, ty) owns channel co0+tx and the 8 input channels ty*8..ty*8+7 of the word.
// partial: [splits, Cout, Cig, KH*KW] in acc_t, every element written exactly once (zeros
// included), then summed over splits on the host.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
spike_conv_wgrad_kernel(const uint32_t* __restrict__ xb, const scalar_t* __restrict__ gout,
                        acc_t* __restrict__ partial, const ConvShape s, int64_t chunks_per_split) {
  __shared__ uint32_t xs[kTilePx];
  __shared__ acc_t gs[kTilePx][kTileCo + 1];

  const int tid = threadIdx.x;
  const int tx = tid % kTileCo;
  const int ty = tid / kTileCo;
  const int64_t g = blockIdx.x / s.co_tiles;
  const int64_t co0 = (blockIdx.x % s.co_tiles) * kTileCo;
  const int64_t tap = blockIdx.y / s.CWg;
  const int64_t cw = blockIdx.y % s.CWg;
  const int64_t ki = tap / s.KW, kj = tap % s.KW;
  const int64_t split = blockIdx.z;
  const int64_t nchunks = ceil_div(s.P, kTilePx);
  const int64_t c_begin = split * chunks_per_split;
  const int64_t c_end = c_begin + chunks_per_split < nchunks ? c_begin + chunks_per_split : nchunks;
  const int64_t HW = s.H * s.W;

  acc_t acc[kBitsPerGroup];
#pragma unroll
  for (int j = 0; j < kBitsPerGroup; ++j) acc[j] = acc_t(0);

  for (int64_t chunk = c_begin; chunk < c_end; ++chunk) {
    const int64_t p0 = chunk * kTilePx;
    __syncthreads();
    uint32_t word = 0;
    if (tid < kTilePx) {
      const int64_t p = p0 + tid;
      if (p < s.P) {
        const int64_t n = p / s.HWo, hw = p % s.HWo;
        const int64_t ih = (hw / s.Wo) * s.sh - s.ph + ki * s.dh;
        const int64_t iw = (hw % s.Wo) * s.sw - s.pw + kj * s.dw;
        if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W)
          word = xb[((n * HW + ih * s.W + iw) * s.G + g) * s.CWg + cw];
      }
      xs[tid] = word;
    }
    if (!__syncthreads_or(word != 0)) continue;  // no spike on this word in the whole tile
    // Stage grad_out rows of the pixels that fired (consecutive threads: consecutive pixels,
    // coalesced for NCHW); silent pixels are not read at all.
    for (int e = tid; e < kTilePx * kTileCo; e += kThreads) {
      const int pp = e % kTilePx, c = e / kTilePx;
      const int64_t p = p0 + pp;
      acc_t v = acc_t(0);
      if (xs[pp] != 0 && p < s.P && co0 + c < s.Coutg) {
        const int64_t n = p / s.HWo, hw = p % s.HWo;
        v = static_cast<acc_t>(gout[(n * s.Cout + g * s.Coutg + co0 + c) * s.HWo + hw]);
      }
      gs[pp][c] = v;
    }
    __syncthreads();
    for (int pp = 0; pp < kTilePx; ++pp) {
      const uint32_t bits = (xs[pp] >> (ty * kBitsPerGroup)) & 0xffu;  // warp-uniform
      if (bits) {
        const acc_t gv = gs[pp][tx];
#pragma unroll
        for (int j = 0; j < kBitsPerGroup; ++j)
          if ((bits >> j) & 1u) acc[j] += gv;
      }
    }
  }

  const int64_t co = co0 + tx;
  if (co < s.Coutg) {
    const int64_t taps = s.KH * s.KW;
#pragma unroll
    for (int j = 0; j < kBitsPerGroup; ++j) {
      const int64_t ci = cw * kWord + ty * kBitsPerGroup + j;
      if (ci < s.Cig)
        partial[((split * s.Cout + g * s.Coutg + co) * s.Cig + ci) * taps + tap] = acc[j];
    }
  }
}

}  // namespace cuda
}  // namespace snnsparse
