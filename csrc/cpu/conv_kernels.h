// SIMD kernels of the event-driven conv2d (csrc/cpu/conv.cpp has the op, the checks, the packing
// and the weight formats). Part of the ISA-compiled kernel source: included only by isa_variant.h,
// inside namespace snnsparse::cpu::<variant> and its `#pragma GCC target`; include no header here.
//
// OpenMP (at::parallel_for) over frames in the forward (each frame owns its output: no write
// races) and over blocks of input channels in the weight gradient (each block owns its rows).
#ifndef SNNSPARSE_ISA_LEVEL
#error "conv_kernels.h is compiled only through isa_variant.h"
#endif

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

template <typename scalar_t, typename spike_t>
int64_t conv_fwd_dense(const ConvGeom& g, const spike_t* x, const scalar_t* wp, const int64_t* tapnnz,
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
// zmm accumulators (AVX2: 8 ymm; generic: an L1-resident row the compiler vectorises) and, for every tap and every fired channel at the tapped input pixel, adds
// the 64-float weight row (loads + adds only, no stores until the pixel is done). A 64-wide
// chunk of the weights (Cin*9*256 B: 590 KiB at Cin=256) stays in L2 while the frame is walked.
// Measured on 256@16x16, T=4, B=16, rate 0.1, 1 thread (process time): the scatter version
// above (read-modify-write of a channels-last accumulator) 62 ms; this one: see bench/RESULTS.md.
// kCh (64, kernels.h): the output channels of one block, shared with the packing in conv.cpp.

template <typename scalar_t>
inline void add_row64(scalar_t* acc, const scalar_t* r) {
#pragma omp simd
  for (int c = 0; c < kCh; ++c) acc[c] += r[c];
}

// Calls f(i, tap) for every kernel tap (ky * kw + kx) of output pixel (oy, ox) whose input pixel i
// (= y * W + x) lies inside the input: the gather pattern of the output-stationary kernels.
template <typename F>
__attribute__((always_inline)) inline void for_each_input_tap(const ConvGeom& g, int64_t oy, int64_t ox, F&& f) {
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    const int64_t y = oy * g.sh - g.ph + ky * g.dh;
    if (y < 0 || y >= g.H) continue;
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      const int64_t xx = ox * g.sw - g.pw + kx * g.dw;
      if (xx < 0 || xx >= g.W) continue;
      f(y * g.W + xx, ky * g.kw + kx);
    }
  }
}

// Calls f(L, m, wt) for every kernel tap of output pixel (oy, ox) whose input pixel lies inside the
// input: L[0..m) are the fired input channels at that pixel (pixel i's list starts at evl + i * S),
// wt the tap's [C][64] weight rows. Each variant of the blocked kernel below keeps its own
// accumulators and walks the events in f.
template <typename scalar_t, typename F>
__attribute__((always_inline)) inline void for_each_tap_events(const ConvGeom& g, int64_t oy, int64_t ox,
                                                               const uint16_t* evl, int64_t S, const int32_t* cnt,
                                                               const scalar_t* wc, F&& f) {
  for_each_input_tap(g, oy, ox, [&](int64_t i, int64_t tap) { f(evl + i * S, cnt[i], wc + tap * g.C * kCh); });
}

// Calls f(i, ci, e) for every set bit e of a frame's bits (e = ci * HW + i, in order): input pixel i
// of input channel ci. The frame-to-event-lists walk of the output-stationary kernels (bits come in
// channel order, so the channel is counted up, not divided out).
template <typename F>
inline void for_each_frame_event(const uint64_t* bits, int64_t nwf, int64_t HW, F&& f) {
  int64_t ci = 0, start = 0;  // the channel of bit e and its first bit
  for_each_bit(bits, nwf, [&](int64_t e) {
    while (e >= start + HW) {
      ++ci;
      start += HW;
    }
    f(e - start, ci, e);
  });
}

// The value of a spike count read at a nonzero entry (kCounts below): an integer 1..kMaxCount, else
// ValueError (NaN, a fraction, a negative or larger value; the caller then takes bit planes, which
// take any count). Why a cap of 15: a count v is v additions of the same row, so the fp32 error of a
// sum grows with v (relative 5e-5 at v = 255, 1e-6 at v = 7, measured against float64) and so does the
// work, where bit planes cost log2(v) passes; SEW ADD's counts are 2-4.
constexpr int kMaxCount = 15;
template <typename scalar_t>
inline int count_value(scalar_t v) {
  if (!(v >= scalar_t(1) && v <= scalar_t(kMaxCount)) || v != (scalar_t)(int)v) non_count_error((double)v);
  return (int)v;
}

// kCounts: x holds small non-negative integer counts (SEW ADD's sum of spike tensors) instead of
// spikes; a count v puts its channel v times in its pixel's event list, so its weight row is added
// v times: one pass where bit planes of the counts took one per plane (and their glue).
template <typename scalar_t, typename spike_t, bool kCounts = false>
int64_t conv_fwd_blocked(const ConvGeom& g, const spike_t* x, const scalar_t* wq, const int64_t* tapnnz,
                         const scalar_t* bias, scalar_t* out, bool count) {
  const int64_t HW = g.H * g.W, P = g.Ho * g.Wo, nch = (g.O + kCh - 1) / kCh;
  const int64_t C = g.C, nwf = (C * HW + 63) / 64;
  std::vector<int64_t> counts(g.N, 0);
  // Frames go in groups of F whose event lists (2 bytes an event slot) fit in kGroupBytes: the lists of a
  // group are built first, then each 64-channel weight chunk serves every frame of the group while it is
  // in cache, where one frame at a time streamed every chunk again for every frame. Measured against one
  // frame at a time (32 frames at rate 0.04, 5% density, 2 threads, EPYC AVX2 host, interleaved): 256@2x2
  // 109 -> 86 us, 512@1x1 56 -> 53 us, 128@4x4 and 64@8x8 unchanged; maps of 64@16x16 and up have F = 1.
  constexpr int64_t kGroupBytes = 32 << 10;
  const int64_t F = std::max<int64_t>(1, kGroupBytes / std::max<int64_t>(1, 2 * HW * C));
  at::parallel_for(0, g.N, 1, [&](int64_t n0, int64_t n1) {
    const int64_t Fg = std::min(F, n1 - n0);
    std::vector<uint16_t> evl(Fg * HW * C);
    std::vector<int32_t> cnt(Fg * HW);
    std::vector<int64_t> evo(Fg), evs(Fg);  // a frame's event lists: offset in evl, capacity per pixel
    std::vector<uint64_t> bits(nwf);
    std::vector<scalar_t> cl(P * kCh);
    for (int64_t g0 = n0; g0 < n1; g0 += Fg) {
      const int64_t gn = std::min(Fg, n1 - g0);
      int64_t used = 0;
      for (int64_t f = 0; f < gn; ++f) {
        const int64_t n = g0 + f;
        int32_t* cn = cnt.data() + f * HW;
        std::fill(cn, cn + HW, 0);
        // The whole frame in one scan (bit e = ci * HW + i, in channel order): one call per channel
        // plane was most of the time at small images (ResNet-18's 512@1x1 at 32x32 input: 16k calls of
        // one element per call; see bench/RESULTS.md).
        const spike_t* xn = x + n * C * HW;
        nonzero_bits<spike_t, !kCounts>(xn, C * HW, bits.data());
        int64_t S = C;  // capacity of a pixel's event list: C, or C * the frame's largest count
        if constexpr (kCounts) {
          int vmax = 1;
          for_each_bit(bits.data(), nwf, [&](int64_t e) { vmax = std::max(vmax, count_value(xn[e])); });
          S = C * vmax;
        }
        if ((size_t)(used + HW * S) > evl.size()) evl.resize(used + HW * S);
        evo[f] = used;
        evs[f] = S;
        used += HW * S;
        uint16_t* ev = evl.data() + evo[f];
        for_each_frame_event(bits.data(), nwf, HW, [&](int64_t i, int64_t ci, int64_t e) {
          if constexpr (kCounts) {
            for (int r = static_cast<int>(xn[e]); r > 0; --r) ev[i * S + cn[i]++] = (uint16_t)ci;
          } else {
            ev[i * S + cn[i]++] = (uint16_t)ci;
          }
        });
        if (count) {
          int64_t cc = 0;
          for (int64_t i = 0; i < HW; ++i) {
            if (!cn[i]) continue;
            const int64_t y = i / g.W, xx = i % g.W;
            for (int64_t ky = 0; ky < g.kh; ++ky) {
              if (out_coord(y, ky, g.ph, g.dh, g.sh, g.Ho) < 0) continue;
              for (int64_t kx = 0; kx < g.kw; ++kx) {
                if (out_coord(xx, kx, g.pw, g.dw, g.sw, g.Wo) < 0) continue;
                const int64_t tap = ky * g.kw + kx;
                for (int32_t e = 0; e < cn[i]; ++e) cc += tapnnz[ev[i * S + e] * g.KK + tap];
              }
            }
          }
          counts[n] = cc;
        }
      }
      for (int64_t ch = 0; ch < nch; ++ch) {
        for (int64_t f = 0; f < gn; ++f) {
          const int64_t n = g0 + f, S = evs[f];
          const uint16_t* ev = evl.data() + evo[f];
          const int32_t* cn = cnt.data() + f * HW;
          const int64_t c0 = ch * kCh, cw = std::min(kCh, g.O - c0);
          const scalar_t* wc = wq + ch * g.KK * C * kCh;
          for (int64_t oy = 0; oy < g.Ho; ++oy) {
            for (int64_t ox = 0; ox < g.Wo; ++ox) {
              scalar_t* acc = cl.data() + (oy * g.Wo + ox) * kCh;
#if SNNSPARSE_ISA_LEVEL >= 2
              if constexpr (std::is_same<scalar_t, float>::value) {
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                for_each_tap_events(g, oy, ox, ev, S, cn, wc, [&](const uint16_t* L, int32_t m,
                                                                  const float* wt) {
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
                });
                _mm512_storeu_ps(acc, _mm512_add_ps(a0, b0));
                _mm512_storeu_ps(acc + 16, _mm512_add_ps(a1, b1));
                _mm512_storeu_ps(acc + 32, _mm512_add_ps(a2, b2));
                _mm512_storeu_ps(acc + 48, _mm512_add_ps(a3, b3));
                continue;
              }
#elif SNNSPARSE_ISA_LEVEL == 1
              if constexpr (std::is_same<scalar_t, float>::value) {
                // AVX2: the 64 channels fill 8 ymm accumulators (half the register file), so one
                // set; 8 independent add chains of 4-cycle latency at 2 adds per cycle keep the
                // adders busy without a second set.
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
                for_each_tap_events(g, oy, ox, ev, S, cn, wc, [&](const uint16_t* L, int32_t m,
                                                                  const float* wt) {
                  for (int32_t e = 0; e < m; ++e) {
                    const float* r = wt + (int64_t)L[e] * kCh;
                    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(r));
                    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(r + 8));
                    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(r + 16));
                    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(r + 24));
                    a4 = _mm256_add_ps(a4, _mm256_loadu_ps(r + 32));
                    a5 = _mm256_add_ps(a5, _mm256_loadu_ps(r + 40));
                    a6 = _mm256_add_ps(a6, _mm256_loadu_ps(r + 48));
                    a7 = _mm256_add_ps(a7, _mm256_loadu_ps(r + 56));
                  }
                });
                store_64f(acc, a0, a1, a2, a3, a4, a5, a6, a7);
                continue;
              }
#endif
              for (int c = 0; c < kCh; ++c) acc[c] = 0;
              for_each_tap_events(g, oy, ox, ev, S, cn, wc, [&](const uint16_t* L, int32_t m,
                                                                const scalar_t* wt) {
                for (int32_t e = 0; e < m; ++e) add_row64(acc, wt + (int64_t)L[e] * kCh);
              });
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
    }
  });
  int64_t total = 0;
  for (auto c : counts) total += c;
  return total;
}

// ---- compressed rows per OUTPUT channel, spike-row masks (stride 1, W <= 64, float32, AVX-512 / AVX2) ----
// The avx512 and avx2 variants have it: the masked adds of 16-pixel (AVX2: 8-pixel) groups selected by a
// slice of a row mask are what make it pay; kernels().f32.spikes.conv_outrows16 is nullptr in the generic
// variant and conv.cpp's outrows_ok (hence the automatic format choice and the pack op) asks exactly that.
// AVX2 has no masked add: the 8 bits become a lane mask (broadcast, and, compare with the lane's bit) and
// the sum is blended in, so an unselected lane keeps its value exactly (a plain add of 0 would turn an
// accumulated -0.0 into +0.0). Without it an AVX2 host had no kernel for Spikformer's 1x1 projections on
// rows of 64 tokens but the compressed input-channel rows (bench/RESULTS.md: spikformer_cifar10 1.47x vs
// SpikingJelly on the EPYC AVX2 host, 2.5x on the AVX-512 one).
// Packed [rowptr (Cout+1), idx = ci_local*kh*kw + tap, val, tapnnz]: the CSR of the
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
#if SNNSPARSE_ISA_LEVEL >= 1
template <typename idx_t, typename spike_t>
int64_t conv_fwd_outrows_f32(const ConvGeom& g, const spike_t* x, const int64_t* rowptr, const idx_t* idx,
                             const float* val, const float* bias, float* out, bool count) {
  const int64_t HW = g.H * g.W, P = g.Ho * g.Wo;
  const int64_t nv = (g.Wo + 15) / 16, nv8 = (g.Wo + 7) / 8;
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
        const spike_t* plane = x + (n * g.C + ci) * HW;
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
      // The fire mask of the output pixels that synapse j reaches from output row oy.
      auto reach = [&](int64_t j, int64_t oy) {
        uint64_t m = rows[sci[j] * RH + pad + oy + sdy[j]];
        const int32_t sh = ssh[j];
        m = sh >= 0 ? (sh >= 64 ? 0 : m >> sh) : (-sh >= 64 ? 0 : m << -sh);
        return m & wo_mask;
      };
      for (int64_t co = 0; co < g.O; ++co) {
        const int64_t p0 = rowptr[co], p1 = rowptr[co + 1];
        float* oc = o + co * P;
#if SNNSPARSE_ISA_LEVEL == 1
        (void)nv;
        const __m256 b = _mm256_set1_ps(bias ? bias[co] : 0.f);
        const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        // lanes of the 8 output pixels whose bits are set in byte q of m
        auto lanes = [&](uint64_t m, int q) {
          const __m256i bits = _mm256_set1_epi32((int)((m >> (8 * q)) & 0xFF));
          return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(bits, sel), sel));
        };
        for (int64_t oy = 0; oy < g.Ho; ++oy) {
          __m256 a0 = b, a1 = b, a2 = b, a3 = b, a4 = b, a5 = b, a6 = b, a7 = b;
          for (int64_t j = p0; j < p1; ++j) {
            const uint64_t m = reach(j, oy);
            if (count) cnt += __builtin_popcountll(m);
            if (!m) continue;
            const __m256 w = _mm256_set1_ps(val[j]);
            a0 = _mm256_blendv_ps(a0, _mm256_add_ps(a0, w), lanes(m, 0));
            if (nv8 > 1) a1 = _mm256_blendv_ps(a1, _mm256_add_ps(a1, w), lanes(m, 1));
            if (nv8 > 2) a2 = _mm256_blendv_ps(a2, _mm256_add_ps(a2, w), lanes(m, 2));
            if (nv8 > 3) a3 = _mm256_blendv_ps(a3, _mm256_add_ps(a3, w), lanes(m, 3));
            if (nv8 > 4) a4 = _mm256_blendv_ps(a4, _mm256_add_ps(a4, w), lanes(m, 4));
            if (nv8 > 5) a5 = _mm256_blendv_ps(a5, _mm256_add_ps(a5, w), lanes(m, 5));
            if (nv8 > 6) a6 = _mm256_blendv_ps(a6, _mm256_add_ps(a6, w), lanes(m, 6));
            if (nv8 > 7) a7 = _mm256_blendv_ps(a7, _mm256_add_ps(a7, w), lanes(m, 7));
          }
          float* orow = oc + oy * g.Wo;
          const __m256 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
          const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
          for (int64_t v = 0; v < nv8; ++v) {
            const int64_t rem = g.Wo - 8 * v;
            if (rem >= 8) _mm256_storeu_ps(orow + 8 * v, acc[v]);
            else _mm256_maskstore_ps(orow + 8 * v, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), iota), acc[v]);
          }
        }
#else
        (void)nv8;
        const __m512 b = _mm512_set1_ps(bias ? bias[co] : 0.f);
        for (int64_t oy = 0; oy < g.Ho; ++oy) {
          __m512 a0 = b, a1 = b, a2 = b, a3 = b;
          for (int64_t j = p0; j < p1; ++j) {
            const uint64_t m = reach(j, oy);
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
#endif
      }
      counts[n] = cnt;
    }
  });
  int64_t total = 0;
  for (auto c : counts) total += c;
  return total;
}
#endif

// ---- compressed rows per input channel (format 2), output-stationary: small maps ----
// The packing of conv_fwd_csr below, walked per output pixel instead of per input event: per frame, the
// fired channels of every input pixel as lists (one scan of the frame, as the blocked kernel); per output
// pixel, an L1-resident row of Cout accumulators gets, for every tap and every fired channel at the tapped
// input pixel, the kept synapses of that (channel, tap): a contiguous segment of the channel's row (idx =
// tap * Og + o, sorted; its length is tapnnz). No division or bounds test per synapse, one scan per frame
// instead of one per channel plane, and only the kept weights are read (5% density: 6 bytes a kept
// synapse against 256 bytes a 64-channel row of the dense blocks). conv_fwd_csr takes it where it was
// measured faster than its own per-event scatter (which, on small maps, tests the border and divides per
// synapse): 5% density, 2 threads, 32 frames at rate 0.04, EPYC AVX2 host, scatter -> this: 512@1x1
// 1009 -> 52 us, 256@2x2 651 -> 102, 128@4x4 513 -> 176, 64->128@8x8 stride 2 1007 -> 143; but 64@8x8
// stride 1 286 -> 373 (3 kept synapses a segment: the loop overhead wins), so maps of <= 16 pixels, or
// <= 64 with a stride. (At 1% density it also beats the dense blocks on 1x1 and 2x2 maps: 43 vs 45 and
// 66 vs 82 us.)
inline bool csr_os(const ConvGeom& g) {
  const int64_t HW = g.H * g.W;
  return g.C <= 65535 && (HW <= 16 || (HW <= 64 && (g.sh != 1 || g.sw != 1)));
}

template <typename scalar_t, typename idx_t, typename spike_t>
int64_t conv_fwd_csr_os(const ConvGeom& g, const spike_t* x, const int64_t* rowptr, const idx_t* idx,
                        const scalar_t* val, const int64_t* tapnnz, const scalar_t* bias, scalar_t* out,
                        bool count) {
  const int64_t HW = g.H * g.W, P = g.Ho * g.Wo, C = g.C, KK = g.KK, nwf = (C * HW + 63) / 64;
  std::vector<int64_t> seg(C * KK);  // start of the (ci, tap) segment in val / idx
  for (int64_t ci = 0; ci < C; ++ci) {
    int64_t s = rowptr[ci];
    for (int64_t t = 0; t < KK; ++t) {
      seg[ci * KK + t] = s;
      s += tapnnz[ci * KK + t];
    }
    // The segments are read through tapnnz: one that disagrees with the rows (a packing assembled by hand or
    // loaded from elsewhere) would read other synapses, or past the end, without an error.
    TORCH_CHECK(s == rowptr[ci + 1], "snnsparse::spike_conv2d: packed tapnnz of input channel ", ci,
                " does not add up to its compressed row (", s - rowptr[ci], " vs ", rowptr[ci + 1] - rowptr[ci], ")");
  }
  std::vector<int64_t> counts(g.N, 0);
  at::parallel_for(0, g.N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<uint16_t> evl(HW * C);
    std::vector<int32_t> cnt(HW);
    std::vector<uint64_t> bits(nwf);
    std::vector<scalar_t> acc(g.O);
    for (int64_t n = n0; n < n1; ++n) {
      std::fill(cnt.begin(), cnt.end(), 0);
      nonzero_bits(x + n * C * HW, C * HW, bits.data());  // every plane checked, kept synapses or not
      for_each_frame_event(bits.data(), nwf, HW,
                           [&](int64_t i, int64_t ci, int64_t) { evl[i * C + cnt[i]++] = (uint16_t)ci; });
      int64_t nacc = 0;
      scalar_t* __restrict__ o = out + n * g.O * P;
      for (int64_t oy = 0; oy < g.Ho; ++oy) {
        for (int64_t ox = 0; ox < g.Wo; ++ox) {
          scalar_t* __restrict__ a = acc.data();
          for (int64_t c = 0; c < g.O; ++c) a[c] = bias ? bias[c] : scalar_t(0);
          for_each_input_tap(g, oy, ox, [&](int64_t i, int64_t tap) {
            const int64_t base = tap * g.Og;
            const uint16_t* L = evl.data() + i * C;
            for (int32_t e = 0; e < cnt[i]; ++e) {
              const int64_t c = L[e], s0 = seg[c * KK + tap], s1 = s0 + tapnnz[c * KK + tap];
              scalar_t* __restrict__ ag = a + (c / g.Cg) * g.Og - base;
              for (int64_t j = s0; j < s1; ++j) ag[(int64_t)idx[j]] += val[j];
              nacc += s1 - s0;
            }
          });
          scalar_t* op = o + oy * g.Wo + ox;
          for (int64_t c = 0; c < g.O; ++c) op[c * P] = a[c];
        }
      }
      counts[n] = nacc;
    }
  });
  int64_t total = 0;
  for (auto c : counts) total += c;
  return count ? total : 0;
}

template <typename scalar_t, typename idx_t, typename spike_t>
int64_t conv_fwd_csr(const ConvGeom& g, const spike_t* x, const int64_t* rowptr, const idx_t* idx,
                     const scalar_t* val, const int64_t* tapnnz, const scalar_t* bias, scalar_t* out, bool count) {
  const int64_t HW = g.H * g.W, P = g.Ho * g.Wo, nw = (HW + 63) / 64;
  if (csr_os(g)) return conv_fwd_csr_os(g, x, rowptr, idx, val, tapnnz, bias, out, count);
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
template <typename scalar_t, typename spike_t>
void conv_grad_weight(const ConvGeom& g, const spike_t* xp, const scalar_t* gp, scalar_t* wpp) {
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

