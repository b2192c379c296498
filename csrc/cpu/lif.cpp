// Fused multi-step LIF on CPU (SpikingJelly LIFNode, step_mode="m"), forward and backward.
//
// One pass over time per neuron: neurons are split into blocks of 1024 (OpenMP over blocks),
// each block keeps its membrane potentials in a local array and walks t = 0..T-1 (backward:
// T-1..0) with SIMD loops over the block. The forward writes spikes, v_last and (for backward)
// h_seq only; the backward recomputes the spike and the surrogate derivative from h_seq.
// Float operation order is the reference's (snnsparse/ops/reference.py), so spikes and v_last
// are bit-identical to it for float32/float64.
#include <cmath>
#include <string>

#include "common.h"

namespace snnsparse {
namespace cpu {
namespace {

constexpr int64_t kLifBlock = 4096;

// exp(x) for float, branch-free so it vectorises (Cephes polynomial, ~1 ulp on [-87, 88]).
inline float exp_f32(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float kf = x * 1.44269504088896341f;
  kf = (kf + 12582912.0f) - 12582912.0f;  // round to nearest integer
  float r = x - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)kf + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}
inline float exp_any(float x) { return exp_f32(x); }
inline double exp_any(double x) { return std::exp(x); }

// Writes n values of a block-local buffer to dst. For float with 64-byte aligned dst and n a
// multiple of 16 it uses non-temporal (streaming) stores: the outputs are written once and not
// read again soon, so skipping the read-for-ownership of fresh lines saves a third of the
// memory traffic of the forward (measured on [8, 64, 16384], 1 thread: see bench/RESULTS.md).
template <typename T>
inline void store_block(T* __restrict__ dst, const T* __restrict__ src, int64_t n) {
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value) {
    if ((((uintptr_t)dst) & 63) == 0 && (n & 15) == 0) {
      for (int64_t i = 0; i < n; i += 16) _mm512_stream_ps(dst + i, _mm512_load_ps(src + i));
      return;
    }
  }
#endif
  std::memcpy(dst, src, n * sizeof(T));
}

inline void store_fence() {
#if defined(__AVX512F__)
  _mm_sfence();
#endif
}

enum Surrogate { kSigmoid = 0, kAtan = 1, kPiecewiseQuadratic = 2, kSoftSign = 3, kErf = 4 };

Surrogate parse_surrogate(const std::string& name) {
  if (name == "sigmoid") return kSigmoid;
  if (name == "atan") return kAtan;
  if (name == "piecewise_quadratic") return kPiecewiseQuadratic;
  if (name == "soft_sign") return kSoftSign;
  if (name == "erf") return kErf;
  TORCH_CHECK_VALUE(false, "snnsparse::lif_bwd: surrogate must be one of sigmoid, atan, piecewise_quadratic, "
                           "soft_sign, erf; got '", name, "'");
}

// dS/dH at x = H - V_th; same formulas as snnsparse/ops/surrogate.py (SpikingJelly's).
template <Surrogate S, typename T>
inline T surrogate_grad(T x, T alpha) {
  if constexpr (S == kSigmoid) {
    const T s = T(1) / (T(1) + exp_any(-alpha * x));
    return alpha * s * (T(1) - s);
  } else if constexpr (S == kAtan) {
    const T u = T(M_PI / 2) * alpha * x;
    return (alpha / T(2)) / (T(1) + u * u);
  } else if constexpr (S == kPiecewiseQuadratic) {
    const T g = alpha - alpha * alpha * std::abs(x);
    return g > T(0) ? g : T(0);
  } else if constexpr (S == kSoftSign) {
    const T d = T(1) + alpha * std::abs(x);
    return alpha / (T(2) * d * d);
  } else {
    const T u = alpha * x;
    return T(alpha / std::sqrt(M_PI)) * exp_any(-(u * u));
  }
}

void check_lif(const at::Tensor& x, const at::Tensor& v0, const char* op) {
  check_cpu(x, op, "x_seq");
  check_cpu(v0, op, "v0");
  check_float(x, op, "x_seq");
  check_same_dtype(x, v0, op, "x_seq", "v0");
  TORCH_CHECK(x.dim() == 2, op, ": x_seq must be [T, N], got ", x.sizes());
  TORCH_CHECK(v0.dim() == 1 && v0.size(0) == x.size(1), op, ": v0 must be [", x.size(1), "], got ", v0.sizes());
}

template <typename T, bool kDecay, bool kHard, bool kSaveH>
void lif_fwd_kernel(const T* x, const T* v0, T* s, T* vlast, T* hs, int64_t Tn, int64_t N, T tau, T vth, T vr) {
  at::parallel_for(0, N, kLifBlock, [&](int64_t i0, int64_t i1) {
    alignas(64) T v[kLifBlock];
    alignas(64) T sb[kLifBlock];
    alignas(64) T hb[kLifBlock];
    for (int64_t b0 = i0; b0 < i1; b0 += kLifBlock) {
      const int64_t nb = std::min(kLifBlock, i1 - b0);
      for (int64_t i = 0; i < nb; ++i) v[i] = v0[b0 + i];
      for (int64_t t = 0; t < Tn; ++t) {
        const T* __restrict__ xt = x + t * N + b0;
        T* __restrict__ st = sb;
        T* __restrict__ ht = hb;
#pragma omp simd
        for (int64_t i = 0; i < nb; ++i) {
          const T vv = v[i];
          const T h = kDecay ? vv + (xt[i] - (vv - vr)) / tau : vv - (vv - vr) / tau + xt[i];
          const bool fire = h >= vth;
          st[i] = fire ? T(1) : T(0);
          if (kSaveH) ht[i] = h;
          // Hard reset as the reference's S*V_reset + (1-S)*H: vr + 0*h is vr for finite h (bit-exact)
          // and NaN for h = +inf, as torch gives; a plain select would hide the overflow.
          v[i] = kHard ? (fire ? vr + T(0) * h : h) : (fire ? h - vth : h);
        }
        store_block(s + t * N + b0, sb, nb);
        if (kSaveH) store_block(hs + t * N + b0, hb, nb);
      }
      for (int64_t i = 0; i < nb; ++i) vlast[b0 + i] = v[i];
    }
    store_fence();
  });
}

template <typename T, Surrogate S, bool kHard, bool kDetach>
void lif_bwd_kernel(const T* gs, const T* gvl, const T* gh, const T* hs, T* gx, T* gv0, int64_t Tn, int64_t N,
                    T tau, T vth, T vr, bool decay, T alpha) {
  const T dhdx = decay ? T(1) / tau : T(1);
  const T dhdv = T(1) - T(1) / tau;
  at::parallel_for(0, N, kLifBlock, [&](int64_t i0, int64_t i1) {
    alignas(64) T gv[kLifBlock];
    alignas(64) T gb[kLifBlock];
    for (int64_t b0 = i0; b0 < i1; b0 += kLifBlock) {
      const int64_t nb = std::min(kLifBlock, i1 - b0);
      for (int64_t i = 0; i < nb; ++i) gv[i] = gvl ? gvl[b0 + i] : T(0);
      for (int64_t t = Tn - 1; t >= 0; --t) {
        const T* __restrict__ ht = hs + t * N + b0;
        const T* __restrict__ gst = gs + t * N + b0;
        const T* __restrict__ ght = gh ? gh + t * N + b0 : nullptr;
        T* __restrict__ gxt = gb;
        if (ght) {
#pragma omp simd
          for (int64_t i = 0; i < nb; ++i) {
            const T h = ht[i];
            const T sg = surrogate_grad<S, T>(h - vth, alpha);
            const T sp = h >= vth ? T(1) : T(0);
            T dvdh;
            if (kHard) dvdh = kDetach ? T(1) - sp : (T(1) - sp) + (vr - h) * sg;
            else dvdh = kDetach ? T(1) : T(1) - vth * sg;
            const T g = gst[i] * sg + gv[i] * dvdh + ght[i];
            gxt[i] = g * dhdx;
            gv[i] = g * dhdv;
          }
        } else {
#pragma omp simd
          for (int64_t i = 0; i < nb; ++i) {
            const T h = ht[i];
            const T sg = surrogate_grad<S, T>(h - vth, alpha);
            const T sp = h >= vth ? T(1) : T(0);
            T dvdh;
            if (kHard) dvdh = kDetach ? T(1) - sp : (T(1) - sp) + (vr - h) * sg;
            else dvdh = kDetach ? T(1) : T(1) - vth * sg;
            const T g = gst[i] * sg + gv[i] * dvdh;
            gxt[i] = g * dhdx;
            gv[i] = g * dhdv;
          }
        }
        store_block(gx + t * N + b0, gb, nb);
      }
      for (int64_t i = 0; i < nb; ++i) gv0[b0 + i] = gv[i];
    }
    store_fence();
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_fwd(const at::Tensor& x_seq, const at::Tensor& v0, double tau,
                                                       double v_threshold, c10::optional<double> v_reset,
                                                       bool decay_input, bool detach_reset,
                                                       c10::string_view surrogate, double alpha, bool save_h) {
  const char* op = "snnsparse::lif_fwd";
  parse_surrogate(std::string(surrogate));  // refused here, not first at backward
  (void)detach_reset, (void)alpha;          // read by the autograd (backward) only
  check_lif(x_seq, v0, op);
  TORCH_CHECK_VALUE(tau > 1.0, op, ": tau must be > 1, got ", tau);
  const int64_t Tn = x_seq.size(0), N = x_seq.size(1);
  at::Tensor x = x_seq.contiguous(), v = v0.contiguous();
  at::Tensor s = empty_output(x.sizes(), x.options());
  at::Tensor vlast = at::empty_like(v);
  at::Tensor h = save_h ? empty_output(x.sizes(), x.options()) : at::empty({0}, x.options());
  const bool hard = v_reset.has_value();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lif_fwd", [&] {
    using T = scalar_t;
    const T t_ = (T)tau, vth = (T)v_threshold, vr = hard ? (T)*v_reset : T(0);
    const T* xp = x.data_ptr<T>();
    const T* vp = v.data_ptr<T>();
    T* sp = s.data_ptr<T>();
    T* lp = vlast.data_ptr<T>();
    T* hp = save_h ? h.data_ptr<T>() : nullptr;
auto run = [&](auto d, auto hd, auto sv) {
      lif_fwd_kernel<T, decltype(d)::value, decltype(hd)::value, decltype(sv)::value>(xp, vp, sp, lp, hp, Tn, N, t_,
                                                                                   vth, vr);
    };
    using Y = std::true_type;
    using F = std::false_type;
    if (decay_input) {
      if (hard) { if (save_h) run(Y(), Y(), Y()); else run(Y(), Y(), F()); }
      else { if (save_h) run(Y(), F(), Y()); else run(Y(), F(), F()); }
    } else {
      if (hard) { if (save_h) run(F(), Y(), Y()); else run(F(), Y(), F()); }
      else { if (save_h) run(F(), F(), Y()); else run(F(), F(), F()); }
    }
  });
  return {s, vlast, h};
}

std::tuple<at::Tensor, at::Tensor> lif_bwd(const at::Tensor& grad_spikes, const c10::optional<at::Tensor>& grad_v_last,
                                             const c10::optional<at::Tensor>& grad_h, const at::Tensor& h_seq, double tau,
                                             double v_threshold, c10::optional<double> v_reset, bool decay_input,
                                             bool detach_reset, c10::string_view surrogate, double alpha) {
  const char* op = "snnsparse::lif_bwd";
  check_cpu(h_seq, op, "h_seq");
  check_float(h_seq, op, "h_seq");
  check_cpu(grad_spikes, op, "grad_spikes");
  check_same_dtype(grad_spikes, h_seq, op, "grad_spikes", "h_seq");
  TORCH_CHECK(h_seq.dim() == 2 && grad_spikes.sizes() == h_seq.sizes(), op,
              ": grad_spikes and h_seq must be the same [T, N] shape, got ", grad_spikes.sizes(), " and ",
              h_seq.sizes());
  TORCH_CHECK_VALUE(tau > 1.0, op, ": tau must be > 1, got ", tau);
  const int64_t Tn = h_seq.size(0), N = h_seq.size(1);
  at::Tensor gvl, gh;
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
  const Surrogate sur = parse_surrogate(std::string(surrogate));
  at::Tensor hs = h_seq.contiguous(), gs = grad_spikes.contiguous();
  at::Tensor gx = empty_output(hs.sizes(), hs.options());
  at::Tensor gv0 = at::empty({N}, hs.options());
  const bool hard = v_reset.has_value();
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "lif_bwd", [&] {
    using T = scalar_t;
    const T t_ = (T)tau, vth = (T)v_threshold, vr = hard ? (T)*v_reset : T(0), a = (T)alpha;
    const T* gsp = gs.data_ptr<T>();
    const T* gvp = gvl.defined() ? gvl.data_ptr<T>() : nullptr;
    const T* ghp = gh.defined() ? gh.data_ptr<T>() : nullptr;
    const T* hp = hs.data_ptr<T>();
    T* gxp = gx.data_ptr<T>();
    T* g0p = gv0.data_ptr<T>();
    auto run = [&](auto sur_c) {
      constexpr Surrogate SC = decltype(sur_c)::value;
      if (hard) {
        if (detach_reset) lif_bwd_kernel<T, SC, true, true>(gsp, gvp, ghp, hp, gxp, g0p, Tn, N, t_, vth, vr, decay_input, a);
        else lif_bwd_kernel<T, SC, true, false>(gsp, gvp, ghp, hp, gxp, g0p, Tn, N, t_, vth, vr, decay_input, a);
      } else {
        if (detach_reset) lif_bwd_kernel<T, SC, false, true>(gsp, gvp, ghp, hp, gxp, g0p, Tn, N, t_, vth, vr, decay_input, a);
        else lif_bwd_kernel<T, SC, false, false>(gsp, gvp, ghp, hp, gxp, g0p, Tn, N, t_, vth, vr, decay_input, a);
      }
    };
    switch (sur) {
      case kSigmoid: run(std::integral_constant<Surrogate, kSigmoid>()); break;
      case kAtan: run(std::integral_constant<Surrogate, kAtan>()); break;
      case kPiecewiseQuadratic: run(std::integral_constant<Surrogate, kPiecewiseQuadratic>()); break;
      case kSoftSign: run(std::integral_constant<Surrogate, kSoftSign>()); break;
      case kErf: run(std::integral_constant<Surrogate, kErf>()); break;
    }
  });
  return {gx, gv0};
}

}  // namespace cpu
}  // namespace snnsparse

TORCH_LIBRARY_IMPL(snnsparse, CPU, m) {
  m.impl("lif_fwd", &snnsparse::cpu::lif_fwd);
  m.impl("lif_bwd", &snnsparse::cpu::lif_bwd);
}
