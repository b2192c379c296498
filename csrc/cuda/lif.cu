// CUDA implementations of snnsparse::lif_fwd / lif_bwd (LIF, IF and ParametricLIF charges) (schemas: csrc/registration.cpp).
// Kernels and their numerics: lif_kernels.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <tuple>

#include "lif_kernels.cuh"

namespace snnsparse {
namespace cuda {
namespace {

int surrogate_id(c10::string_view name) {
  static const char* names[] = {"sigmoid", "atan", "piecewise_quadratic", "soft_sign", "erf"};
  for (int i = 0; i < 5; ++i)
    if (name == names[i]) return i;
  TORCH_CHECK_VALUE(false, "lif_bwd: surrogate must be one of sigmoid, atan, piecewise_quadratic, soft_sign, erf; got '",
              std::string(name), "'");
  return -1;
}

void check_seq(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be float32/float64/float16/bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be [T, N], got shape ", t.sizes());
}

void check_state(const char* op, const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK_TYPE(t.device() == like.device() && t.scalar_type() == like.scalar_type(), op, ": ", name,
              " must match the sequence's dtype and device (", like.scalar_type(), ", ", like.device(), "), got (",
              t.scalar_type(), ", ", t.device(), ")");
  TORCH_CHECK(t.dim() == 1 && t.size(0) == like.size(1), op, ": ", name, " must have shape [", like.size(1),
              "], got ", t.sizes());
}

int charge_id(c10::string_view name, const char* op) {
  if (name == "lif") return kChargeLif;
  if (name == "if") return kChargeIf;
  if (name == "plif") return kChargePlif;
  TORCH_CHECK_VALUE(false, op, ": charge must be one of lif, if, plif; got '", std::string(name), "'");
  return -1;
}

// k: required (0-dim, the sequence's dtype and device) for "plif", None otherwise.
void check_k(const char* op, int charge, const std::optional<at::Tensor>& k, const at::Tensor& like) {
  const bool has_k = k.has_value() && k->defined();
  if (charge != kChargePlif) {
    TORCH_CHECK_VALUE(!has_k, op, ": k is read only by charge 'plif'; pass None");
    return;
  }
  TORCH_CHECK_VALUE(has_k, op, ": charge 'plif' needs k (a 0-dim tensor, sigmoid(w))");
  TORCH_CHECK_TYPE(k->device() == like.device() && k->scalar_type() == like.scalar_type(), op,
                   ": k must match the sequence's dtype and device (", like.scalar_type(), ", ", like.device(),
                   "), got (", k->scalar_type(), ", ", k->device(), ")");
  TORCH_CHECK_VALUE(k->dim() == 0, op, ": k must be a 0-dim tensor, got shape ", k->sizes());
}

LifParams make_params(const char* op, const at::Tensor& seq, double tau, double v_threshold,
                      std::optional<double> v_reset, bool decay_input, bool detach_reset, int surrogate,
                      double alpha, int charge) {
  if (charge == kChargeLif)
    TORCH_CHECK_VALUE(std::isfinite(tau) && tau > 1, op, ": tau must be a finite number > 1, got ", tau);
  TORCH_CHECK_VALUE(std::isfinite(v_threshold), op, ": v_threshold must be finite, got ", v_threshold);
  TORCH_CHECK_VALUE(!v_reset.has_value() || std::isfinite(*v_reset), op, ": v_reset must be finite or None, got ",
              *v_reset);
  return make_lif_params(seq.size(0), seq.size(1), seq.scalar_type() == at::kDouble, tau, v_threshold,
                         v_reset.has_value(), v_reset.value_or(0.0), decay_input, detach_reset, surrogate, alpha,
                         charge);
}

int64_t blocks_for(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, kThreads), int64_t(1) << 20));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_fwd_cuda(const at::Tensor& x_in, const at::Tensor& v0_in, double tau,
                                                            double v_threshold, std::optional<double> v_reset,
                                                            bool decay_input, bool detach_reset,
                                                            c10::string_view surrogate, double alpha, bool save_h,
                                                            c10::string_view charge,
                                                            const std::optional<at::Tensor>& k_in) {
  const char* op = "lif_fwd";
  surrogate_id(surrogate);         // refused here, not first at backward
  (void)detach_reset, (void)alpha;  // read by the autograd (backward) only
  check_seq(op, x_in, "x_seq");
  check_state(op, v0_in, "v0", x_in);
  const int ch = charge_id(charge, op);
  check_k(op, ch, k_in, x_in);
  const LifParams p = make_params(op, x_in, tau, v_threshold, v_reset, decay_input, false, 0, 1.0, ch);
  const c10::cuda::OptionalCUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor v0 = v0_in.contiguous();
  at::Tensor spikes = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor h_seq = save_h ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  if (p.T == 0 || p.N == 0) return {spikes, v0.clone(), h_seq};
  at::Tensor v_last = at::empty_like(v0);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "snnsparse_lif_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    lif_fwd_kernel<scalar_t, acc_t><<<blocks_for(p.N), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), v0.data_ptr<scalar_t>(), spikes.data_ptr<scalar_t>(), v_last.data_ptr<scalar_t>(),
        save_h ? h_seq.data_ptr<scalar_t>() : nullptr, ch == kChargePlif ? k_in->data_ptr<scalar_t>() : nullptr, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {spikes, v_last, h_seq};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_bwd_cuda(
    const at::Tensor& grad_spikes_in, const std::optional<at::Tensor>& grad_v_last_in,
    const std::optional<at::Tensor>& grad_h_in, const at::Tensor& h_in, double tau, double v_threshold,
    std::optional<double> v_reset, bool decay_input, bool detach_reset, c10::string_view surrogate, double alpha,
    c10::string_view charge, const std::optional<at::Tensor>& k_in, const std::optional<at::Tensor>& x_in,
    const std::optional<at::Tensor>& v0_in) {
  const char* op = "lif_bwd";
  check_seq(op, h_in, "h_seq");
  check_seq(op, grad_spikes_in, "grad_spikes");
  TORCH_CHECK_TYPE(grad_spikes_in.sizes() == h_in.sizes() && grad_spikes_in.scalar_type() == h_in.scalar_type() &&
                  grad_spikes_in.device() == h_in.device(),
              op, ": grad_spikes must match h_seq's shape, dtype and device (", h_in.sizes(), ", ",
              h_in.scalar_type(), ", ", h_in.device(), "), got (", grad_spikes_in.sizes(), ", ",
              grad_spikes_in.scalar_type(), ", ", grad_spikes_in.device(), ")");
  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha > 0, op, ": alpha must be a positive finite number, got ", alpha);
  const int sg = surrogate_id(surrogate);
  const int ch = charge_id(charge, op);
  check_k(op, ch, k_in, h_in);
  const bool has_gvl = grad_v_last_in.has_value() && grad_v_last_in->defined();
  const bool has_gh = grad_h_in.has_value() && grad_h_in->defined();
  if (has_gvl) check_state(op, *grad_v_last_in, "grad_v_last", h_in);
  if (has_gh)
    TORCH_CHECK_TYPE(grad_h_in->sizes() == h_in.sizes() && grad_h_in->scalar_type() == h_in.scalar_type() &&
                    grad_h_in->device() == h_in.device(),
                op, ": grad_h must match h_seq's shape, dtype and device (", h_in.sizes(), ", ", h_in.scalar_type(),
                ", ", h_in.device(), "), got (", grad_h_in->sizes(), ", ", grad_h_in->scalar_type(), ", ",
                grad_h_in->device(), ")");
  const bool has_x = x_in.has_value() && x_in->defined(), has_v0 = v0_in.has_value() && v0_in->defined();
  TORCH_CHECK_VALUE(has_x == has_v0, op, ": x_seq and v0 (for the gradient of k) are given together or not at all");
  const bool want_k = has_x;
  if (want_k) {
    TORCH_CHECK_VALUE(ch == kChargePlif, op, ": x_seq and v0 are read only for the gradient of k (charge 'plif')");
    TORCH_CHECK_TYPE(x_in->sizes() == h_in.sizes() && x_in->scalar_type() == h_in.scalar_type() &&
                         x_in->device() == h_in.device(),
                     op, ": x_seq must match h_seq's shape, dtype and device");
    check_state(op, *v0_in, "v0", h_in);
  }
  const LifParams p = make_params(op, h_in, tau, v_threshold, v_reset, decay_input, detach_reset, sg, alpha, ch);
  const c10::cuda::OptionalCUDAGuard guard(h_in.device());
  const at::Tensor h = h_in.contiguous();
  const at::Tensor gs = grad_spikes_in.contiguous();
  at::Tensor gvl, gh, xs, vs;
  if (has_gvl) gvl = grad_v_last_in->contiguous();
  if (has_gh) gh = grad_h_in->contiguous();
  if (want_k) {
    xs = x_in->contiguous();
    vs = v0_in->contiguous();
  }
  at::Tensor grad_x = at::empty_like(h, at::MemoryFormat::Contiguous);
  at::Tensor grad_k = want_k ? at::zeros({}, h.options()) : at::empty({0}, h.options());
  if (p.N == 0) return {grad_x, at::empty({0}, h.options()), grad_k};
  if (p.T == 0) return {grad_x, gvl.defined() ? gvl.clone() : at::zeros({p.N}, h.options()), grad_k};
  at::Tensor grad_v0 = at::empty({p.N}, h.options());
  // Per-neuron sums of dL/dk in opmath (fp32 for fp16/bf16), summed over neurons below.
  const auto acc_dtype = h.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_k_n = want_k ? at::empty({p.N}, h.options().dtype(acc_dtype)) : at::Tensor();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "snnsparse_lif_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    lif_bwd_kernel<scalar_t, acc_t><<<blocks_for(p.N), kThreads, 0, stream>>>(
        gs.data_ptr<scalar_t>(), gvl.defined() ? gvl.data_ptr<scalar_t>() : nullptr,
        gh.defined() ? gh.data_ptr<scalar_t>() : nullptr, h.data_ptr<scalar_t>(),
        grad_x.data_ptr<scalar_t>(), grad_v0.data_ptr<scalar_t>(),
        ch == kChargePlif ? k_in->data_ptr<scalar_t>() : nullptr,
        want_k && decay_input ? xs.data_ptr<scalar_t>() : nullptr, want_k ? vs.data_ptr<scalar_t>() : nullptr,
        want_k ? grad_k_n.data_ptr<acc_t>() : nullptr, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (want_k) grad_k = grad_k_n.sum().to(h.scalar_type());
  return {grad_x, grad_v0, grad_k};
}

}  // namespace
}  // namespace cuda
}  // namespace snnsparse

TORCH_LIBRARY_IMPL(snnsparse, CUDA, m) {
  m.impl("lif_fwd", &snnsparse::cuda::lif_fwd_cuda);
  m.impl("lif_bwd", &snnsparse::cuda::lif_bwd_cuda);
}
