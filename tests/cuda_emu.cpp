// The device code of csrc/cuda (spike_kernels.cuh, lif_kernels.cuh) compiled by g++ against
// the CPU stand-ins of csrc/cuda/emulate.cuh, as a small C library that tests/test_cuda_ops.py
// loads with ctypes and checks against the reference ops on machines without a GPU.
// The host steps mirror csrc/cuda/spike_ops.cu and lif.cu (pack, transpose, launch, reduce).
// dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#define SNNSPARSE_CUDA_EMULATE 1
#include "lif_kernels.cuh"
#include "spike_kernels.cuh"

using namespace snnsparse::cuda;
using snnsparse_emu::launch;

namespace {

int64_t blocks_for(int64_t n) { return std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, kThreads), 1 << 20)); }

template <typename scalar_t>
using acc_of = typename std::conditional<std::is_same<scalar_t, double>::value, double, float>::type;

template <typename scalar_t>
void conv_fwd(const void* xv, const void* wv, const void* bv, const bool* mask, void* outv, unsigned long long* n_acc,
              const ConvShape& s, bool count, int64_t sms) {
  using acc_t = acc_of<scalar_t>;
  const scalar_t* x = static_cast<const scalar_t*>(xv);
  const scalar_t* w = static_cast<const scalar_t*>(wv);
  const scalar_t* bias = static_cast<const scalar_t*>(bv);
  scalar_t* out = static_cast<scalar_t*>(outv);
  const int64_t taps = s.KH * s.KW;
  // weight [Cout, Cig, KH, KW] -> wt [KH*KW, Cig, Cout] (spike_ops.cu: permute(2,3,1,0).contiguous())
  std::vector<scalar_t> wt(std::max<int64_t>(1, taps * s.Cig * s.Cout));
  for (int64_t co = 0; co < s.Cout; ++co)
    for (int64_t ci = 0; ci < s.Cig; ++ci)
      for (int64_t t = 0; t < taps; ++t) wt[(t * s.Cig + ci) * s.Cout + co] = w[(co * s.Cig + ci) * taps + t];
  const int64_t nxb = s.N * s.H * s.W * s.G * s.CWg;
  std::vector<uint32_t> xb(std::max<int64_t>(1, nxb), 0xdeadbeefu);  // poison: every word must be written
  if (nxb) launch(dim3(blocks_for(nxb)), dim3(kThreads), pack_spikes_kernel<scalar_t>, x, xb.data(), s);
  std::vector<uint32_t> mb;
  const int64_t nmb = taps * s.CWg * s.Cout;
  if (mask) {
    mb.assign(std::max<int64_t>(1, nmb), 0xdeadbeefu);
    if (nmb) launch(dim3(blocks_for(nmb)), dim3(kThreads), pack_mask_kernel, mask, mb.data(), s);
  }
  *n_acc = 0;
  if (s.P == 0 || s.Cout == 0) return;
  const SplitPlan plan = fwd_split_plan(s, sms);
  const dim3 grid((unsigned)ceil_div(s.P, kTilePx), (unsigned)(s.G * s.co_tiles), (unsigned)plan.splits);
  const uint32_t* mbp = mask ? mb.data() : nullptr;
  const uint32_t* xbp = xb.data();
  const scalar_t* wtp = wt.data();
  const int64_t ps = plan.per_split;
  if (plan.splits == 1) {  // as spike_ops.cu: bias in the kernel, output in the dtype
    if (mask) {
      if (count) launch(grid, dim3(kThreads), spike_conv_fwd_kernel<scalar_t, acc_t, scalar_t, true, true>, xbp, wtp, bias, mbp, out, n_acc, s, ps);
      else launch(grid, dim3(kThreads), spike_conv_fwd_kernel<scalar_t, acc_t, scalar_t, true, false>, xbp, wtp, bias, mbp, out, n_acc, s, ps);
    } else {
      if (count) launch(grid, dim3(kThreads), spike_conv_fwd_kernel<scalar_t, acc_t, scalar_t, false, true>, xbp, wtp, bias, mbp, out, n_acc, s, ps);
      else launch(grid, dim3(kThreads), spike_conv_fwd_kernel<scalar_t, acc_t, scalar_t, false, false>, xbp, wtp, bias, mbp, out, n_acc, s, ps);
    }
    return;
  }
  const int64_t numel = s.P * s.Cout;
  std::vector<acc_t> partial(plan.splits * numel, acc_t(12345));  // poison: every element must be written
  acc_t* dst = partial.data();
  const scalar_t* nob = nullptr;
  if (mask) {
    if (count) launch(grid, dim3(kThreads), spike_conv_fwd_kernel<scalar_t, acc_t, acc_t, true, true>, xbp, wtp, nob, mbp, dst, n_acc, s, ps);
    else launch(grid, dim3(kThreads), spike_conv_fwd_kernel<scalar_t, acc_t, acc_t, true, false>, xbp, wtp, nob, mbp, dst, n_acc, s, ps);
  } else {
    if (count) launch(grid, dim3(kThreads), spike_conv_fwd_kernel<scalar_t, acc_t, acc_t, false, true>, xbp, wtp, nob, mbp, dst, n_acc, s, ps);
    else launch(grid, dim3(kThreads), spike_conv_fwd_kernel<scalar_t, acc_t, acc_t, false, false>, xbp, wtp, nob, mbp, dst, n_acc, s, ps);
  }
  for (int64_t i = 0; i < numel; ++i) {
    acc_t v = 0;
    for (int64_t z = 0; z < plan.splits; ++z) v += partial[z * numel + i];
    const int64_t co = (i / s.HWo) % s.Cout;
    if (bias) v += static_cast<acc_t>(bias[co]);
    out[i] = static_cast<scalar_t>(v);
  }
}

// grad_weight (unmasked) as the weight dtype; sms picks the split plan like the GPU would.
template <typename scalar_t>
void conv_wgrad(const void* gv, const void* xv, void* gwv, const ConvShape& s, int64_t sms) {
  using acc_t = acc_of<scalar_t>;
  const scalar_t* gout = static_cast<const scalar_t*>(gv);
  const scalar_t* x = static_cast<const scalar_t*>(xv);
  scalar_t* gw = static_cast<scalar_t*>(gwv);
  const int64_t wnumel = s.Cout * s.Cig * s.KH * s.KW;
  if (wnumel == 0) return;
  const SplitPlan plan = wgrad_split_plan(s, sms);
  const int64_t nxb = s.N * s.H * s.W * s.G * s.CWg;
  std::vector<uint32_t> xb(std::max<int64_t>(1, nxb), 0xdeadbeefu);
  if (nxb) launch(dim3(blocks_for(nxb)), dim3(kThreads), pack_spikes_kernel<scalar_t>, x, xb.data(), s);
  std::vector<acc_t> partial(plan.splits * wnumel, acc_t(12345));  // poison: every element must be written
  const dim3 grid((unsigned)(s.G * s.co_tiles), (unsigned)(s.KH * s.KW * s.CWg), (unsigned)plan.splits);
  launch(grid, dim3(kThreads), spike_conv_wgrad_kernel<scalar_t, acc_t>, (const uint32_t*)xb.data(), gout,
         partial.data(), s, plan.per_split);
  for (int64_t i = 0; i < wnumel; ++i) {
    acc_t v = 0;
    for (int64_t z = 0; z < plan.splits; ++z) v += partial[z * wnumel + i];
    gw[i] = static_cast<scalar_t>(v);
  }
}

template <typename scalar_t>
void lif_fwd(const void* x, const void* v0, void* spk, void* vlast, void* h, const void* k, const LifParams& p) {
  using acc_t = acc_of<scalar_t>;
  if (p.T == 0 || p.N == 0) return;
  launch(dim3(blocks_for(p.N)), dim3(kThreads), lif_fwd_kernel<scalar_t, acc_t>, (const scalar_t*)x,
         (const scalar_t*)v0, (scalar_t*)spk, (scalar_t*)vlast, (scalar_t*)h, (const scalar_t*)k, p);
}

// gkn: per-neuron dL/dk in opmath (float for fp16/bf16), or nullptr.
template <typename scalar_t>
void lif_bwd(const void* gs, const void* gvl, const void* gh, const void* h, void* gx, void* gv0, const void* k,
             const void* x, const void* v0, void* gkn, const LifParams& p) {
  using acc_t = acc_of<scalar_t>;
  if (p.T == 0 || p.N == 0) return;
  launch(dim3(blocks_for(p.N)), dim3(kThreads), lif_bwd_kernel<scalar_t, acc_t>, (const scalar_t*)gs,
         (const scalar_t*)gvl, (const scalar_t*)gh, (const scalar_t*)h, (scalar_t*)gx, (scalar_t*)gv0,
         (const scalar_t*)k, (const scalar_t*)x, (const scalar_t*)v0, (acc_t*)gkn, p);
}

#define EMU_DISPATCH(dtype, FN, ...)                     \
  switch (dtype) {                                       \
    case 0: FN<float>(__VA_ARGS__); break;               \
    case 1: FN<double>(__VA_ARGS__); break;              \
    case 2: FN<c10::Half>(__VA_ARGS__); break;           \
    case 3: FN<c10::BFloat16>(__VA_ARGS__); break;       \
    default: return 1;                                   \
  }

}  // namespace

extern "C" {

// shape: N, Cin, H, W, Cout, Cig, KH, KW, sh, sw, ph, pw, dh, dw, groups (15 int64)
int emu_conv_fwd(int dtype, const void* x, const void* w, const void* bias, const bool* mask, void* out,
                 long long* n_acc, const long long* shape, int count, long long sms) {
  const ConvShape s = conv_shape(shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6], shape[7],
                                 shape[8], shape[9], shape[10], shape[11], shape[12], shape[13], shape[14]);
  unsigned long long n = 0;
  EMU_DISPATCH(dtype, conv_fwd, x, w, bias, mask, out, &n, s, count != 0, (int64_t)sms);
  *n_acc = (long long)n;
  return 0;
}

int emu_conv_wgrad(int dtype, const void* gout, const void* x, void* gw, const long long* shape, long long sms) {
  const ConvShape s = conv_shape(shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6], shape[7],
                                 shape[8], shape[9], shape[10], shape[11], shape[12], shape[13], shape[14]);
  EMU_DISPATCH(dtype, conv_wgrad, gout, x, gw, s, (int64_t)sms);
  return 0;
}

// Number of reduction splits the forward uses for this shape on `sms` SMs.
long long emu_fwd_splits(const long long* shape, long long sms) {
  const ConvShape s = conv_shape(shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6], shape[7],
                                 shape[8], shape[9], shape[10], shape[11], shape[12], shape[13], shape[14]);
  return fwd_split_plan(s, sms).splits;
}

// Number of pixel splits the weight gradient uses for this shape on `sms` SMs.
long long emu_wgrad_splits(const long long* shape, long long sms) {
  const ConvShape s = conv_shape(shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6], shape[7],
                                 shape[8], shape[9], shape[10], shape[11], shape[12], shape[13], shape[14]);
  return wgrad_split_plan(s, sms).splits;
}

// charge: 0 lif, 1 if, 2 plif (k: a scalar of the dtype, read for plif only).
int emu_lif_fwd(int dtype, const void* x, const void* v0, void* spk, void* vlast, void* h, const void* k, long long T,
                long long N, double tau, double vth, int hard, double vr, int decay_input, int charge) {
  const LifParams p = make_lif_params(T, N, dtype == 1, tau, vth, hard != 0, vr, decay_input != 0, false, 0, 1.0,
                                      charge);
  EMU_DISPATCH(dtype, lif_fwd, x, v0, spk, vlast, h, k, p);
  return 0;
}

int emu_lif_bwd(int dtype, const void* gs, const void* gvl, const void* gh, const void* h, void* gx, void* gv0,
                const void* k, const void* x, const void* v0, void* gkn, long long T, long long N, double tau,
                double vth, int hard, double vr, int decay_input, int detach_reset, int surrogate, double alpha,
                int charge) {
  const LifParams p = make_lif_params(T, N, dtype == 1, tau, vth, hard != 0, vr, decay_input != 0,
                                      detach_reset != 0, surrogate, alpha, charge);
  EMU_DISPATCH(dtype, lif_bwd, gs, gvl, gh, h, gx, gv0, k, x, v0, gkn, p);
  return 0;
}

}  // extern "C"
