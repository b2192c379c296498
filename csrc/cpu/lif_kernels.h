// SIMD kernels of the fused multi-step neuron: LIF, IF and ParametricLIF charges (csrc/cpu/lif.cpp has the
// ops and their checks; the charges' equations are in csrc/registration.cpp).
// Part of the ISA-compiled kernel source: included only by isa_variant.h, inside namespace
// snnsparse::cpu::<variant> and its `#pragma GCC target`; include no header here.
//
// One pass over time per neuron: neurons are split into blocks of 4096 (OpenMP over blocks),
// each block keeps its membrane potentials in a local array and walks t = 0..T-1 (backward:
// T-1..0) with SIMD loops over the block (auto-vectorised for the variant's vector width). The
// forward writes spikes, v_last and (for backward) h_seq only; the backward recomputes the spike
// and the surrogate derivative from h_seq. Float operation order is the reference's
// (snnsparse/ops/reference.py), so spikes and v_last are bit-identical to it for float32/float64.
// The selects below (`fire ? vr + 0*h : h`, exp_f32's clamp) vectorise without AVX-512 masks only
// because setup.py compiles with -fno-trapping-math (why and what it costs: setup.py).
#ifndef SNNSPARSE_ISA_LEVEL
#error "lif_kernels.h is compiled only through isa_variant.h"
#endif

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
// Every x86-64 has streaming stores (SSE movntps); each variant uses its widest.
template <typename T>
inline void store_block(T* __restrict__ dst, const T* __restrict__ src, int64_t n) {
#if defined(__x86_64__)
  if constexpr (std::is_same<T, float>::value) {
    if ((((uintptr_t)dst) & 63) == 0 && (n & 15) == 0) {
#if SNNSPARSE_ISA_LEVEL >= 2
      for (int64_t i = 0; i < n; i += 16) _mm512_stream_ps(dst + i, _mm512_load_ps(src + i));
#elif SNNSPARSE_ISA_LEVEL == 1
      for (int64_t i = 0; i < n; i += 8) _mm256_stream_ps(dst + i, _mm256_load_ps(src + i));
#else
      for (int64_t i = 0; i < n; i += 4) _mm_stream_ps(dst + i, _mm_load_ps(src + i));
#endif
      return;
    }
  }
#endif
  std::memcpy(dst, src, n * sizeof(T));
}

// Orders the streaming stores of a thread before the parallel region ends.
inline void store_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
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

// H[t] from X[t] and V[t-1], in SpikingJelly's float operation order (csrc/registration.cpp, lif_fwd).
// c is tau (kChargeLif) or k (kChargePlif).
template <Charge kC, bool kDecay, typename T>
inline T charge_h(T v, T x, T c, T vr) {
  if constexpr (kC == kChargeIf) return v + x;
  else if constexpr (kC == kChargeLif) return kDecay ? v + (x - (v - vr)) / c : v - (v - vr) / c + x;
  else return kDecay ? v + (x - (v - vr)) * c : v - (v - vr) * c + x;
}

// V[t] from H[t] (fire and reset). Hard reset as the reference's S*V_reset + (1-S)*H: vr + 0*h is vr for
// finite h (bit-exact) and NaN for h = +inf, as torch gives; a plain select would hide the overflow.
template <bool kHard, typename T>
inline T reset_v(T h, T vth, T vr) {
  const bool fire = h >= vth;
  return kHard ? (fire ? vr + T(0) * h : h) : (fire ? h - vth : h);
}

template <typename T, Charge kC, bool kDecay, bool kHard, bool kSaveH>
void lif_fwd_kernel(const T* x, const T* v0, T* s, T* vlast, T* hs, int64_t Tn, int64_t N, T c, T vth, T vr) {
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
          const T h = charge_h<kC, kDecay>(v[i], xt[i], c, vr);
          st[i] = h >= vth ? T(1) : T(0);
          if (kSaveH) ht[i] = h;
          v[i] = reset_v<kHard>(h, vth, vr);
        }
        store_block(s + t * N + b0, sb, nb);
        if (kSaveH) store_block(hs + t * N + b0, hb, nb);
      }
      for (int64_t i = 0; i < nb; ++i) vlast[b0 + i] = v[i];
    }
    store_fence();
  });
}

// gk (kChargePlif's dL/dk per neuron) needs V[t-1]: recomputed from h_seq[t-1] by the forward's reset
// (bit-identical to the forward's), v0 at t = 0.
template <typename T, Surrogate S, bool kHard, bool kDetach>
void lif_bwd_kernel(const LifBwdArgs<T>& a) {
  const T* gs = a.gs;
  const T* gvl = a.gvl;
  const T* gh = a.gh;
  const T* hs = a.hs;
  const int64_t Tn = a.Tn, N = a.N;
  const T dhdx = a.dhdx, dhdv = a.dhdv, vth = a.vth, vr = a.vr, alpha = a.alpha;
  at::parallel_for(0, N, kLifBlock, [&](int64_t i0, int64_t i1) {
    alignas(64) T gv[kLifBlock];
    alignas(64) T gb[kLifBlock];
    alignas(64) T gHb[kLifBlock];  // dL/dH[t] of the block (gk only)
    alignas(64) T gkb[kLifBlock];
    for (int64_t b0 = i0; b0 < i1; b0 += kLifBlock) {
      const int64_t nb = std::min(kLifBlock, i1 - b0);
      for (int64_t i = 0; i < nb; ++i) gv[i] = gvl ? gvl[b0 + i] : T(0);
      if (a.gk)
        for (int64_t i = 0; i < nb; ++i) gkb[i] = T(0);
      for (int64_t t = Tn - 1; t >= 0; --t) {
        const T* __restrict__ ht = hs + t * N + b0;
        const T* __restrict__ gst = gs + t * N + b0;
        const T* __restrict__ ght = gh ? gh + t * N + b0 : nullptr;
        T* __restrict__ gxt = gb;
        T* __restrict__ gHt = gHb;
        // One loop body, instantiated with and without the h_seq gradient and the k gradient (no
        // per-element branch).
        auto step = [&](auto with_gh, auto with_gk) {
          constexpr bool kGradH = decltype(with_gh)::value;
          constexpr bool kGradK = decltype(with_gk)::value;
#pragma omp simd
          for (int64_t i = 0; i < nb; ++i) {
            const T h = ht[i];
            const T sg = surrogate_grad<S, T>(h - vth, alpha);
            const T sp = h >= vth ? T(1) : T(0);
            T dvdh;
            if (kHard) dvdh = kDetach ? T(1) - sp : (T(1) - sp) + (vr - h) * sg;
            else dvdh = kDetach ? T(1) : T(1) - vth * sg;
            T g = gst[i] * sg + gv[i] * dvdh;
            if constexpr (kGradH) g = g + ght[i];
            if constexpr (kGradK) gHt[i] = g;
            gxt[i] = g * dhdx;
            gv[i] = g * dhdv;
          }
        };
        if (ght) {
          if (a.gk) step(std::true_type(), std::true_type());
          else step(std::true_type(), std::false_type());
        } else {
          if (a.gk) step(std::false_type(), std::true_type());
          else step(std::false_type(), std::false_type());
        }
        store_block(a.gx + t * N + b0, gb, nb);
        if (a.gk) {
          const T* __restrict__ hp = t > 0 ? hs + (t - 1) * N + b0 : nullptr;
          const T* __restrict__ vp0 = a.v0 + b0;
          const T* __restrict__ xt = a.x ? a.x + t * N + b0 : nullptr;
          const bool decay = a.decay_input;
#pragma omp simd
          for (int64_t i = 0; i < nb; ++i) {
            const T vp = hp ? reset_v<kHard>(hp[i], vth, vr) : vp0[i];
            const T f = decay ? xt[i] - (vp - vr) : -(vp - vr);  // dH[t]/dk
            gkb[i] = gkb[i] + gHt[i] * f;
          }
        }
      }
      for (int64_t i = 0; i < nb; ++i) a.gv0[b0 + i] = gv[i];
      if (a.gk)
        for (int64_t i = 0; i < nb; ++i) a.gk[b0 + i] = gkb[i];
    }
    store_fence();
  });
}

// ---- table entries: the runtime options select a compiled instantiation ----
template <typename T>
void lif_fwd(const LifFwdArgs<T>& a) {
  auto run = [&](auto ch, auto d, auto hd, auto sv) {
    lif_fwd_kernel<T, decltype(ch)::value, decltype(d)::value, decltype(hd)::value, decltype(sv)::value>(
        a.x, a.v0, a.s, a.vlast, a.h, a.Tn, a.N, a.c, a.vth, a.vr);
  };
  using Y = std::true_type;
  using F = std::false_type;
  auto by_reset = [&](auto ch, auto d) {
    const bool save_h = a.h != nullptr;
    if (a.hard) { if (save_h) run(ch, d, Y(), Y()); else run(ch, d, Y(), F()); }
    else { if (save_h) run(ch, d, F(), Y()); else run(ch, d, F(), F()); }
  };
  using Lif = std::integral_constant<Charge, kChargeLif>;
  using If = std::integral_constant<Charge, kChargeIf>;
  using Plif = std::integral_constant<Charge, kChargePlif>;
  switch (a.charge) {
    case kChargeIf: by_reset(If(), Y()); break;  // no decay_input variants: V + X either way
    case kChargeLif: if (a.decay_input) by_reset(Lif(), Y()); else by_reset(Lif(), F()); break;
    case kChargePlif: if (a.decay_input) by_reset(Plif(), Y()); else by_reset(Plif(), F()); break;
  }
}

template <typename T>
void lif_bwd(const LifBwdArgs<T>& a) {
  auto run = [&](auto sur_c) {
    constexpr Surrogate SC = decltype(sur_c)::value;
    if (a.hard) {
      if (a.detach_reset) lif_bwd_kernel<T, SC, true, true>(a);
      else lif_bwd_kernel<T, SC, true, false>(a);
    } else {
      if (a.detach_reset) lif_bwd_kernel<T, SC, false, true>(a);
      else lif_bwd_kernel<T, SC, false, false>(a);
    }
  };
  switch (a.surrogate) {
    case kSigmoid: run(std::integral_constant<Surrogate, kSigmoid>()); break;
    case kAtan: run(std::integral_constant<Surrogate, kAtan>()); break;
    case kPiecewiseQuadratic: run(std::integral_constant<Surrogate, kPiecewiseQuadratic>()); break;
    case kSoftSign: run(std::integral_constant<Surrogate, kSoftSign>()); break;
    case kErf: run(std::integral_constant<Surrogate, kErf>()); break;
  }
}
