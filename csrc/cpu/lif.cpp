// Fused multi-step neuron on CPU (SpikingJelly LIFNode, IFNode, ParametricLIFNode; step_mode="m"), forward and backward: the ops
// and their checks, compiled for the baseline target. The kernels are in lif_kernels.h, run
// through kernels() (the variant selected at load time).
#include <cmath>
#include <string>

#include "common.h"
#include "kernels.h"

namespace snnsparse {
namespace cpu {
namespace {

Surrogate parse_surrogate(const std::string& name) {
  if (name == "sigmoid") return kSigmoid;
  if (name == "atan") return kAtan;
  if (name == "piecewise_quadratic") return kPiecewiseQuadratic;
  if (name == "soft_sign") return kSoftSign;
  if (name == "erf") return kErf;
  TORCH_CHECK_VALUE(false, "snnsparse::lif_bwd: surrogate must be one of sigmoid, atan, piecewise_quadratic, "
                           "soft_sign, erf; got '", name, "'");
}

Charge parse_charge(const std::string& name, const char* op) {
  if (name == "lif") return kChargeLif;
  if (name == "if") return kChargeIf;
  if (name == "plif") return kChargePlif;
  TORCH_CHECK_VALUE(false, op, ": charge must be one of lif, if, plif; got '", name, "'");
}

void check_lif(const at::Tensor& x, const at::Tensor& v0, const char* op) {
  check_cpu(x, op, "x_seq");
  check_cpu(v0, op, "v0");
  check_float(x, op, "x_seq");
  check_same_dtype(x, v0, op, "x_seq", "v0");
  TORCH_CHECK(x.dim() == 2, op, ": x_seq must be [T, N], got ", x.sizes());
  TORCH_CHECK(v0.dim() == 1 && v0.size(0) == x.size(1), op, ": v0 must be [", x.size(1), "], got ", v0.sizes());
}

// The charge's constant in double (tau for "lif", k for "plif", 0 for "if"), after the checks every
// backend makes: tau > 1 for "lif"; k a 0-dim tensor of `like`'s dtype on the CPU for "plif" and None
// otherwise.
double charge_constant(Charge ch, double tau, const c10::optional<at::Tensor>& k, const at::Tensor& like,
                       const char* op) {
  const bool has_k = k.has_value() && k->defined();
  if (ch == kChargePlif) {
    TORCH_CHECK_VALUE(has_k, op, ": charge 'plif' needs k (a 0-dim tensor, sigmoid(w))");
    check_cpu(*k, op, "k");
    check_same_dtype(*k, like, op, "k", "x_seq");
    TORCH_CHECK_VALUE(k->dim() == 0, op, ": k must be a 0-dim tensor, got shape ", k->sizes());
    return k->item<double>();
  }
  TORCH_CHECK_VALUE(!has_k, op, ": k is read only by charge 'plif'; pass None for charge '",
                    ch == kChargeIf ? "if" : "lif", "'");
  if (ch == kChargeLif) {
    TORCH_CHECK_VALUE(tau > 1.0, op, ": tau must be > 1, got ", tau);
    return tau;
  }
  return 0.0;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_fwd(const at::Tensor& x_seq, const at::Tensor& v0, double tau,
                                                       double v_threshold, c10::optional<double> v_reset,
                                                       bool decay_input, bool detach_reset,
                                                       c10::string_view surrogate, double alpha, bool save_h,
                                                       c10::string_view charge, const c10::optional<at::Tensor>& k) {
  const char* op = "snnsparse::lif_fwd";
  parse_surrogate(std::string(surrogate));  // refused here, not first at backward
  (void)detach_reset, (void)alpha;          // read by the autograd (backward) only
  check_lif(x_seq, v0, op);
  const Charge ch = parse_charge(std::string(charge), op);
  const double c = charge_constant(ch, tau, k, x_seq, op);
  const int64_t Tn = x_seq.size(0), N = x_seq.size(1);
  at::Tensor x = x_seq.contiguous(), v = v0.contiguous();
  at::Tensor s = empty_output(x.sizes(), x.options());
  at::Tensor vlast = at::empty_like(v);
  at::Tensor h = save_h ? empty_output(x.sizes(), x.options()) : at::empty({0}, x.options());
  const bool hard = v_reset.has_value();
  const Kernels& kern = kernels();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lif_fwd", [&] {
    using T = scalar_t;
    LifFwdArgs<T> a;
    a.x = x.data_ptr<T>();
    a.v0 = v.data_ptr<T>();
    a.s = s.data_ptr<T>();
    a.vlast = vlast.data_ptr<T>();
    a.h = save_h ? h.data_ptr<T>() : nullptr;
    a.Tn = Tn;
    a.N = N;
    a.c = (T)c;  // k is of type T already (exact); tau rounded to T as torch rounds a scalar divisor
    a.vth = (T)v_threshold;
    a.vr = hard ? (T)*v_reset : T(0);
    a.charge = ch;
    a.decay_input = decay_input;
    a.hard = hard;
    kern.of<T>().lif_fwd(a);
  });
  return {s, vlast, h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_bwd(
    const at::Tensor& grad_spikes, const c10::optional<at::Tensor>& grad_v_last,
    const c10::optional<at::Tensor>& grad_h, const at::Tensor& h_seq, double tau, double v_threshold,
    c10::optional<double> v_reset, bool decay_input, bool detach_reset, c10::string_view surrogate, double alpha,
    c10::string_view charge, const c10::optional<at::Tensor>& k, const c10::optional<at::Tensor>& x_seq,
    const c10::optional<at::Tensor>& v0) {
  const char* op = "snnsparse::lif_bwd";
  check_cpu(h_seq, op, "h_seq");
  check_float(h_seq, op, "h_seq");
  check_cpu(grad_spikes, op, "grad_spikes");
  check_same_dtype(grad_spikes, h_seq, op, "grad_spikes", "h_seq");
  TORCH_CHECK(h_seq.dim() == 2 && grad_spikes.sizes() == h_seq.sizes(), op,
              ": grad_spikes and h_seq must be the same [T, N] shape, got ", grad_spikes.sizes(), " and ",
              h_seq.sizes());
  const Charge ch = parse_charge(std::string(charge), op);
  const double c = charge_constant(ch, tau, k, h_seq, op);
  const int64_t Tn = h_seq.size(0), N = h_seq.size(1);
  at::Tensor gvl, gh, xs, vs;
  if (grad_v_last.has_value() && grad_v_last->defined()) {
    check_same_dtype(*grad_v_last, h_seq, op, "grad_v_last", "h_seq");
    TORCH_CHECK(grad_v_last->dim() == 1 && grad_v_last->size(0) == N, op, ": grad_v_last must be [", N, "]");
    gvl = grad_v_last->contiguous();
  }
  if (grad_h.has_value() && grad_h->defined()) {
    check_same_dtype(*grad_h, h_seq, op, "grad_h", "h_seq");
    TORCH_CHECK(grad_h->sizes() == h_seq.sizes(), op, ": grad_h must be [T, N] like h_seq");
    gh = grad_h->contiguous();
  }
  const bool has_x = x_seq.has_value() && x_seq->defined(), has_v0 = v0.has_value() && v0->defined();
  TORCH_CHECK_VALUE(has_x == has_v0, op, ": x_seq and v0 (for the gradient of k) are given together or not at all");
  const bool want_k = has_x;
  if (want_k) {
    TORCH_CHECK_VALUE(ch == kChargePlif, op, ": x_seq and v0 are read only for the gradient of k (charge 'plif')");
    check_cpu(*x_seq, op, "x_seq");
    check_same_dtype(*x_seq, h_seq, op, "x_seq", "h_seq");
    TORCH_CHECK(x_seq->sizes() == h_seq.sizes(), op, ": x_seq must be [T, N] like h_seq, got ", x_seq->sizes());
    check_cpu(*v0, op, "v0");
    check_same_dtype(*v0, h_seq, op, "v0", "h_seq");
    TORCH_CHECK(v0->dim() == 1 && v0->size(0) == N, op, ": v0 must be [", N, "], got ", v0->sizes());
    xs = x_seq->contiguous();
    vs = v0->contiguous();
  }
  const Surrogate sur = parse_surrogate(std::string(surrogate));
  at::Tensor hs = h_seq.contiguous(), gs = grad_spikes.contiguous();
  at::Tensor gx = empty_output(hs.sizes(), hs.options());
  at::Tensor gv0 = at::empty({N}, hs.options());
  at::Tensor gkn = want_k ? at::empty({N}, hs.options()) : at::Tensor();
  const bool hard = v_reset.has_value();
  const Kernels& kern = kernels();
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "lif_bwd", [&] {
    using T = scalar_t;
    LifBwdArgs<T> a;
    a.gs = gs.data_ptr<T>();
    a.gvl = gvl.defined() ? gvl.data_ptr<T>() : nullptr;
    a.gh = gh.defined() ? gh.data_ptr<T>() : nullptr;
    a.hs = hs.data_ptr<T>();
    a.gx = gx.data_ptr<T>();
    a.gv0 = gv0.data_ptr<T>();
    a.Tn = Tn;
    a.N = N;
    const T cc = (T)c;
    if (ch == kChargeLif) {        // H = V + (X - (V - vr)) / tau  or  V - (V - vr) / tau + X
      a.dhdx = decay_input ? T(1) / cc : T(1);
      a.dhdv = T(1) - T(1) / cc;
    } else if (ch == kChargePlif) {  // H = V + (X - (V - vr)) * k  or  V - (V - vr) * k + X
      a.dhdx = decay_input ? cc : T(1);
      a.dhdv = T(1) - cc;
    } else {                         // H = V + X
      a.dhdx = T(1);
      a.dhdv = T(1);
    }
    a.vth = (T)v_threshold;
    a.vr = hard ? (T)*v_reset : T(0);
    a.alpha = (T)alpha;
    a.hard = hard;
    a.detach_reset = detach_reset;
    a.surrogate = sur;
    a.gk = want_k ? gkn.data_ptr<T>() : nullptr;
    a.x = want_k && decay_input ? xs.data_ptr<T>() : nullptr;
    a.v0 = want_k ? vs.data_ptr<T>() : nullptr;
    a.decay_input = decay_input;
    kern.of<T>().lif_bwd(a);
  });
  // dL/dk: the per-neuron sums (each over t, in the kernel) summed over neurons.
  at::Tensor gk = want_k ? gkn.sum() : at::empty({0}, hs.options());
  return {gx, gv0, gk};
}

}  // namespace cpu
}  // namespace snnsparse

TORCH_LIBRARY_IMPL(snnsparse, CPU, m) {
  m.impl("lif_fwd", &snnsparse::cpu::lif_fwd);
  m.impl("lif_bwd", &snnsparse::cpu::lif_bwd);
}
