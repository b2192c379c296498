// Shared by the snnsparse CUDA kernels: tile sizes, the conv/linear shape descriptor and
// small device helpers. Device code only (no ATen), so that the kernels in spike_kernels.cuh
// and lif_kernels.cuh can also be compiled as plain C++ by an emulator harness.
#pragma once

#include <cstdint>

#ifdef SNNSPARSE_CUDA_EMULATE
#include "emulate.cuh"  // CPU stand-ins for the CUDA built-ins (tests only)
#endif

namespace snnsparse {
namespace cuda {

// Block shape shared by the event-driven kernels. 256 threads = a 64-wide tile of output
// channels (one thread per channel, so shared-memory reads of a weight row are consecutive
// words, conflict-free) times 4 row groups. Each thread keeps kTilePx / 4 = 16 fp32
// accumulators in registers (indexed only by unrolled constants, never spilled to local
// memory). These are starting points, not tuned: the tile shapes are to be measured on a GPU.
constexpr int kThreads = 256;
constexpr int kTileCo = 64;                        // output channels (linear: outputs) per block
constexpr int kTilePx = 64;                        // output pixels (linear: rows N) per block
constexpr int kRowGroups = kThreads / kTileCo;     // 4
constexpr int kRowsPerThread = kTilePx / kRowGroups;  // 16
constexpr int kWord = 32;                          // spikes per bit-packed word
constexpr int kBitsPerGroup = kWord / kRowGroups;  // 8 input channels per thread in the weight grad

static_assert(kThreads % kTileCo == 0, "threads must be a multiple of the channel tile");
static_assert(kTilePx % kRowGroups == 0, "pixel tile must split evenly over row groups");
static_assert(kTilePx <= kThreads && kTileCo <= kThreads, "one thread per tile row is assumed");

// One descriptor for conv2d; linear is the 1x1 conv over a 1x1 image (N rows, K = Cin, M = Cout).
struct ConvShape {
  int64_t N, Cin, H, W;      // input
  int64_t G, Cig, CWg;       // groups, input channels per group, 32-bit words per group
  int64_t Cout, Coutg;       // output channels, per group
  int64_t KH, KW;            // kernel
  int64_t Ho, Wo, HWo;       // output spatial size, Ho*Wo
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t P;                 // output pixels N*Ho*Wo (the GEMM rows)
  int64_t co_tiles;          // ceil(Coutg / kTileCo)
};

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The shape descriptor from already-validated sizes (torch's output-size formula).
inline ConvShape conv_shape(int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t Cig, int64_t KH,
                            int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                            int64_t groups) {
  ConvShape s{};
  s.N = N;
  s.Cin = Cin;
  s.H = H;
  s.W = W;
  s.Cout = Cout;
  s.Cig = Cig;
  s.KH = KH;
  s.KW = KW;
  s.G = groups;
  s.Coutg = Cout / groups;
  s.CWg = ceil_div(Cig, kWord);
  s.sh = sh;
  s.sw = sw;
  s.ph = ph;
  s.pw = pw;
  s.dh = dh;
  s.dw = dw;
  const int64_t nh = H + 2 * ph - dh * (KH - 1) - 1, nw = W + 2 * pw - dw * (KW - 1) - 1;
  s.Ho = nh < 0 ? 0 : nh / sh + 1;  // floor division, as torch (C++ '/' truncates negatives)
  s.Wo = nw < 0 ? 0 : nw / sw + 1;
  s.HWo = s.Ho * s.Wo;
  s.P = N * s.HWo;
  s.co_tiles = ceil_div(s.Coutg, kTileCo);
  return s;
}

// A reduction split over grid.z: `splits` blocks along z, each taking `per_split` consecutive
// reduction steps; the host sums the fp32 partials (deterministic, no atomics).
struct SplitPlan {
  int64_t splits, per_split;
};

// Forward: split the (tap, word) reduction over grid.z when the pixel x channel tiles alone give
// fewer than about 2 blocks per SM, keeping at least 4 steps per split and the fp32 partial
// buffer [splits, N, Cout, Ho, Wo] under 2^26 elements. A heuristic, to be tuned on a GPU.
inline SplitPlan fwd_split_plan(const ConvShape& s, int64_t sms) {
  const int64_t blocks_xy = ceil_div(s.P, kTilePx) * s.G * s.co_tiles;
  const int64_t steps = s.KH * s.KW * s.CWg;
  const int64_t out_numel = s.P * s.Cout;
  int64_t splits = 1;
  if (blocks_xy > 0 && steps > 0 && out_numel > 0) {
    splits = ceil_div(2 * (sms > 0 ? sms : 1), blocks_xy);
    if (splits > steps / 4) splits = steps / 4;
    const int64_t cap = (int64_t(1) << 26) / out_numel;
    if (splits > cap) splits = cap;
    if (splits > 65535) splits = 65535;
    if (splits < 1) splits = 1;
  }
  SplitPlan plan;
  plan.per_split = steps > 0 ? ceil_div(steps, splits) : 1;
  plan.splits = steps > 0 ? ceil_div(steps, plan.per_split) : 1;
  return plan;
}

// Weight gradient: the pixel reduction (steps = pixel tiles) is split so that the grid has about
// 4 blocks per SM, with the fp32 partial buffer [splits, weight] kept under 2^26 elements.
// A heuristic, to be tuned on a GPU.
inline SplitPlan wgrad_split_plan(const ConvShape& s, int64_t sms) {
  const int64_t blocks_xy = s.G * s.co_tiles * s.KH * s.KW * s.CWg;
  const int64_t nchunks = ceil_div(s.P, kTilePx) > 0 ? ceil_div(s.P, kTilePx) : 1;
  const int64_t weight_numel = s.Cout * s.Cig * s.KH * s.KW;
  int64_t splits = ceil_div(4 * (sms > 0 ? sms : 1), blocks_xy > 0 ? blocks_xy : 1);
  if (splits > nchunks) splits = nchunks;
  const int64_t cap = weight_numel > 0 ? (int64_t(1) << 26) / weight_numel : 1;
  if (splits > cap) splits = cap;
  if (splits > 65535) splits = 65535;
  if (splits < 1) splits = 1;
  SplitPlan plan;
  plan.per_split = ceil_div(nchunks, splits);
  plan.splits = ceil_div(nchunks, plan.per_split);
  return plan;
}

// Explicitly rounded float/double arithmetic: the LIF kernels replay torch's eager op-by-op
// evaluation, and a contracted FMA would round differently from the reference.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double dev_abs(double x) { return fabs(x); }

}  // namespace cuda
}  // namespace snnsparse
