// CUDA implementations of snnsparse::spike_linear_fwd/bwd and snnsparse::spike_conv2d_fwd/bwd
// (schemas: csrc/registration.cpp). Kernels and their design notes: spike_kernels.cuh.
//
// Linear is run as the 1x1 conv over a 1x1 image: spikes [N, K] -> [N, K, 1, 1],
// weight [M, K] -> [M, K, 1, 1]; one kernel family, one set of edge cases.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "spike_kernels.cuh"

namespace snnsparse {
namespace cuda {
namespace {

constexpr int64_t kMaxGrid = 1 << 20;  // grid-stride loops beyond this many blocks

int64_t blocks_for(int64_t n) { return std::max<int64_t>(1, std::min(ceil_div(n, kThreads), kMaxGrid)); }

void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be float32/float64/float16/bfloat16, got ", t.scalar_type());
}

// Validates the operands of both conv and linear (as 4-D) and builds the shape descriptor.
ConvShape make_shape(const char* op, const at::Tensor& spikes, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mask,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                     int64_t groups) {
  check_float(weight, op, "weight");
  check_float(spikes, op, "spikes");
  TORCH_CHECK(spikes.device() == weight.device(), op, ": spikes is on ", spikes.device(),
              " but weight is on ", weight.device());
  TORCH_CHECK_TYPE(spikes.scalar_type() == weight.scalar_type(), op, ": spikes dtype ", spikes.scalar_type(),
              " does not match weight dtype ", weight.scalar_type());
  TORCH_CHECK(spikes.dim() == 4, op, ": spikes must be 4-D here, got shape ", spikes.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D here, got shape ", weight.sizes());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must have 2 elements each");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(dilation[0] >= 1 && dilation[1] >= 1, op, ": dilation must be >= 1, got ", dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be >= 0, got ", padding);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  const int64_t Cin = spikes.size(1), Cout = weight.size(0), Cig = weight.size(1);
  TORCH_CHECK(Cout % groups == 0, op, ": weight has ", Cout, " output channels, not divisible by groups=", groups);
  TORCH_CHECK(Cin == Cig * groups, op, ": spikes has ", Cin, " channels but weight expects ", Cig, " x groups ",
              groups);
  const ConvShape s = conv_shape(spikes.size(0), Cin, spikes.size(2), spikes.size(3), Cout, Cig, weight.size(2),
                                 weight.size(3), stride[0], stride[1], padding[0], padding[1], dilation[0],
                                 dilation[1], groups);
  TORCH_CHECK(s.KH >= 1 && s.KW >= 1 && s.Ho >= 1 && s.Wo >= 1, op, ": input ", s.H, "x", s.W,
              " is smaller than the dilated kernel ", s.KH, "x", s.KW, " after padding");
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK_TYPE(b.device() == weight.device() && b.scalar_type() == weight.scalar_type(), op,
                ": bias must match weight's dtype and device (", weight.scalar_type(), ", ", weight.device(),
                "), got (", b.scalar_type(), ", ", b.device(), ")");
    TORCH_CHECK(b.dim() == 1 && b.size(0) == s.Cout, op, ": bias must have shape [", s.Cout, "], got ",
                b.sizes());
  }
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK_TYPE(m.scalar_type() == at::kBool, op, ": mask must be bool (True = keep), got ", m.scalar_type());
    TORCH_CHECK(m.device() == weight.device(), op, ": mask is on ", m.device(), " but weight is on ",
                weight.device());
    TORCH_CHECK(m.sizes() == weight.sizes(), op, ": mask must have the weight's shape ", weight.sizes(),
                ", got ", m.sizes());
  }
  return s;
}

at::Tensor pack_spikes(const at::Tensor& x, const ConvShape& s, cudaStream_t stream) {
  at::Tensor xb = at::empty({s.N, s.H, s.W, s.G, s.CWg}, x.options().dtype(at::kInt));
  const int64_t total = xb.numel();
  if (total == 0) return xb;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "snnsparse_pack_spikes", [&] {
    pack_spikes_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), reinterpret_cast<uint32_t*>(xb.data_ptr<int32_t>()), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return xb;
}

at::Tensor pack_mask(const at::Tensor& mask, const ConvShape& s, cudaStream_t stream) {
  at::Tensor mb = at::empty({s.KH * s.KW, s.CWg, s.Cout}, mask.options().dtype(at::kInt));
  const int64_t total = mb.numel();
  if (total == 0) return mb;
  pack_mask_kernel<<<blocks_for(total), kThreads, 0, stream>>>(
      mask.data_ptr<bool>(), reinterpret_cast<uint32_t*>(mb.data_ptr<int32_t>()), s);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return mb;
}

// out [N, Cout, Ho, Wo] and n_acc (int64 0-dim, on the input's device).
std::tuple<at::Tensor, at::Tensor> conv_fwd(const char* op, const at::Tensor& spikes_in, const at::Tensor& weight_in,
                                            const std::optional<at::Tensor>& bias_in,
                                            const std::optional<at::Tensor>& mask_in, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                            bool count) {
  const ConvShape s = make_shape(op, spikes_in, weight_in, bias_in, mask_in, stride, padding, dilation, groups);
  const c10::cuda::OptionalCUDAGuard guard(spikes_in.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor spikes = spikes_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  at::Tensor out = at::empty({s.N, s.Cout, s.Ho, s.Wo}, weight.options());
  at::Tensor n_acc = at::zeros({}, weight.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, n_acc};
  // Weight-stationary layout [KH*KW, Cig, Cout]: a 32 x kTileCo slab is 32 contiguous row pieces.
  // (Repacked per call: nothing caches a packing of a weight that can still change.)
  const at::Tensor wt = weight.permute({2, 3, 1, 0}).contiguous();
  const at::Tensor xb = pack_spikes(spikes, s, stream);
  at::Tensor mb;
  if (mask_in.has_value()) mb = pack_mask(mask_in->contiguous(), s, stream);
  at::Tensor bias;
  if (bias_in.has_value()) bias = bias_in->contiguous();
  const int64_t px_tiles = ceil_div(s.P, kTilePx);
  const int64_t co_blocks = s.G * s.co_tiles;
  TORCH_CHECK(px_tiles <= INT32_MAX && co_blocks <= 65535, op, ": problem too large for one launch (",
              px_tiles, " pixel tiles, ", co_blocks, " channel tiles)");
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, weight.get_device()));
  const SplitPlan plan = fwd_split_plan(s, sms);
  const dim3 grid((unsigned)px_tiles, (unsigned)co_blocks, (unsigned)plan.splits);
  const uint32_t* xbp = reinterpret_cast<const uint32_t*>(xb.data_ptr<int32_t>());
  const uint32_t* mbp = mb.defined() ? reinterpret_cast<const uint32_t*>(mb.data_ptr<int32_t>()) : nullptr;
  unsigned long long* np = reinterpret_cast<unsigned long long*>(n_acc.data_ptr<int64_t>());
  const at::ScalarType acc_type = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor partial;
  if (plan.splits > 1) partial = at::empty({plan.splits, s.N, s.Cout, s.Ho, s.Wo}, weight.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "snnsparse_spike_conv_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* wtp = wt.data_ptr<scalar_t>();
    auto launch = [&](auto kernel, auto* dst, const scalar_t* bp) {
      kernel<<<grid, kThreads, 0, stream>>>(xbp, wtp, bp, mbp, dst, np, s, plan.per_split);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (plan.splits == 1) {
      const scalar_t* bp = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
      scalar_t* dst = out.data_ptr<scalar_t>();
      if (mbp != nullptr) {
        if (count) launch(spike_conv_fwd_kernel<scalar_t, acc_t, scalar_t, true, true>, dst, bp);
        else launch(spike_conv_fwd_kernel<scalar_t, acc_t, scalar_t, true, false>, dst, bp);
      } else {
        if (count) launch(spike_conv_fwd_kernel<scalar_t, acc_t, scalar_t, false, true>, dst, bp);
        else launch(spike_conv_fwd_kernel<scalar_t, acc_t, scalar_t, false, false>, dst, bp);
      }
    } else {
      acc_t* dst = partial.data_ptr<acc_t>();
      if (mbp != nullptr) {
        if (count) launch(spike_conv_fwd_kernel<scalar_t, acc_t, acc_t, true, true>, dst, nullptr);
        else launch(spike_conv_fwd_kernel<scalar_t, acc_t, acc_t, true, false>, dst, nullptr);
      } else {
        if (count) launch(spike_conv_fwd_kernel<scalar_t, acc_t, acc_t, false, true>, dst, nullptr);
        else launch(spike_conv_fwd_kernel<scalar_t, acc_t, acc_t, false, false>, dst, nullptr);
      }
    }
  });
  if (plan.splits > 1) {
    at::Tensor sum = partial.sum(0);
    if (bias.defined()) sum.add_(bias.to(acc_type).view({1, s.Cout, 1, 1}));
    out.copy_(sum);
  }
  return {out, n_acc};
}

// grad_weight [Cout, Cig, KH, KW] (float32/64 partials reduced, cast to the weight dtype).
at::Tensor conv_wgrad(const char* op, const at::Tensor& grad_out, const at::Tensor& spikes, const ConvShape& s,
                      const at::Tensor& weight, cudaStream_t stream) {
  const at::ScalarType acc_type = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (weight.numel() == 0) return at::zeros_like(weight);
  const int64_t taps = s.KH * s.KW;
  const int64_t co_blocks = s.G * s.co_tiles;
  const int64_t k_blocks = taps * s.CWg;
  TORCH_CHECK(co_blocks <= INT32_MAX && k_blocks <= 65535, op, ": weight too large for one launch (",
              co_blocks, " channel tiles, ", k_blocks, " reduction tiles)");
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, weight.get_device()));
  const SplitPlan plan = wgrad_split_plan(s, sms);
  const int64_t splits = plan.splits, per_split = plan.per_split;
  at::Tensor partial = at::empty({splits, s.Cout, s.Cig, s.KH, s.KW}, weight.options().dtype(acc_type));
  const at::Tensor xb = pack_spikes(spikes, s, stream);
  const at::Tensor go = grad_out.contiguous();
  const dim3 grid((unsigned)co_blocks, (unsigned)k_blocks, (unsigned)splits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "snnsparse_spike_conv_wgrad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    spike_conv_wgrad_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        reinterpret_cast<const uint32_t*>(xb.data_ptr<int32_t>()), go.data_ptr<scalar_t>(),
        partial.data_ptr<acc_t>(), s, per_split);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return (splits == 1 ? partial[0] : partial.sum(0)).to(weight.scalar_type());
}

at::Tensor masked_weight(const at::Tensor& weight, const std::optional<at::Tensor>& mask) {
  // at::where, not weight * mask: a pruned NaN/inf weight must be absent (NaN * 0 is NaN).
  return mask.has_value() ? at::where(*mask, weight, at::zeros({}, weight.options())) : weight;
}

std::tuple<at::Tensor, at::Tensor> conv_bwd(const char* op, const at::Tensor& grad_out_in, const at::Tensor& spikes_in,
                                            const at::Tensor& weight_in, const std::optional<at::Tensor>& mask,
                                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                            int64_t groups, bool need_input_grad, bool need_weight_grad,
                                            bool dense_weight_grad, bool linear) {
  const ConvShape s = make_shape(op, spikes_in, weight_in, std::nullopt, mask, stride, padding, dilation, groups);
  check_float(grad_out_in, op, "grad_out");
  TORCH_CHECK_TYPE(grad_out_in.device() == weight_in.device() && grad_out_in.scalar_type() == weight_in.scalar_type(), op,
              ": grad_out must match weight's dtype and device (", weight_in.scalar_type(), ", ", weight_in.device(),
              "), got (", grad_out_in.scalar_type(), ", ", grad_out_in.device(), ")");
  TORCH_CHECK(grad_out_in.dim() == 4 && grad_out_in.size(0) == s.N && grad_out_in.size(1) == s.Cout &&
                  grad_out_in.size(2) == s.Ho && grad_out_in.size(3) == s.Wo,
              op, ": grad_out must have shape [", s.N, ", ", s.Cout, ", ", s.Ho, ", ", s.Wo, "], got ",
              grad_out_in.sizes());
  const c10::cuda::OptionalCUDAGuard guard(spikes_in.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor grad_out = grad_out_in.contiguous();
  at::Tensor grad_in, grad_w;
  if (need_input_grad) {
    // Dense: grad_out has no sparsity to exploit. cuBLAS / cuDNN with fp32 accumulation.
    const at::Tensor wm = masked_weight(weight_in, mask);
    if (linear) {
      grad_in = at::mm(grad_out.view({s.N, s.Cout}), wm.view({s.Cout, s.Cig})).view({s.N, s.Cin, 1, 1});
    } else if (spikes_in.numel() == 0 || grad_out.numel() == 0) {
      grad_in = at::zeros_like(spikes_in, at::MemoryFormat::Contiguous);
    } else {
      grad_in = std::get<0>(at::convolution_backward(grad_out, spikes_in, wm, std::nullopt, stride, padding,
                                                     dilation, false, {0, 0}, groups, {true, false, false}));
    }
    grad_in = grad_in.contiguous();
  } else {
    grad_in = at::empty({0}, weight_in.options());
  }
  if (need_weight_grad) {
    grad_w = conv_wgrad(op, grad_out, spikes_in.contiguous(), s, weight_in, stream);
    if (mask.has_value() && !dense_weight_grad) grad_w.masked_fill_(mask->logical_not(), 0);
  } else {
    grad_w = at::empty({0}, weight_in.options());
  }
  return {grad_in, grad_w};
}

// ---- registered ops -------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> spike_conv2d_fwd_cuda(const at::Tensor& spikes, const at::Tensor& weight,
                                                         const std::optional<at::Tensor>& bias,
                                                         const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
                                                         at::IntArrayRef padding, at::IntArrayRef dilation,
                                                         int64_t groups, bool count,
                                                         bool /*dense_weight_grad: read by the autograd only*/) {
  return conv_fwd("spike_conv2d_fwd", spikes, weight, bias, mask, stride, padding, dilation, groups, count);
}

std::tuple<at::Tensor, at::Tensor> spike_conv2d_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& spikes,
                                                         const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                                         at::IntArrayRef dilation, int64_t groups, bool need_input_grad,
                                                         bool need_weight_grad, bool dense_weight_grad) {
  return conv_bwd("spike_conv2d_bwd", grad_out, spikes, weight, mask, stride, padding, dilation, groups,
                  need_input_grad, need_weight_grad, dense_weight_grad, /*linear=*/false);
}

void check_linear(const char* op, const at::Tensor& spikes, const at::Tensor& weight) {
  TORCH_CHECK(spikes.dim() == 2, op, ": spikes must be [N, K], got shape ", spikes.sizes());
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be [M, K], got shape ", weight.sizes());
  TORCH_CHECK(spikes.size(1) == weight.size(1), op, ": spikes has K=", spikes.size(1), " but weight is ",
              weight.sizes());
}

at::Tensor as4d(const at::Tensor& t) { return t.reshape({t.size(0), t.size(1), 1, 1}); }

std::optional<at::Tensor> as4d(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  TORCH_CHECK(t->dim() == 2, "spike_linear: mask must be 2-D [M, K], got shape ", t->sizes());
  return as4d(*t);
}

std::tuple<at::Tensor, at::Tensor> spike_linear_fwd_cuda(const at::Tensor& spikes, const at::Tensor& weight,
                                                         const std::optional<at::Tensor>& bias,
                                                         const std::optional<at::Tensor>& mask, bool count,
                                                         bool /*dense_weight_grad: read by the autograd only*/) {
  const char* op = "spike_linear_fwd";
  check_linear(op, spikes, weight);
  auto [out, n_acc] = conv_fwd(op, as4d(spikes), as4d(weight), bias, as4d(mask), {1, 1}, {0, 0}, {1, 1}, 1, count);
  return {out.view({spikes.size(0), weight.size(0)}), n_acc};
}

std::tuple<at::Tensor, at::Tensor> spike_linear_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& spikes,
                                                         const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                                                         bool need_input_grad, bool need_weight_grad,
                                                         bool dense_weight_grad) {
  const char* op = "spike_linear_bwd";
  check_linear(op, spikes, weight);
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == spikes.size(0) && grad_out.size(1) == weight.size(0), op,
              ": grad_out must have shape [", spikes.size(0), ", ", weight.size(0), "], got ", grad_out.sizes());
  auto [gi, gw] = conv_bwd(op, as4d(grad_out), as4d(spikes), as4d(weight), as4d(mask), {1, 1}, {0, 0}, {1, 1}, 1,
                           need_input_grad, need_weight_grad, dense_weight_grad, /*linear=*/true);
  if (need_input_grad) gi = gi.view({spikes.size(0), spikes.size(1)});
  if (need_weight_grad) gw = gw.view({weight.size(0), weight.size(1)});
  return {gi, gw};
}

}  // namespace
}  // namespace cuda
}  // namespace snnsparse

TORCH_LIBRARY_IMPL(snnsparse, CUDA, m) {
  m.impl("spike_linear_fwd", &snnsparse::cuda::spike_linear_fwd_cuda);
  m.impl("spike_linear_bwd", &snnsparse::cuda::spike_linear_bwd_cuda);
  m.impl("spike_conv2d_fwd", &snnsparse::cuda::spike_conv2d_fwd_cuda);
  m.impl("spike_conv2d_bwd", &snnsparse::cuda::spike_conv2d_bwd_cuda);
}
