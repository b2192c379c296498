// Inference max-pool on CPU (snnsparse::max_pool2d): torch's max_pool2d without the argmax indices.
// torch's CPU max_pool2d always computes indices (max_pool2d_with_indices, also under no_grad): on a
// spiking ResNet's stem ([32, 64, 16, 16] spikes, 3x3 stride 2 pad 1) it was 14% of the optimized
// model's time (bench/RESULTS.md, issue 13 profile). Of binary spikes the max of a window is its OR; of
// bool / uint8 spikes it reads a byte per spike. Same values as torch for every input: the window
// covers the same elements (padding is not a value: a window holds at least one input element), and
// a NaN wins as in torch's kernel (`val > max || isnan(val)`).
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

template <typename T>
void max_pool_planes(const T* x, T* y, int64_t planes, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t kh,
                     int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  const T lowest = std::is_floating_point<T>::value ? -std::numeric_limits<T>::infinity()
                                                    : std::numeric_limits<T>::lowest();
  at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T* xp = x + p * H * W;
      T* yp = y + p * Ho * Wo;
      for (int64_t oy = 0; oy < Ho; ++oy) {
        // window rows inside the image: y0 + i*dh for i in [i0, i1)
        const int64_t y0 = oy * sh - ph;
        const int64_t i0 = y0 >= 0 ? 0 : (-y0 + dh - 1) / dh;
        const int64_t i1 = std::min<int64_t>(kh, y0 < H ? (H - y0 + dh - 1) / dh : 0);
        for (int64_t ox = 0; ox < Wo; ++ox) {
          const int64_t x0 = ox * sw - pw;
          const int64_t j0 = x0 >= 0 ? 0 : (-x0 + dw - 1) / dw;
          const int64_t j1 = std::min<int64_t>(kw, x0 < W ? (W - x0 + dw - 1) / dw : 0);
          T m = lowest;
          for (int64_t i = i0; i < i1; ++i) {
            const T* row = xp + (y0 + i * dh) * W + x0;
            for (int64_t j = j0; j < j1; ++j) {
              const T v = row[j * dw];
              if (takes(v, m)) m = v;
            }
          }
          yp[oy * Wo + ox] = m;
        }
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
    for (int d = 0; d < 2; ++d) {
      const int64_t size = x.size(2 + d);
      for (int64_t o = 0; o < out[d]; ++o) {
        const int64_t start = o * stride[d] - padding[d];
        bool any = false;
        for (int64_t i = 0; i < kernel[d] && !any; ++i) any = start + i * dilation[d] >= 0 && start + i * dilation[d] < size;
        TORCH_CHECK(any, op, ": with this padding and dilation a window covers no input element (torch's max is "
                    "-inf there, which a bool / uint8 result cannot hold); pool float input instead");
      }
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
