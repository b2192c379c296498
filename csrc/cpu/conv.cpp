// Event-driven dual-sparse conv2d on CPU: out = conv2d(spikes, W*M, b, stride, padding, dilation, groups)
// for binary spikes, forward and backward.
//
// Weight formats, chosen by mask density (kConvDenseMin below, measured; snnsparse/ops/packed.py names them):
//  * dense slabs [Wp (Cin x kh*kw x Cout/groups, masked), tapnnz]: channels-last inside the kernel.
//    Each fired input pixel (n, ci, y, x) adds, for every tap, the contiguous Cout/groups vector
//    Wp[ci, tap, :] (SIMD adds, no multiplies) into a channels-last accumulator of frame n
//    ([Ho*Wo, Cout], L2-resident), which is transposed into the NCHW output at the end.
//    Input channels are walked in order, so the 9 slabs of channel ci stay in L1 across the
//    whole spike plane of ci.
//  * compressed rows [rowptr (Cin+1), idx = tap*(Cout/groups)+co (int16 when it fits, else int32),
//    val, tapnnz]: per input channel the list of kept (tap, co) synapses. A fired pixel adds each
//    kept weight straight into the NCHW output; for stride 1 and interior pixels the output offset
//    of every synapse is precomputed once per call, so the inner loop is load-add-store only.
//    Input channels without kept synapses are only checked for binarity (no bit building, no adds).
// OpenMP (at::parallel_for) over frames in the forward (each frame owns its output: no write
// races) and over blocks of input channels in the weight gradient (each block owns its rows).
#include <cstdlib>

#include "common.h"

namespace snnsparse {
namespace cpu {
namespace {

struct ConvGeom {
  int64_t N, C, H, W, O, G, Cg, Og, kh, kw, KK, sh, sw, ph, pw, dh, dw, Ho, Wo;
};

ConvGeom make_geom(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation, int64_t groups, const char* op) {
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must have 2 values");
  TORCH_CHECK(w.dim() == 4, op, ": weight must be [Cout, Cin/groups, kh, kw], got ", w.sizes());
  TORCH_CHECK(x.dim() == 4, op, ": spikes must be [N, Cin, H, W], got ", x.sizes());
  TORCH_CHECK(groups >= 1 && w.size(0) % groups == 0, op, ": Cout ", w.size(0), " not divisible by groups ", groups);
  TORCH_CHECK(x.size(1) == w.size(1) * groups, op, ": spikes has ", x.size(1), " channels, weight expects ",
              w.size(1) * groups);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 && padding[0] >= 0 &&
                  padding[1] >= 0,
              op, ": bad stride/padding/dilation");
  ConvGeom g;
  g.N = x.size(0); g.C = x.size(1); g.H = x.size(2); g.W = x.size(3);
  g.O = w.size(0); g.G = groups; g.Cg = w.size(1); g.Og = g.O / groups;
  g.kh = w.size(2); g.kw = w.size(3); g.KK = g.kh * g.kw;
  g.sh = stride[0]; g.sw = stride[1]; g.ph = padding[0]; g.pw = padding[1]; g.dh = dilation[0]; g.dw = dilation[1];
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.Ho >= 1 && g.Wo >= 1, op, ": input ", g.H, "x", g.W, " is smaller than the dilated kernel");
  return g;
}

void check_conv_inputs(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& mask, const char* op) {
  check_cpu(x, op, "spikes");
  check_cpu(w, op, "weight");
  check_float(w, op, "weight");
  check_same_dtype(x, w, op, "spikes", "weight");
  if (bias.has_value()) {
    check_cpu(*bias, op, "bias");
    check_same_dtype(*bias, w, op, "bias", "weight");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == w.size(0), op, ": bias must be [", w.size(0), "], got ",
                bias->sizes());
  }
  check_mask(mask, w, op);
}

// Valid output coordinate of input coordinate y through kernel tap k, or -1.
inline int64_t out_coord(int64_t y, int64_t k, int64_t pad, int64_t dil, int64_t stride, int64_t lim) {
  const int64_t t = y + pad - k * dil;
  if (t < 0 || t % stride) return -1;
  const int64_t o = t / stride;
  return o < lim ? o : -1;
}

// Calls f(tap, o) for every kernel tap (ky * kw + kx) through which input pixel i (= y * W + x)
// reaches an output position o (= oy * Wo + ox) inside the output: the scatter pattern shared by
// the event-driven forward and the event-driven weight gradient.
template <typename F>
inline void for_each_tap(const ConvGeom& g, int64_t i, F&& f) {
  const int64_t y = i / g.W, xx = i % g.W;
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    const int64_t oy = out_coord(y, ky, g.ph, g.dh, g.sh, g.Ho);
    if (oy < 0) continue;
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      const int64_t ox = out_coord(xx, kx, g.pw, g.dw, g.sw, g.Wo);
      if (ox < 0) continue;
      f(ky * g.kw + kx, oy * g.Wo + ox);
    }
  }
}

// Blocked transpose: src [P][O] (channels-last) -> dst [O][P].
template <typename scalar_t>
void transpose_to_nchw(const scalar_t* src, scalar_t* dst, int64_t P, int64_t O) {
  const int64_t B = 32;
  for (int64_t p0 = 0; p0 < P; p0 += B)
    for (int64_t o0 = 0; o0 < O; o0 += B) {
      const int64_t p1 = std::min(P, p0 + B), o1 = std::min(O, o0 + B);
      for (int64_t o = o0; o < o1; ++o)
        for (int64_t p = p0; p < p1; ++p) dst[o * P + p] = src[p * O + o];
    }
}

template <typename scalar_t>
int64_t conv_fwd_dense(const ConvGeom& g, const scalar_t* x, const scalar_t* wp, const int64_t* tapnnz,
                       const scalar_t* bias, scalar_t* out, bool count) {
  const int64_t HW = g.H * g.W, P = g.Ho * g.Wo, nw = (HW + 63) / 64;
  std::vector<int64_t> counts(g.N, 0);
  at::parallel_for(0, g.N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<scalar_t> acc(P * g.O);
    std::vector<uint64_t> bits(nw);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t p = 0; p < P; ++p) {
        scalar_t* a = acc.data() + p * g.O;
        if (bias) std::memcpy(a, bias, g.O * sizeof(scalar_t));
        else std::memset(a, 0, g.O * sizeof(scalar_t));
      }
      int64_t cnt = 0;
      for (int64_t ci = 0; ci < g.C; ++ci) {
        const int64_t grp = ci / g.Cg;
        const scalar_t* slab = wp + ci * g.KK * g.Og;
        const int64_t* tn = tapnnz + ci * g.KK;
        nonzero_bits(x + (n * g.C + ci) * HW, HW, bits.data());
        scalar_t* accg = acc.data() + grp * g.Og;
        const int64_t Og = g.Og, O = g.O;
        for_each_bit(bits.data(), nw, [&](int64_t i) {
          for_each_tap(g, i, [&](int64_t tap, int64_t o) {
            scalar_t* __restrict__ d = accg + o * O;
            const scalar_t* __restrict__ s = slab + tap * Og;
#pragma omp simd
            for (int64_t c = 0; c < Og; ++c) d[c] += s[c];
            if (count) cnt += tn[tap];
          });
        });
      }
      transpose_to_nchw(acc.data(), out + n * g.O * P, P, g.O);
      counts[n] = cnt;
    }
  });
  int64_t total = 0;
  for (auto c : counts) total += c;
  return total;
}

// ---- dense, output-stationary, register-blocked (groups == 1) ----
// Weights [nch][kh*kw][Cin][64] (Cout in chunks of 64, zero-padded). Spikes of a frame become
// per-pixel lists of fired input channels; each output pixel keeps 64 output channels in 4 (x2)
// zmm accumulators and, for every tap and every fired channel at the tapped input pixel, adds
// the 64-float weight row (loads + adds only, no stores until the pixel is done). A 64-wide
// chunk of the weights (Cin*9*256 B: 590 KiB at Cin=256) stays in L2 while the frame is walked.
// Measured on 256@16x16, T=4, B=16, rate 0.1, 1 thread (process time): the scatter version
// above (read-modify-write of a channels-last accumulator) 62 ms; this one: see bench/RESULTS.md.
constexpr int64_t kCh = 64;

template <typename scalar_t>
inline void add_row64(scalar_t* acc, const scalar_t* r) {
#pragma omp simd
  for (int c = 0; c < kCh; ++c) acc[c] += r[c];
}

template <typename scalar_t>
int64_t conv_fwd_blocked(const ConvGeom& g, const scalar_t* x, const scalar_t* wq, const int64_t* tapnnz,
                         const scalar_t* bias, scalar_t* out, bool count) {
  const int64_t HW = g.H * g.W, P = g.Ho * g.Wo, nw = (HW + 63) / 64, nch = (g.O + kCh - 1) / kCh;
  const int64_t C = g.C;
  std::vector<int64_t> counts(g.N, 0);
  at::parallel_for(0, g.N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<uint16_t> evl(HW * C);
    std::vector<int32_t> cnt(HW);
    std::vector<uint64_t> bits(nw);
    std::vector<scalar_t> cl(P * kCh);
    for (int64_t n = n0; n < n1; ++n) {
      std::fill(cnt.begin(), cnt.end(), 0);
      for (int64_t ci = 0; ci < C; ++ci) {
        nonzero_bits(x + (n * C + ci) * HW, HW, bits.data());
        for_each_bit(bits.data(), nw, [&](int64_t i) { evl[i * C + cnt[i]++] = (uint16_t)ci; });
      }
      if (count) {
        int64_t cc = 0;
        for (int64_t i = 0; i < HW; ++i) {
          if (!cnt[i]) continue;
          const int64_t y = i / g.W, xx = i % g.W;
          for (int64_t ky = 0; ky < g.kh; ++ky) {
            if (out_coord(y, ky, g.ph, g.dh, g.sh, g.Ho) < 0) continue;
            for (int64_t kx = 0; kx < g.kw; ++kx) {
              if (out_coord(xx, kx, g.pw, g.dw, g.sw, g.Wo) < 0) continue;
              const int64_t tap = ky * g.kw + kx;
              for (int32_t e = 0; e < cnt[i]; ++e) cc += tapnnz[evl[i * C + e] * g.KK + tap];
            }
          }
        }
        counts[n] = cc;
      }
      for (int64_t ch = 0; ch < nch; ++ch) {
        const int64_t c0 = ch * kCh, cw = std::min(kCh, g.O - c0);
        const scalar_t* wc = wq + ch * g.KK * C * kCh;
        for (int64_t oy = 0; oy < g.Ho; ++oy) {
          for (int64_t ox = 0; ox < g.Wo; ++ox) {
            scalar_t* acc = cl.data() + (oy * g.Wo + ox) * kCh;
#if defined(__AVX512F__)
            if constexpr (std::is_same<scalar_t, float>::value) {
              __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
              for (int64_t ky = 0; ky < g.kh; ++ky) {
                const int64_t y = oy * g.sh - g.ph + ky * g.dh;
                if (y < 0 || y >= g.H) continue;
                for (int64_t kx = 0; kx < g.kw; ++kx) {
                  const int64_t xx = ox * g.sw - g.pw + kx * g.dw;
                  if (xx < 0 || xx >= g.W) continue;
                  const int64_t i = y * g.W + xx;
                  const uint16_t* L = evl.data() + i * C;
                  const int32_t m = cnt[i];
                  const float* wt = wc + (ky * g.kw + kx) * C * kCh;
                  int32_t e = 0;
                  for (; e + 1 < m; e += 2) {
                    const float* r0 = wt + (int64_t)L[e] * kCh;
                    const float* r1 = wt + (int64_t)L[e + 1] * kCh;
                    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(r0));
                    a1 = _mm512_add_ps(a1, _mm512_loadu_ps(r0 + 16));
                    a2 = _mm512_add_ps(a2, _mm512_loadu_ps(r0 + 32));
                    a3 = _mm512_add_ps(a3, _mm512_loadu_ps(r0 + 48));
                    b0 = _mm512_add_ps(b0, _mm512_loadu_ps(r1));
                    b1 = _mm512_add_ps(b1, _mm512_loadu_ps(r1 + 16));
                    b2 = _mm512_add_ps(b2, _mm512_loadu_ps(r1 + 32));
                    b3 = _mm512_add_ps(b3, _mm512_loadu_ps(r1 + 48));
                  }
                  if (e < m) {
                    const float* r0 = wt + (int64_t)L[e] * kCh;
                    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(r0));
                    a1 = _mm512_add_ps(a1, _mm512_loadu_ps(r0 + 16));
                    a2 = _mm512_add_ps(a2, _mm512_loadu_ps(r0 + 32));
                    a3 = _mm512_add_ps(a3, _mm512_loadu_ps(r0 + 48));
                  }
                }
              }
              _mm512_storeu_ps(acc, _mm512_add_ps(a0, b0));
              _mm512_storeu_ps(acc + 16, _mm512_add_ps(a1, b1));
              _mm512_storeu_ps(acc + 32, _mm512_add_ps(a2, b2));
              _mm512_storeu_ps(acc + 48, _mm512_add_ps(a3, b3));
              continue;
            }
#endif
            for (int c = 0; c < kCh; ++c) acc[c] = 0;
            for (int64_t ky = 0; ky < g.kh; ++ky) {
              const int64_t y = oy * g.sh - g.ph + ky * g.dh;
              if (y < 0 || y >= g.H) continue;
              for (int64_t kx = 0; kx < g.kw; ++kx) {
                const int64_t xx = ox * g.sw - g.pw + kx * g.dw;
                if (xx < 0 || xx >= g.W) continue;
                const int64_t i = y * g.W + xx;
                const scalar_t* wt = wc + (ky * g.kw + kx) * C * kCh;
                for (int32_t e = 0; e < cnt[i]; ++e) add_row64(acc, wt + (int64_t)evl[i * C + e] * kCh);
              }
            }
          }
        }
        // channels-last chunk [P][64] -> NCHW rows c0..c0+cw of frame n, plus bias
        scalar_t* o = out + (n * g.O + c0) * P;
        for (int64_t p0 = 0; p0 < P; p0 += 32) {
          const int64_t p1 = std::min(P, p0 + 32);
          for (int64_t c = 0; c < cw; ++c) {
            const scalar_t b = bias ? bias[c0 + c] : scalar_t(0);
            for (int64_t p = p0; p < p1; ++p) o[c * P + p] = cl[p * kCh + c] + b;
          }
        }
      }
    }
  });
  int64_t total = 0;
  for (auto c : counts) total += c;
  return total;
}

// ---- compressed rows per OUTPUT channel, spike-row masks (stride 1, W <= 64, float32, AVX-512) ----
// Packed [rowptr (Cout+1), idx = ci_local*kh*kw + tap, val, tapnnz, marker]: the CSR of the
// masked weight viewed as [Cout, Cin/g*kh*kw]. Per frame, every input row (n, ci, y) becomes one
// 64-bit fire mask (all rows of a frame: Cin*H*8 B, L1-resident). Vectorised over output pixels:
// for output channel co and output row oy, each kept synapse (ci, ky, kx, w) contributes w to the
// pixels selected by the mask of input row oy - ph + ky*dh shifted by kx*dw - pw, i.e. one masked
// add of a broadcast w into register accumulators (ceil(Wo/16) zmm). The output row is stored
// once. No multiplications, no read-modify-write of the output, cost ~ kept synapses x Ho x
// ceil(Wo/16) per frame, independent of the spike rate.
// Measured (128@32x32, T4 B16, rate 0.1, density 0.01, 1 thread, process time): per-event
// scatter into NCHW 41.8 ms; input-channel-major masked read-modify-write 28.9 ms; this: see
// bench/RESULTS.md.
#if defined(__AVX512F__)
template <typename idx_t>
int64_t conv_fwd_outrows_f32(const ConvGeom& g, const float* x, const int64_t* rowptr, const idx_t* idx,
                             const float* val, const float* bias, float* out, bool count) {
  const int64_t HW = g.H * g.W, P = g.Ho * g.Wo;
  const int64_t nv = (g.Wo + 15) / 16;
  const uint64_t wo_mask = g.Wo >= 64 ? ~uint64_t(0) : ((uint64_t(1) << g.Wo) - 1);
  // Per synapse: input channel (global), ky*dh - ph (input row offset), column shift.
  const int64_t nnz = rowptr[g.O];
  std::vector<int32_t> sci(nnz), sdy(nnz), ssh(nnz);
  for (int64_t co = 0; co < g.O; ++co) {
    const int64_t grp = co / g.Og;
    for (int64_t j = rowptr[co]; j < rowptr[co + 1]; ++j) {
      const int64_t ee = (int64_t)idx[j];
      const int64_t ci = ee / g.KK, tap = ee % g.KK, ky = tap / g.kw, kx = tap % g.kw;
      sci[j] = (int32_t)(grp * g.Cg + ci);
      sdy[j] = (int32_t)(ky * g.dh - g.ph);
      ssh[j] = (int32_t)(kx * g.dw - g.pw);
    }
  }
  // Input rows padded by Ho rows of zeros above and below so any oy + dy indexes a valid word.
  const int64_t pad = g.Ho + g.kh * g.dh + g.ph + 1;
  const int64_t RH = g.H + 2 * pad;
  std::vector<int64_t> counts(g.N, 0);
  at::parallel_for(0, g.N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<uint64_t> rows(g.C * RH, 0);
    std::vector<uint64_t> pw((HW + 63) / 64);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t ci = 0; ci < g.C; ++ci) {
        const float* plane = x + (n * g.C + ci) * HW;
        uint64_t* r = rows.data() + ci * RH + pad;
        if (64 % g.W == 0 && HW % 64 == 0) {
          // whole-plane scan (full 64-float words), then split words into rows
          nonzero_bits(plane, HW, pw.data());
          const uint64_t rm = g.W == 64 ? ~uint64_t(0) : ((uint64_t(1) << g.W) - 1);
          for (int64_t y = 0; y < g.H; ++y) r[y] = (pw[(y * g.W) >> 6] >> ((y * g.W) & 63)) & rm;
        } else {
          for (int64_t y = 0; y < g.H; ++y) nonzero_bits(plane + y * g.W, g.W, &r[y]);
        }
      }
      int64_t cnt = 0;
      float* o = out + n * g.O * P;
      for (int64_t co = 0; co < g.O; ++co) {
        const int64_t p0 = rowptr[co], p1 = rowptr[co + 1];
        const __m512 b = _mm512_set1_ps(bias ? bias[co] : 0.f);
        float* oc = o + co * P;
        for (int64_t oy = 0; oy < g.Ho; ++oy) {
          __m512 a0 = b, a1 = b, a2 = b, a3 = b;
          for (int64_t j = p0; j < p1; ++j) {
            uint64_t m = rows[sci[j] * RH + pad + oy + sdy[j]];
            const int32_t sh = ssh[j];
            m = sh >= 0 ? (sh >= 64 ? 0 : m >> sh) : (-sh >= 64 ? 0 : m << -sh);
            m &= wo_mask;
            if (count) cnt += __builtin_popcountll(m);
            const __m512 w = _mm512_set1_ps(val[j]);
            a0 = _mm512_mask_add_ps(a0, (__mmask16)m, a0, w);
            if (nv > 1) a1 = _mm512_mask_add_ps(a1, (__mmask16)(m >> 16), a1, w);
            if (nv > 2) a2 = _mm512_mask_add_ps(a2, (__mmask16)(m >> 32), a2, w);
            if (nv > 3) a3 = _mm512_mask_add_ps(a3, (__mmask16)(m >> 48), a3, w);
          }
          float* orow = oc + oy * g.Wo;
          const __m512 acc[4] = {a0, a1, a2, a3};
          for (int64_t v = 0; v < nv; ++v) {
            const int64_t rem = g.Wo - 16 * v;
            const __mmask16 k = rem >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rem) - 1);
            _mm512_mask_storeu_ps(orow + 16 * v, k, acc[v]);
          }
        }
      }
      counts[n] = cnt;
    }
  });
  int64_t total = 0;
  for (auto c : counts) total += c;
  return total;
}
#endif

template <typename scalar_t, typename idx_t>
int64_t conv_fwd_csr(const ConvGeom& g, const scalar_t* x, const int64_t* rowptr, const idx_t* idx,
                     const scalar_t* val, const scalar_t* bias, scalar_t* out, bool count) {
  const int64_t HW = g.H * g.W, P = g.Ho * g.Wo, nw = (HW + 63) / 64;
  const int64_t nnz = rowptr[g.C];
  // Per synapse: output channel, tap offsets, and (stride 1) its whole NCHW offset from the event.
  std::vector<int64_t> off(nnz), cog(nnz);
  std::vector<int32_t> tky(nnz), tkx(nnz);
  for (int64_t ci = 0; ci < g.C; ++ci) {
    const int64_t grp = ci / g.Cg;
    for (int64_t j = rowptr[ci]; j < rowptr[ci + 1]; ++j) {
      const int64_t e = (int64_t)idx[j], tap = e / g.Og, o = grp * g.Og + e % g.Og;
      tky[j] = (int32_t)(tap / g.kw);
      tkx[j] = (int32_t)(tap % g.kw);
      cog[j] = o;
      off[j] = o * P - (int64_t)tky[j] * g.dh * g.Wo - (int64_t)tkx[j] * g.dw;
    }
  }
  const bool s1 = g.sh == 1 && g.sw == 1;
  std::vector<int64_t> counts(g.N, 0);
  at::parallel_for(0, g.N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<uint64_t> bits(nw);
    for (int64_t n = n0; n < n1; ++n) {
      scalar_t* __restrict__ o = out + n * g.O * P;
      for (int64_t c = 0; c < g.O; ++c) {
        const scalar_t b = bias ? bias[c] : scalar_t(0);
        for (int64_t p = 0; p < P; ++p) o[c * P + p] = b;
      }
      int64_t cnt = 0;
      for (int64_t ci = 0; ci < g.C; ++ci) {
        const int64_t p0 = rowptr[ci], p1 = rowptr[ci + 1];
        if (p0 == p1) {  // no kept synapse: its spikes cost no accumulation, but must still be binary
          check_binary(x + (n * g.C + ci) * HW, HW);
          continue;
        }
        nonzero_bits(x + (n * g.C + ci) * HW, HW, bits.data());
        for_each_bit(bits.data(), nw, [&](int64_t i) {
          const int64_t y = i / g.W, xx = i % g.W;
          if (s1 && y + g.ph - (g.kh - 1) * g.dh >= 0 && y + g.ph < g.Ho && xx + g.pw - (g.kw - 1) * g.dw >= 0 &&
              xx + g.pw < g.Wo) {
            scalar_t* __restrict__ ob = o + (y + g.ph) * g.Wo + (xx + g.pw);
            for (int64_t j = p0; j < p1; ++j) ob[off[j]] += val[j];
            cnt += p1 - p0;
          } else {
            for (int64_t j = p0; j < p1; ++j) {
              const int64_t oy = out_coord(y, tky[j], g.ph, g.dh, g.sh, g.Ho);
              if (oy < 0) continue;
              const int64_t ox = out_coord(xx, tkx[j], g.pw, g.dw, g.sw, g.Wo);
              if (ox < 0) continue;
              o[cog[j] * P + oy * g.Wo + ox] += val[j];
              ++cnt;
            }
          }
        });
      }
      counts[n] = cnt;
    }
  });
  int64_t total = 0;
  for (auto c : counts) total += c;
  return count ? total : 0;
}

// Event-driven weight gradient in slab layout: gwp[ci, tap, :] += grad_out_cl[n, oy, ox, group(ci)]
// for every fired (n, ci, y, x). Parallel over blocks of input channels (each owns its slabs).
template <typename scalar_t>
void conv_grad_weight(const ConvGeom& g, const scalar_t* xp, const scalar_t* gp, scalar_t* wpp) {
      const int64_t HW = g.H * g.W, nw = (HW + 63) / 64;
      // Blocks of input channels: a block's gradient slabs (<= ~256 KiB) and one frame of grad_out
      // stay in L2 while every frame is walked.
      const int64_t slab = g.KK * g.Og;
      const int64_t cb = std::max<int64_t>(1, std::min<int64_t>(g.C, (int64_t)(65536 / std::max<int64_t>(1, slab))));
      const int64_t nb = (g.C + cb - 1) / cb;
      at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
        std::vector<uint64_t> bits(nw);
        for (int64_t blk = b0; blk < b1; ++blk) {
          const int64_t c0 = blk * cb, c1 = std::min(g.C, c0 + cb);
          for (int64_t n = 0; n < g.N; ++n) {
            const scalar_t* gn = gp + n * g.Ho * g.Wo * g.O;
            for (int64_t ci = c0; ci < c1; ++ci) {
              nonzero_bits(xp + (n * g.C + ci) * HW, HW, bits.data());
              const scalar_t* gg = gn + (ci / g.Cg) * g.Og;
              scalar_t* dst = wpp + ci * slab;
              const int64_t Og = g.Og, O = g.O;
              for_each_bit(bits.data(), nw, [&](int64_t i) {
                for_each_tap(g, i, [&](int64_t tap, int64_t o) {
                  scalar_t* __restrict__ d = dst + tap * Og;
                  const scalar_t* __restrict__ s = gg + o * O;
#pragma omp simd
                  for (int64_t c = 0; c < Og; ++c) d[c] += s[c];
                });
              });
            }
          }
        }
      });
    
}

// Output-channel rows (format 4) exist only in AVX-512 builds and apply to fp32, stride 1, input and
// output rows of <= 64 pixels (one 64-bit word per row).
bool outrows_ok(at::ScalarType dt, bool stride1, int64_t in_width, int64_t out_width) {
#if defined(__AVX512F__)
  return dt == at::kFloat && stride1 && in_width <= 64 && out_width <= 64;
#else
  (void)dt, (void)stride1, (void)in_width, (void)out_width;
  return false;
#endif
}

}  // namespace

// Packs (weight, mask). format 1: dense channels-last slabs; 2: compressed rows per input channel.
std::vector<at::Tensor> conv_pack(const at::Tensor& weight, const c10::optional<at::Tensor>& mask, int64_t groups,
                                  int64_t format) {
  const int64_t O = weight.size(0), Cg = weight.size(1), KK = weight.size(2) * weight.size(3);
  const int64_t Og = O / groups, C = Cg * groups;
  at::Tensor m = mask.has_value() ? *mask : at::ones_like(weight, weight.options().dtype(at::kBool));
  auto to_slabs = [&](const at::Tensor& t) {
    return t.reshape({groups, Og, Cg, KK}).permute({0, 2, 3, 1}).contiguous().reshape({C, KK, Og});
  };
  at::Tensor ms = to_slabs(m);
  at::Tensor tapnnz = ms.sum(2, false, at::kLong).contiguous();
  if (format == 1) {
    at::Tensor wp = to_slabs(masked_weight(weight, mask));
    return {wp, tapnnz};
  }
  if (format == 3) {  // groups == 1: [nch][KK][C][64], zero-padded Cout
    const int64_t nch = (O + 63) / 64;
    at::Tensor wm = masked_weight(weight, mask).reshape({O, C, KK});
    at::Tensor pad = at::zeros({nch * 64, C, KK}, weight.options());
    pad.slice(0, 0, O).copy_(wm);
    return {pad.reshape({nch, 64, C, KK}).permute({0, 3, 2, 1}).contiguous(), tapnnz};
  }
  if (format == 4) {  // CSR of the weight viewed as [Cout, Cin/g * kh*kw]
    at::Tensor m2 = m.reshape({O, Cg * KK});
    at::Tensor rowptr = at::zeros({O + 1}, weight.options().dtype(at::kLong));
    rowptr.slice(0, 1).copy_(m2.sum(1, false, at::kLong).cumsum(0));
    at::Tensor idx = m2.nonzero().select(1, 1).to(Cg * KK <= 32768 ? at::kShort : at::kInt).contiguous();
    at::Tensor val = weight.reshape({O, Cg * KK}).masked_select(m2).contiguous();
    return {rowptr, idx, val, tapnnz};
  }
  at::Tensor ms2 = ms.reshape({C, KK * Og});
  at::Tensor nz = ms2.nonzero();
  at::Tensor rowptr = at::zeros({C + 1}, weight.options().dtype(at::kLong));
  rowptr.slice(0, 1).copy_(ms2.sum(1, false, at::kLong).cumsum(0));
  at::Tensor idx = nz.select(1, 1).to(KK * Og <= 32768 ? at::kShort : at::kInt).contiguous();
  at::Tensor val = to_slabs(weight).reshape({C, KK * Og}).masked_select(ms2).contiguous();
  return {rowptr, idx, val, tapnnz};
}

std::tuple<at::Tensor, at::Tensor> conv_fwd_packed(const at::Tensor& spikes, const at::Tensor& weight,
                                                   const c10::optional<at::Tensor>& bias,
                                                   const c10::optional<at::Tensor>& mask, int64_t format,
                                                   at::TensorList packed, at::IntArrayRef stride,
                                                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                                   bool count, bool /*dense_weight_grad*/) {
  const char* op = "snnsparse::spike_conv2d_fwd";
  check_conv_inputs(spikes, weight, bias, mask, op);
  const ConvGeom g = make_geom(spikes, weight, stride, padding, dilation, groups, op);
  TORCH_CHECK(format >= 1 && format <= 4 && packed.size() == ((format == 1 || format == 3) ? 2u : 4u), op,
              ": packed weight of format 1 or 3 (dense) has 2 tensors, of format 2 or 4 (compressed) 4; got format ",
              format, " with ", packed.size());
  at::Tensor x = spikes.contiguous();
  at::Tensor out = empty_output({g.N, g.O, g.Ho, g.Wo}, weight.options());
  at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const at::Tensor tapnnz = packed.back().contiguous();
  TORCH_CHECK(tapnnz.scalar_type() == at::kLong && tapnnz.numel() == g.C * g.KK, op, ": bad packed tapnnz");
  int64_t nacc = 0;
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "spike_conv2d_fwd", [&] {
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    if (g.N == 0) return;
    if (format == 3) {
      const at::Tensor wq = packed[0].contiguous();
      TORCH_CHECK(g.G == 1 && g.C <= 65535 && wq.scalar_type() == weight.scalar_type() &&
                      wq.size(0) == (g.O + kCh - 1) / kCh && wq.size(1) == g.KK && wq.size(2) == g.C &&
                      wq.size(3) == kCh,
                  op, ": bad packed blocked weights (groups must be 1)");
      nacc = conv_fwd_blocked<scalar_t>(g, x.data_ptr<scalar_t>(), wq.data_ptr<scalar_t>(), tapnnz.data_ptr<int64_t>(),
                                        bp, out.data_ptr<scalar_t>(), count);
    } else if (format == 1) {
      const at::Tensor wp = packed[0].contiguous();
      TORCH_CHECK(wp.scalar_type() == weight.scalar_type() && wp.numel() == g.C * g.KK * g.Og, op,
                  ": bad packed dense slabs");
      nacc = conv_fwd_dense<scalar_t>(g, x.data_ptr<scalar_t>(), wp.data_ptr<scalar_t>(), tapnnz.data_ptr<int64_t>(),
                                      bp, out.data_ptr<scalar_t>(), count);
    } else if (format == 4) {
      const at::Tensor rowptr = packed[0].contiguous(), idx = packed[1].contiguous(), val = packed[2].contiguous();
      TORCH_CHECK(rowptr.scalar_type() == at::kLong && rowptr.numel() == g.O + 1 &&
                      val.scalar_type() == weight.scalar_type() && idx.numel() == val.numel() &&
                      rowptr[g.O].item<int64_t>() == val.numel(),
                  op, ": bad packed output-channel rows");
      TORCH_CHECK(outrows_ok(weight.scalar_type(), g.sh == 1 && g.sw == 1, g.W, g.Wo), op,
                  ": output-channel rows need float32, stride 1, width <= 64 and AVX-512");
#if defined(__AVX512F__)
      if constexpr (std::is_same<scalar_t, float>::value) {
        if (idx.scalar_type() == at::kShort)
          nacc = conv_fwd_outrows_f32<int16_t>(g, x.data_ptr<float>(), rowptr.data_ptr<int64_t>(),
                                               idx.data_ptr<int16_t>(), val.data_ptr<float>(),
                                               reinterpret_cast<const float*>(bp), out.data_ptr<float>(), count);
        else
          nacc = conv_fwd_outrows_f32<int32_t>(g, x.data_ptr<float>(), rowptr.data_ptr<int64_t>(),
                                               idx.data_ptr<int32_t>(), val.data_ptr<float>(),
                                               reinterpret_cast<const float*>(bp), out.data_ptr<float>(), count);
      }
#endif
    } else {
      const at::Tensor rowptr = packed[0].contiguous(), idx = packed[1].contiguous(), val = packed[2].contiguous();
      TORCH_CHECK(rowptr.scalar_type() == at::kLong && rowptr.numel() == g.C + 1 &&
                      val.scalar_type() == weight.scalar_type() && idx.numel() == val.numel() &&
                      rowptr[g.C].item<int64_t>() == val.numel(),
                  op, ": bad packed compressed rows");
      if (idx.scalar_type() == at::kShort) {
        nacc = conv_fwd_csr<scalar_t, int16_t>(g, x.data_ptr<scalar_t>(), rowptr.data_ptr<int64_t>(),
                                               idx.data_ptr<int16_t>(), val.data_ptr<scalar_t>(), bp,
                                               out.data_ptr<scalar_t>(), count);
      } else {
        TORCH_CHECK(idx.scalar_type() == at::kInt, op, ": packed indices must be int16 or int32");
        nacc = conv_fwd_csr<scalar_t, int32_t>(g, x.data_ptr<scalar_t>(), rowptr.data_ptr<int64_t>(),
                                               idx.data_ptr<int32_t>(), val.data_ptr<scalar_t>(), bp,
                                               out.data_ptr<scalar_t>(), count);
      }
    }
  });
  return {out, scalar_count(count ? nacc : 0)};
}

// Density at or above which the dense formats (blocks / slabs) are used: the measured crossover
// (bench/RESULTS.md, "format crossover"). The only place this number lives.
constexpr double kConvDenseMin = 0.05;

// The format the core op uses for (weight, mask, geometry): dense blocks (groups 1) or slabs above
// kConvDenseMin; below it output-channel rows where that kernel exists in this build and applies
// (fp32, stride 1, rows of <= 64 pixels), else compressed rows per input channel.
int64_t conv_auto_format(const at::Tensor& weight, const c10::optional<at::Tensor>& mask, int64_t groups,
                         bool stride1, int64_t in_width, int64_t out_width) {
  if (mask_density(mask) >= kConvDenseMin) return groups == 1 && weight.size(1) <= 65535 ? 3 : 1;
  return outrows_ok(weight.scalar_type(), stride1, in_width, out_width) ? 4 : 2;
}

std::tuple<int64_t, std::vector<at::Tensor>> conv_pack_op(const at::Tensor& weight,
                                                          const c10::optional<at::Tensor>& mask, int64_t groups,
                                                          at::IntArrayRef stride, int64_t in_width, int64_t out_width,
                                                          int64_t format) {
  const char* op = "snnsparse::spike_conv2d_pack";
  check_cpu(weight, op, "weight");
  check_float(weight, op, "weight");
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be [Cout, Cin/groups, kh, kw], got ", weight.sizes());
  TORCH_CHECK(groups >= 1 && weight.size(0) % groups == 0, op, ": Cout ", weight.size(0), " not divisible by groups ",
              groups);
  TORCH_CHECK(stride.size() == 2, op, ": stride must have 2 values");
  check_mask(mask, weight, op);
  TORCH_CHECK(format >= 0 && format <= 4, op, ": format must be 0 (auto) or 1-4, got ", format);
  const bool s1 = stride[0] == 1 && stride[1] == 1;
  if (format == 0) format = conv_auto_format(weight, mask, groups, s1, in_width, out_width);
  TORCH_CHECK(format != 3 || (groups == 1 && weight.size(1) <= 65535), op, ": format 3 (blocks) needs groups 1");
  TORCH_CHECK(format != 4 || outrows_ok(weight.scalar_type(), s1, in_width, out_width), op,
              ": format 4 (output-channel rows) needs float32, stride 1, widths <= 64 and a build with AVX-512 "
              "(cpu_isa() = ", cpu_isa_name(), ")");
  return {format, conv_pack(weight.contiguous(), mask, groups, format)};
}

// Core op: packs per call, so it can never serve a packing of other weights (no cache anywhere).
std::tuple<at::Tensor, at::Tensor> conv_fwd(const at::Tensor& spikes, const at::Tensor& weight,
                                            const c10::optional<at::Tensor>& bias,
                                            const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                            bool count, bool dense_weight_grad) {
  const char* op = "snnsparse::spike_conv2d_fwd";
  check_conv_inputs(spikes, weight, bias, mask, op);
  const ConvGeom g = make_geom(spikes, weight, stride, padding, dilation, groups, op);
  auto [format, packed] = conv_pack_op(weight, mask, groups, stride, g.W, g.Wo, 0);
  return conv_fwd_packed(spikes, weight, bias, mask, format, packed, stride, padding, dilation, groups, count,
                         dense_weight_grad);
}

std::tuple<at::Tensor, at::Tensor> conv_bwd(const at::Tensor& grad_out, const at::Tensor& spikes,
                                            const at::Tensor& weight, const c10::optional<at::Tensor>& mask,
                                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                            int64_t groups, bool need_input_grad, bool need_weight_grad,
                                            bool dense_weight_grad) {
  const char* op = "snnsparse::spike_conv2d_bwd";
  check_conv_inputs(spikes, weight, c10::nullopt, mask, op);
  check_cpu(grad_out, op, "grad_out");
  check_same_dtype(grad_out, weight, op, "grad_out", "weight");
  const ConvGeom g = make_geom(spikes, weight, stride, padding, dilation, groups, op);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == g.N && grad_out.size(1) == g.O && grad_out.size(2) == g.Ho &&
                  grad_out.size(3) == g.Wo,
              op, ": grad_out must be [", g.N, ", ", g.O, ", ", g.Ho, ", ", g.Wo, "], got ", grad_out.sizes());
  at::Tensor grad_in, grad_w;
  if (need_input_grad) {
    // Dense grad_out: the transposed conv with the masked weight (oneDNN).
    at::Tensor wm = masked_weight(weight, mask);
    grad_in = std::get<0>(at::convolution_backward(grad_out.contiguous(), spikes.contiguous(), wm, c10::nullopt,
                                                   stride, padding, dilation, false, {0, 0}, groups,
                                                   {true, false, false}));
  } else {
    grad_in = at::empty({0}, weight.options());
  }
  if (need_weight_grad) {
    // Event-driven: gwp[ci, tap, :] += grad_out_cl[n, oy, ox, group(ci)] for every fired (n, ci, y, x).
    at::Tensor gcl = grad_out.permute({0, 2, 3, 1}).contiguous();
    at::Tensor gwp = at::zeros({g.C, g.KK, g.Og}, weight.options());
    at::Tensor x = spikes.contiguous();
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "spike_conv2d_bwd", [&] {
      conv_grad_weight<scalar_t>(g, x.data_ptr<scalar_t>(), gcl.data_ptr<scalar_t>(), gwp.data_ptr<scalar_t>());
    });
    grad_w = gwp.reshape({g.G, g.Cg, g.KK, g.Og}).permute({0, 3, 1, 2}).reshape({g.O, g.Cg, g.kh, g.kw}).contiguous();
    if (mask.has_value() && !dense_weight_grad) grad_w.masked_fill_(mask->logical_not(), 0);
  } else {
    grad_w = at::empty({0}, weight.options());
  }
  return {grad_in, grad_w};
}

}  // namespace cpu
}  // namespace snnsparse

TORCH_LIBRARY_IMPL(snnsparse, CPU, m) {
  m.impl("spike_conv2d_fwd", &snnsparse::cpu::conv_fwd);
  m.impl("spike_conv2d_fwd_packed", &snnsparse::cpu::conv_fwd_packed);
  m.impl("spike_conv2d_bwd", &snnsparse::cpu::conv_bwd);
  m.impl("spike_conv2d_pack", &snnsparse::cpu::conv_pack_op);
}
