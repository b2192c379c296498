// Inference max-pool on CPU (snnsparse::max_pool2d): torch's max_pool2d without the argmax indices.
// torch's CPU max_pool2d always computes indices (max_pool2d_with_indices, also under no_grad): on a
// spiking ResNet's stem ([32, 64, 16, 16] spikes, 3x3 stride 2 pad 1) it was 14% of the optimized
// model's time (bench/RESULTS.md, issue 13 profile). Of binary spikes the max of a window is its OR; of
// bool / uint8 spikes it reads a byte per spike. Same values as torch for every input: the window
// covers the same elements (padding is not a value: a window holds at least one input element), and
// a NaN wins as in torch's kernel (`val > max || isnan(val)`). (Where a window's maximum is a zero held both
// as +0.0 and -0.0, which sign comes out can differ from torch's: the values are equal.)
#include <cmath>
#include <limits>

#include "common.h"

namespace snnsparse {
namespace cpu {
namespace {

// torch's pooling output size (aten/src/ATen/native/Pool.h pooling_output_shape), one dim.
int64_t pool_out(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil, bool ceil_mode) {
  const int64_t num = in + 2 * pad - dil * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;  // the last window must start inside the input
  return out;
}

template <typename T>
inline bool takes(T v, T m) {
  if constexpr (std::is_floating_point<T>::value) return v > m || std::isnan(v);
  return v > m;
}

// Window bounds of one dim: for output o, the taps [lo[o], hi[o]) fall inside [0, size). Computed once
// per call: divisions per output were most of the time (869 us for [32, 64, 16, 16] 3x3 s2 p1 spikes,
// 12.6% of an optimized spiking ResNet-18; see bench/RESULTS.md for the time after).
void window_bounds(int64_t out, int64_t size, int64_t k, int64_t stride, int64_t pad, int64_t dil,
                   std::vector<int64_t>& lo, std::vector<int64_t>& hi) {
  lo.resize(out);
  hi.resize(out);
  for (int64_t o = 0; o < out; ++o) {
    const int64_t start = o * stride - pad;
    int64_t a = 0, b = k;
    while (a < k && start + a * dil < 0) ++a;
    while (b > a && start + (b - 1) * dil >= size) --b;
    lo[o] = a;
    hi[o] = b;
  }
}

template <typename T>
void max_pool_planes(const T* x, T* y, int64_t planes, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t kh,
                     int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  const T lowest = std::is_floating_point<T>::value ? -std::numeric_limits<T>::infinity()
                                                    : std::numeric_limits<T>::lowest();
  std::vector<int64_t> ilo, ihi, jlo, jhi;
  window_bounds(Ho, H, kh, sh, ph, dh, ilo, ihi);
  window_bounds(Wo, W, kw, sw, pw, dw, jlo, jhi);
  // Outputs [oxa, oxb) have their whole window inside the row (a contiguous range: window starts grow with
  // ox); the others (at the padded edges) take the per-output loop.
  const bool pairs = kw == 2 && sw == 2 && pw == 0 && dw == 1 && 2 * Wo <= W;
  int64_t oxa = 0, oxb = Wo;
  while (oxa < Wo && (jlo[oxa] != 0 || jhi[oxa] != kw)) ++oxa;
  while (oxb > oxa && (jlo[oxb - 1] != 0 || jhi[oxb - 1] != kw)) --oxb;
  at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    // Separable: per output row, the max of its window's input rows (contiguous, vectorised), then per
    // output pixel the max of kw entries of that row. 3x3 stride 2 reads each row max 3 times instead of
    // doing 9 scalar compares per output.
    std::vector<T> rowmax(W);
    for (int64_t p = p0; p < p1; ++p) {
      const T* xp = x + p * H * W;
      T* yp = y + p * Ho * Wo;
      for (int64_t oy = 0; oy < Ho; ++oy) {
        const int64_t y0 = oy * sh - ph;
        T* __restrict__ rm = rowmax.data();
        std::fill(rowmax.begin(), rowmax.end(), lowest);
        for (int64_t i = ilo[oy]; i < ihi[oy]; ++i) {
          const T* __restrict__ row = xp + (y0 + i * dh) * W;
#pragma omp simd
          for (int64_t w = 0; w < W; ++w) rm[w] = takes(row[w], rm[w]) ? row[w] : rm[w];
        }
        T* __restrict__ yr = yp + oy * Wo;
        // Interior outputs tap by tap (torch's order: the later element wins only when larger or NaN), each
        // tap a pass over the outputs with no dependency from one output to the next. One output at a time,
        // its kw compares were one dependency chain: 745 us for [32, 64, 16, 16] fp32 3x3 stride 2 pad 1 (a
        // spiking ResNet's stem pool, 2 threads, EPYC AVX2 host), 5.5% of an optimized spiking_resnet18.
        if (pairs) {
          // 2-wide windows at stride 2, all inside the row (VGG's and CIFAR nets' 2x2 pools): a fixed
          // two-compare body the compiler vectorises (the tap-by-tap loop below reads with stride 2: 647 vs
          // 468 us for [32, 64, 32, 32] fp32, 756 vs 193 us uint8, 2 threads, EPYC AVX2 host).
#pragma omp simd
          for (int64_t ox = 0; ox < Wo; ++ox) {
            const T a = rm[2 * ox], b = rm[2 * ox + 1];
            yr[ox] = takes(b, a) ? b : a;
          }
          continue;
        }
        for (int64_t ox = oxa; ox < oxb; ++ox) yr[ox] = rm[ox * sw - pw];
        for (int64_t j = 1; j < kw; ++j) {
          const int64_t off = j * dw - pw;
#pragma omp simd
          for (int64_t ox = oxa; ox < oxb; ++ox) {
            const T v = rm[ox * sw + off];
            yr[ox] = takes(v, yr[ox]) ? v : yr[ox];
          }
        }
        auto edge = [&](int64_t ox) {  // a window cut by the padding: its own taps only
          const int64_t x0 = ox * sw - pw;
          T m = lowest;
          for (int64_t j = jlo[ox]; j < jhi[ox]; ++j) {
            const T v = rm[x0 + j * dw];
            m = takes(v, m) ? v : m;
          }
          yr[ox] = m;
        };
        for (int64_t ox = 0; ox < oxa; ++ox) edge(ox);
        for (int64_t ox = oxb; ox < Wo; ++ox) edge(ox);
      }
    }
  });
}

at::Tensor max_pool2d(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, bool ceil_mode) {
  const char* op = "snnsparse::max_pool2d";
  check_cpu(x, op, "x");
  const at::ScalarType st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kBool || st == at::kByte, op,
                   ": x must be float32, float64, bool or uint8, got ", st);
  TORCH_CHECK(x.dim() == 4, op, ": x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": kernel_size, stride, padding and dilation must have 2 values");
  int64_t out[2];
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(kernel[d] >= 1 && stride[d] >= 1 && dilation[d] >= 1 && padding[d] >= 0, op,
                ": kernel_size, stride and dilation must be >= 1 and padding >= 0");
    // torch's rule: the padding is at most half the (dilated) window, so every window holds an input element
    TORCH_CHECK(padding[d] <= ((kernel[d] - 1) * dilation[d] + 1) / 2, op,
                ": padding must be at most half of the effective kernel size, got padding ", padding[d],
                " for kernel ", kernel[d], " dilation ", dilation[d]);
    out[d] = pool_out(x.size(2 + d), kernel[d], padding[d], stride[d], dilation[d], ceil_mode);
    TORCH_CHECK(out[d] >= 1, op, ": input ", x.size(2), "x", x.size(3), " is too small for the window");
  }
  if (st == at::kBool || st == at::kByte) {
    // torch's max of a window with no input element (dilation and padding can make one) is -inf; a
    // byte has no -inf, and 0 there would be another value than the float model's: refused.
    std::vector<int64_t> lo, hi;
    for (int d = 0; d < 2; ++d) {
      window_bounds(out[d], x.size(2 + d), kernel[d], stride[d], padding[d], dilation[d], lo, hi);
      for (int64_t o = 0; o < out[d]; ++o)
        TORCH_CHECK(lo[o] < hi[o], op, ": with this padding and dilation a window covers no input element (torch's "
                    "max is -inf there, which a bool / uint8 result cannot hold); pool float input instead");
    }
  }
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({x.size(0), x.size(1), out[0], out[1]}, x.options());
  if (y.numel() == 0) return y;
  const int64_t planes = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  auto run = [&](auto* xp, auto* yp) {
    max_pool_planes(xp, yp, planes, H, W, out[0], out[1], kernel[0], kernel[1], stride[0], stride[1], padding[0],
                    padding[1], dilation[0], dilation[1]);
  };
  if (st == at::kFloat) run(xc.const_data_ptr<float>(), y.mutable_data_ptr<float>());
  else if (st == at::kDouble) run(xc.const_data_ptr<double>(), y.mutable_data_ptr<double>());
  else run(static_cast<const uint8_t*>(xc.const_data_ptr()), static_cast<uint8_t*>(y.mutable_data_ptr()));
  return y;
}

}  // namespace
}  // namespace cpu
}  // namespace snnsparse

TORCH_LIBRARY_IMPL(snnsparse, CPU, m) { m.impl("max_pool2d", &snnsparse::cpu::max_pool2d); }
