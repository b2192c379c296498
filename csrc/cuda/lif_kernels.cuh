// Multi-step neuron kernels (LIF, IF, ParametricLIF charges; device code). Host launchers: lif.cu.
//
// One thread per neuron walks t = 0..T-1 with the membrane potential in a register: x, spikes
// and h are read / written once each, coalesced across the warp (time-major [T, N]), and the
// state never goes through global memory between steps. The backward walks t = T-1..0 the same
// way from the saved pre-fire potential h.
//
// Forward numerics replay the reference (snnsparse/ops/reference.py) as torch evaluates it on
// CUDA, op by op: each op in opmath (fp32 for fp16/bf16/fp32), its result rounded to the
// tensor's dtype, division by tau done as multiplication by opmath(1)/opmath(tau) (what torch's
// CUDA div-by-scalar does), no FMA contraction. So spikes, h and v match the reference
// bit for bit on the same device, and spike decisions at threshold agree.
// The backward accumulates in opmath without intermediate rounding (equal to autograd
// through the reference up to rounding).
#pragma once

#include "common.cuh"

namespace snnsparse {
namespace cuda {

// Surrogate ids, in the order of snnsparse/ops/surrogate.py NAMES.
enum Surrogate : int { kSigmoid = 0, kAtan = 1, kPiecewiseQuadratic = 2, kSoftSign = 3, kErf = 4 };

// dS/dH at x = H - V_th; formulas of snnsparse/ops/surrogate.py (SpikingJelly's).
template <typename acc_t>
__device__ __forceinline__ acc_t surrogate_grad(int sg, acc_t x, acc_t alpha) {
  const acc_t one = acc_t(1);
  switch (sg) {
    case kSigmoid: {
      const acc_t sig = one / (one + dev_exp(-alpha * x));
      return alpha * sig * (one - sig);
    }
    case kAtan: {
      const acc_t u = acc_t(1.5707963267948966) * alpha * x;  // pi/2 * alpha * x
      return (alpha / acc_t(2)) / (one + u * u);
    }
    case kPiecewiseQuadratic: {
      const acc_t v = alpha - alpha * alpha * dev_abs(x);
      return v > acc_t(0) ? v : acc_t(0);
    }
    case kSoftSign: {
      const acc_t d = one + alpha * dev_abs(x);
      return alpha / (acc_t(2) * d * d);
    }
    default: {  // kErf
      const acc_t ax = alpha * x;
      return alpha * acc_t(0.5641895835477563) * dev_exp(-(ax * ax));  // alpha / sqrt(pi)
    }
  }
}

// Round an opmath value to the tensor dtype and back (identity for fp32 / fp64).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t rnd(acc_t v) {
  return static_cast<acc_t>(static_cast<scalar_t>(v));
}

// How the neuron charges (the op's `charge`, csrc/registration.cpp).
enum Charge : int { kChargeLif = 0, kChargeIf = 1, kChargePlif = 2 };

struct LifParams {
  int64_t T, N;
  double inv_tau;     // opmath(1) / opmath(tau), cast to acc_t in the kernel (kChargeLif only)
  double v_threshold;
  double v_reset;     // 0 for soft reset (the charge uses V_reset = 0 then)
  bool hard;          // v_reset given
  bool decay_input;
  bool detach_reset;
  int surrogate;
  double alpha;
  int charge;         // Charge; kChargePlif reads k (a device scalar, a kernel argument)
};

// The kernel parameters from the op's arguments (validated by the caller).
inline LifParams make_lif_params(int64_t T, int64_t N, bool is_double, double tau, double v_threshold, bool hard,
                                 double v_reset, bool decay_input, bool detach_reset, int surrogate, double alpha,
                                 int charge = kChargeLif) {
  LifParams p{};
  p.T = T;
  p.N = N;
  // torch's CUDA division by a Python scalar multiplies by opmath(1) / opmath(tau).
  p.inv_tau = charge != kChargeLif ? 0.0 : is_double ? 1.0 / tau : static_cast<double>(1.0f / static_cast<float>(tau));
  p.v_threshold = v_threshold;
  p.v_reset = hard ? v_reset : 0.0;
  p.hard = hard;
  p.decay_input = decay_input;
  p.detach_reset = detach_reset;
  p.surrogate = surrogate;
  p.alpha = alpha;
  p.charge = charge;
  return p;
}

// H[t] from X[t] and V[t-1] (SpikingJelly's operation order), each op rounded to the dtype.
// k: the ParametricLIF constant, as stored (a tensor of the dtype: torch multiplies by it, no rounding of it).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t charge_h(const LifParams& p, acc_t v, acc_t xv, acc_t vr, acc_t inv_tau, acc_t k) {
  if (p.charge == kChargeIf) return rnd<scalar_t>(add_rn(v, xv));                 // v + x
  const acc_t dv = rnd<scalar_t>(sub_rn(v, vr));                                   // v - vr
  if (p.decay_input) {                                    // v + (x - (v - vr)) / tau   or   ... * k
    const acc_t a = rnd<scalar_t>(sub_rn(xv, dv));
    const acc_t c = p.charge == kChargePlif ? k : inv_tau;
    return rnd<scalar_t>(add_rn(v, rnd<scalar_t>(mul_rn(a, c))));
  }
  const acc_t c = p.charge == kChargePlif ? k : inv_tau;  // v - (v - vr) / tau + x   or   v - (v - vr) * k + x
  const acc_t a = rnd<scalar_t>(sub_rn(v, rnd<scalar_t>(mul_rn(dv, c))));
  return rnd<scalar_t>(add_rn(a, xv));
}

// V[t] from H[t]: s*vr + (1-s)*h; + 0*h keeps torch's NaN for h = +inf (bit-exact vr for finite h).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t reset_v(const LifParams& p, acc_t h, acc_t vth, acc_t vr_s, acc_t vth_s) {
  const bool fire = rnd<scalar_t>(sub_rn(h, vth)) >= acc_t(0);  // (h - v_th) >= 0
  if (p.hard) return fire ? rnd<scalar_t>(vr_s + acc_t(0) * h) : h;
  return fire ? rnd<scalar_t>(sub_rn(h, vth_s)) : h;             // h - s*v_th
}

// h_seq may be nullptr (save_h false); k is read only for kChargePlif.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
lif_fwd_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ v0, scalar_t* __restrict__ spk,
               scalar_t* __restrict__ v_last, scalar_t* __restrict__ h_seq, const scalar_t* __restrict__ k,
               const LifParams p) {
  const acc_t inv_tau = static_cast<acc_t>(p.inv_tau);
  const acc_t kk = p.charge == kChargePlif ? static_cast<acc_t>(k[0]) : acc_t(0);
  const acc_t vth = static_cast<acc_t>(p.v_threshold);
  const acc_t vr = static_cast<acc_t>(p.v_reset);
  const acc_t vr_s = rnd<scalar_t>(vr);                 // sr * v_reset with sr = 1
  const acc_t vth_s = rnd<scalar_t>(vth);               // sr * v_threshold with sr = 1
  for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < p.N;
       n += (int64_t)gridDim.x * blockDim.x) {
    acc_t v = static_cast<acc_t>(v0[n]);
    for (int64_t t = 0; t < p.T; ++t) {
      const int64_t i = t * p.N + n;
      const acc_t h = charge_h<scalar_t, acc_t>(p, v, static_cast<acc_t>(x[i]), vr, inv_tau, kk);
      const bool fire = rnd<scalar_t>(sub_rn(h, vth)) >= acc_t(0);  // (h - v_th) >= 0
      spk[i] = static_cast<scalar_t>(fire ? 1.0f : 0.0f);
      if (h_seq != nullptr) h_seq[i] = static_cast<scalar_t>(h);
      v = reset_v<scalar_t, acc_t>(p, h, vth, vr_s, vth_s);
    }
    v_last[n] = static_cast<scalar_t>(v);
  }
}

// grad_v_last and grad_h may be nullptr (treated as 0). grad_h is a gradient flowing into h_seq
// itself (when h_seq is an output of the autograd graph), added to dL/dH[t]. grad_k_n (nullptr: not
// wanted) receives per neuron the sum over t of dL/dH[t] * dH[t]/dk (kChargePlif), with V[t-1]
// recomputed from h_seq[t-1] by the forward's reset (v0 at t = 0); x is read only when decay_input.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
lif_bwd_kernel(const scalar_t* __restrict__ grad_spk, const scalar_t* __restrict__ grad_v_last,
               const scalar_t* __restrict__ grad_h, const scalar_t* __restrict__ h_seq,
               scalar_t* __restrict__ grad_x, scalar_t* __restrict__ grad_v0, const scalar_t* __restrict__ k,
               const scalar_t* __restrict__ x, const scalar_t* __restrict__ v0, acc_t* __restrict__ grad_k_n,
               const LifParams p) {
  const acc_t inv_tau = static_cast<acc_t>(p.inv_tau);
  const acc_t vth = static_cast<acc_t>(p.v_threshold);
  const acc_t vr = static_cast<acc_t>(p.v_reset);
  const acc_t vr_s = rnd<scalar_t>(vr);
  const acc_t vth_s = rnd<scalar_t>(vth);
  const acc_t alpha = static_cast<acc_t>(p.alpha);
  const acc_t one = acc_t(1);
  acc_t dh_dv, dh_dx;  // dH/dV[t-1], dH/dX[t] of the charge
  if (p.charge == kChargeLif) {
    dh_dv = one - inv_tau;
    dh_dx = p.decay_input ? inv_tau : one;
  } else if (p.charge == kChargePlif) {
    const acc_t kk = static_cast<acc_t>(k[0]);
    dh_dv = one - kk;
    dh_dx = p.decay_input ? kk : one;
  } else {
    dh_dv = one;
    dh_dx = one;
  }
  for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < p.N;
       n += (int64_t)gridDim.x * blockDim.x) {
    acc_t gv = grad_v_last != nullptr ? static_cast<acc_t>(grad_v_last[n]) : acc_t(0);
    acc_t gk = acc_t(0);
    for (int64_t t = p.T - 1; t >= 0; --t) {
      const int64_t i = t * p.N + n;
      const acc_t h = static_cast<acc_t>(h_seq[i]);
      const acc_t d = rnd<scalar_t>(sub_rn(h, vth));  // the surrogate's argument, as in forward
      const bool fire = d >= acc_t(0);
      const acc_t psi = surrogate_grad<acc_t>(p.surrogate, d, alpha);
      acc_t dv_dh;
      if (p.hard) {   // V = S*vr + (1-S)*H: dV/dH = (1-S) + (vr - H) * dS/dH
        dv_dh = (fire ? acc_t(0) : one) + (p.detach_reset ? acc_t(0) : (vr - h) * psi);
      } else {        // V = H - S*v_th: dV/dH = 1 - v_th * dS/dH
        dv_dh = one - (p.detach_reset ? acc_t(0) : vth * psi);
      }
      acc_t gh = static_cast<acc_t>(grad_spk[i]) * psi + gv * dv_dh;
      if (grad_h != nullptr) gh += static_cast<acc_t>(grad_h[i]);
      grad_x[i] = static_cast<scalar_t>(gh * dh_dx);
      gv = gh * dh_dv;
      if (grad_k_n != nullptr) {
        const acc_t vp = t > 0 ? reset_v<scalar_t, acc_t>(p, static_cast<acc_t>(h_seq[i - p.N]), vth, vr_s, vth_s)
                               : static_cast<acc_t>(v0[n]);
        gk += gh * (p.decay_input ? static_cast<acc_t>(x[i]) - (vp - vr) : -(vp - vr));  // dH/dk
      }
    }
    grad_v0[n] = static_cast<scalar_t>(gv);
    if (grad_k_n != nullptr) grad_k_n[n] = gk;
  }
}

}  // namespace cuda
}  // namespace snnsparse
