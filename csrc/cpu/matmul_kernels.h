// Kernels of spike_matmul (csrc/cpu/matmul.cpp has the op and its checks). Part of the ISA-compiled kernel
// source: included only by isa_variant.h, inside namespace snnsparse::cpu::<variant> and its
// `#pragma GCC target`; include no header here.
//
// Operands, per batch entry e of Bt, all contiguous: a [M, K], b [K, N], out [M, N] (float or double). A
// binary operand may also be uint8 (bool spikes viewed as bytes: 1/4 of the fp32 bytes to read, and
// AVX-512BW turns 64 of them into 64 bits with one vptestmb). Every binary operand is scanned through
// spike_bits, which refuses any value other than 0 and 1 (ValueError) in the same pass.
//
//  * binary x binary (matmul_bb): out[m, n] = popcount(A[m] & B^T[n]), the coincidences of a's row m and b's
//    column n. avx2/generic: AND + POPCNT over 64-bit words of K, with B^T built from b's rows (one OR per
//    spike of b). avx512: the same count taken vertically (coincidences_row): each fired a[m, k] adds 1 to
//    64 byte counters under the mask of b's row k, so the work follows a's spikes and no B^T is built.
//    No float arithmetic either way.
//  * binary a x dense b (matmul_sd): out[m, :] = sum over the fired k of a[m, :] of b[k, :]: each spike adds
//    one contiguous row of b (vectorised adds, never a multiplication), in ascending k.
//  * dense a x binary b (matmul_ds): out[m, n] = sum over the k where b[k, n] fired of a[m, k]. A task packs
//    the rows of its entry's b, then walks its rows of a: AVX-512 float adds a[m, k] broadcast into the accumulator
//    lanes of the columns where b[k, :] fired (the fire bits are the lane masks, as the compressed-rows
//    linear kernel does), the other variants add it to each fired column.
// Sums run in ascending k in the output dtype, so results equal the float64 reference up to that order.
#ifndef SNNSPARSE_ISA_LEVEL
#error "matmul_kernels.h is compiled only through isa_variant.h"
#endif

// Bits of a binary row of bytes p[0..n): bit i of word i/64 set when p[i] != 0; any byte other than 0
// and 1 raises the non-binary error.
inline void nonzero_bits_u8(const uint8_t* p, int64_t n, uint64_t* words) {
  const int64_t nw = (n + 63) / 64;
  for (int64_t w = 0; w < nw; ++w) {
    const int64_t base = w * 64;
    const int64_t lim = std::min<int64_t>(64, n - base);
#if SNNSPARSE_ISA_LEVEL >= 2
    {
      const __mmask64 lane = lim >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << lim) - 1);
      const __m512i v = _mm512_maskz_loadu_epi8(lane, p + base);  // never reads past p + n
      const __mmask64 big = _mm512_cmpgt_epu8_mask(v, _mm512_set1_epi8(1));
      if (__builtin_expect(big != 0, 0)) non_binary_in(p + base, lim);
      words[w] = (uint64_t)_mm512_test_epi8_mask(v, v);
      continue;
    }
#elif SNNSPARSE_ISA_LEVEL == 1
    if (lim == 64) {
      const __m256i v0 = _mm256_loadu_si256((const __m256i*)(p + base));
      const __m256i v1 = _mm256_loadu_si256((const __m256i*)(p + base + 32));
      const __m256i z = _mm256_setzero_si256(), one = _mm256_set1_epi8(1);
      // a byte > 1 makes max(v, 1) != 1
      const __m256i ok = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_max_epu8(v0, one), one),
                                          _mm256_cmpeq_epi8(_mm256_max_epu8(v1, one), one));
      if (__builtin_expect((uint32_t)_mm256_movemask_epi8(ok) != 0xFFFFFFFFu, 0)) non_binary_in(p + base, lim);
      const uint64_t z0 = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v0, z));
      const uint64_t z1 = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v1, z));
      words[w] = ~(z0 | (z1 << 32));
      continue;
    }
#endif
    uint64_t bits = 0;
    bool bad = false;
    for (int64_t i = 0; i < lim; ++i) {
      const uint8_t v = p[base + i];
      bits |= (uint64_t)(v != 0) << i;
      bad |= v > 1;
    }
    if (__builtin_expect(bad, 0)) non_binary_in(p + base, lim);
    words[w] = bits;
  }
}

template <typename in_t>
inline void spike_bits(const in_t* p, int64_t n, uint64_t* words) {
  if constexpr (std::is_same<in_t, uint8_t>::value) nonzero_bits_u8(p, n, words);
  else nonzero_bits(p, n, words);
}

// bt[(k/64)*N + n] bit k%64 = b[k, n] != 0 for one entry b [K, N]: B^T for the AND + popcount of matmul_bb on
// avx2 / generic, word-major (one word of consecutive columns is contiguous). brow: nw scratch words.
template <typename in_t>
inline void pack_columns(const in_t* b, int64_t K, int64_t N, uint64_t* bt, uint64_t* brow) {
  const int64_t kw = (K + 63) / 64, nw = (N + 63) / 64;
  std::fill(bt, bt + kw * N, uint64_t(0));
  for (int64_t k = 0; k < K; ++k) {
    spike_bits(b + k * N, N, brow);
    const uint64_t bit = uint64_t(1) << (k & 63);
    uint64_t* col = bt + (k >> 6) * N;
    for_each_bit(brow, nw, [&](int64_t n) { col[n] |= bit; });
  }
}

// rb[k*nw + w] bit j = b[k, 64w + j] != 0 for one entry b [K, N]: its rows as bitsets (natural layout).
template <typename in_t>
inline void pack_rows(const in_t* b, int64_t K, int64_t N, uint64_t* rb) {
  const int64_t nw = (N + 63) / 64;
  for (int64_t k = 0; k < K; ++k) spike_bits(b + k * N, N, rb + k * nw);
}

// Tasks of matmul_bb / matmul_ds: (entry, block of rows of a), all in ONE parallel region (a second region
// for packing b cost a second wait for the other thread, which on a loaded 2-core box was the larger part
// of a call). Whole entries when there are enough of them for the threads; else blocks of 64 rows, each
// packing its entry's b again (K x N bits).
inline int64_t matmul_row_block(int64_t Bt, int64_t M) {
  return Bt >= 4 * (int64_t)at::get_num_threads() ? M : std::min<int64_t>(M, 64);
}

// o[n] = popcount(am & be[:, n]) over kw words for n in [0, N); returns the sum of o (avx2 / generic).
template <typename scalar_t>
inline int64_t popcount_row(const uint64_t* am, const uint64_t* be, int64_t kw, int64_t N, scalar_t* o) {
  int64_t sum = 0;
  for (int64_t n = 0; n < N; ++n) {
    int64_t c = 0;
    for (int64_t w = 0; w < kw; ++w) c += __builtin_popcountll(am[w] & be[w * N + n]);
    sum += c;
    o[n] = scalar_t(c);
  }
  return sum;
}

// Rows of work per task so that one task holds about 64k elementary steps.
inline int64_t matmul_grain(int64_t per_row) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, per_row)); }

#if SNNSPARSE_ISA_LEVEL >= 2
// Coincidence counts of one row of a with every column of b, from the rows of b (rb [K][nw], bits over n):
// for each fired a[m, k], 64 byte counters (one zmm per 64 columns) get +1 where b[k, :] fired (one masked
// byte add, the 64 fire bits being the mask), spilled into int32 every 255 adds. Same sum as AND + popcount
// of a's row with b's columns, counted vertically: the work follows a's spikes and b needs no transposed
// bitset. Measured on [256, 64, K] x [256, K, 64] bool at rate 0.15, 1 thread, against AND + popcount with
// B^T and an AVX-512 nibble-table popcount (vpshufb + vpsadbw, 8 outputs per step): K = 64 0.76 -> 0.53 ms,
// K = 256 2.44 -> 1.66 ms (machine load ~7 on 2 cores: indicative only).
template <typename scalar_t>
inline int64_t coincidences_row(const uint64_t* am, int64_t kw, const uint64_t* rb, int64_t nw, int64_t N,
                                scalar_t* o) {
  const __m512i one = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
  __m512i total = zero;
  for (int64_t w = 0; w < nw; ++w) {
    __m512i c8 = zero, d0 = zero, d1 = zero, d2 = zero, d3 = zero;
    int pending = 0;
    auto spill = [&] {
      d0 = _mm512_add_epi32(d0, _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(c8, 0)));
      d1 = _mm512_add_epi32(d1, _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(c8, 1)));
      d2 = _mm512_add_epi32(d2, _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(c8, 2)));
      d3 = _mm512_add_epi32(d3, _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(c8, 3)));
      c8 = zero;
      pending = 0;
    };
    for (int64_t x = 0; x < kw; ++x) {
      uint64_t bits = am[x];
      while (bits) {
        const int64_t k = x * 64 + __builtin_ctzll(bits);
        bits &= bits - 1;
        c8 = _mm512_mask_add_epi8(c8, _load_mask64((__mmask64*)(rb + k * nw + w)), c8, one);
        if (++pending == 255) spill();
      }
    }
    spill();
    total = _mm512_add_epi32(total, _mm512_add_epi32(_mm512_add_epi32(d0, d1), _mm512_add_epi32(d2, d3)));
    const int64_t left = std::min<int64_t>(64, N - w * 64);
    const __m512i ds[4] = {d0, d1, d2, d3};
    for (int q = 0; q < 4 && q * 16 < left; ++q) {
      const int64_t lanes = std::min<int64_t>(16, left - q * 16);
      scalar_t* dst = o + w * 64 + q * 16;
      if constexpr (std::is_same<scalar_t, float>::value) {
        _mm512_mask_storeu_ps(dst, (__mmask16)((1u << lanes) - 1), _mm512_cvtepi32_ps(ds[q]));
      } else {
        const __mmask8 lo = (__mmask8)((1u << std::min<int64_t>(8, lanes)) - 1);
        const __mmask8 hi = (__mmask8)(lanes > 8 ? (1u << (lanes - 8)) - 1 : 0);
        _mm512_mask_storeu_pd(dst, lo, _mm512_cvtepi32_pd(_mm512_castsi512_si256(ds[q])));
        _mm512_mask_storeu_pd(dst + 8, hi, _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(ds[q], 1)));
      }
    }
  }
  return _mm512_reduce_add_epi32(total);
}
#endif

template <typename in_t, typename scalar_t>
int64_t matmul_bb(const in_t* a, const in_t* b, int64_t Bt, int64_t M, int64_t K, int64_t N, bool count,
                  scalar_t* out) {
  const int64_t kw = (K + 63) / 64, nw = (N + 63) / 64;
  const int64_t mb = matmul_row_block(Bt, M), nmb = (M + mb - 1) / mb;
  std::vector<int64_t> per(Bt * nmb, 0);
  at::parallel_for(0, Bt * nmb, 1, [&](int64_t t0, int64_t t1) {
    std::vector<uint64_t> am(kw);
#if SNNSPARSE_ISA_LEVEL >= 2
    std::vector<uint64_t> rb(K * nw);
#else
    std::vector<uint64_t> bt(kw * N), brow(nw);
#endif
    int64_t packed = -1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t e = t / nmb, m0 = (t % nmb) * mb, m1 = std::min(M, m0 + mb);
      if (e != packed) {
#if SNNSPARSE_ISA_LEVEL >= 2
        pack_rows(b + e * K * N, K, N, rb.data());
#else
        pack_columns(b + e * K * N, K, N, bt.data(), brow.data());
#endif
        packed = e;
      }
      int64_t sum = 0;
      for (int64_t m = m0; m < m1; ++m) {
        const int64_t r = e * M + m;
        spike_bits(a + r * K, K, am.data());
#if SNNSPARSE_ISA_LEVEL >= 2
        sum += coincidences_row(am.data(), kw, rb.data(), nw, N, out + r * N);
#else
        sum += popcount_row(am.data(), bt.data(), kw, N, out + r * N);
#endif
      }
      per[t] = sum;
    }
  });
  int64_t total = 0;
  if (count)
    for (int64_t v : per) total += v;
  return total;
}

#if SNNSPARSE_ISA_LEVEL >= 2
// Lanes of the q-th 16-float group among `left` (<= 64) valid columns.
inline __mmask16 lane_mask(int64_t left, int q) {
  const int64_t lanes = std::min<int64_t>(16, std::max<int64_t>(0, left - 16 * q));
  return (__mmask16)((1u << lanes) - 1);
}
#endif

template <typename in_t, typename scalar_t>
int64_t matmul_sd(const in_t* a, const scalar_t* b, int64_t Bt, int64_t M, int64_t K, int64_t N, bool count,
                  scalar_t* out) {
  const int64_t kw = (K + 63) / 64, rows = Bt * M;
  std::vector<int64_t> fired(rows, 0);
  at::parallel_for(0, rows, matmul_grain(K + N * std::max<int64_t>(1, K / 8)), [&](int64_t r0, int64_t r1) {
    std::vector<uint64_t> bits(kw);
    for (int64_t r = r0; r < r1; ++r) {
      spike_bits(a + r * K, K, bits.data());
      scalar_t* __restrict__ o = out + r * N;
      const scalar_t* be = b + (r / M) * K * N;
#if SNNSPARSE_ISA_LEVEL >= 2
      if constexpr (std::is_same<scalar_t, float>::value) {
        // 64 columns at a time in registers, two accumulator sets (even / odd spikes) so that consecutive
        // adds do not wait on each other; adding into `out` in memory instead chained every add through a
        // store and a reload (perf: 56% of the kernel's cycles on that vaddps/vmovups pair).
        int64_t nf = 0;
        for (int64_t c0 = 0; c0 < N; c0 += 64) {
          const int64_t left = std::min<int64_t>(64, N - c0);
          const __mmask16 m0 = lane_mask(left, 0), m1 = lane_mask(left, 1), m2 = lane_mask(left, 2),
                          m3 = lane_mask(left, 3);
          __m512 x0 = _mm512_setzero_ps(), x1 = x0, x2 = x0, x3 = x0, y0 = x0, y1 = x0, y2 = x0, y3 = x0;
          bool odd = false;
          nf = 0;
          for_each_bit(bits.data(), kw, [&](int64_t k) {
            const float* row = be + k * N + c0;
            if (odd) {
              y0 = _mm512_add_ps(y0, _mm512_maskz_loadu_ps(m0, row));
              y1 = _mm512_add_ps(y1, _mm512_maskz_loadu_ps(m1, row + 16));
              y2 = _mm512_add_ps(y2, _mm512_maskz_loadu_ps(m2, row + 32));
              y3 = _mm512_add_ps(y3, _mm512_maskz_loadu_ps(m3, row + 48));
            } else {
              x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(m0, row));
              x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(m1, row + 16));
              x2 = _mm512_add_ps(x2, _mm512_maskz_loadu_ps(m2, row + 32));
              x3 = _mm512_add_ps(x3, _mm512_maskz_loadu_ps(m3, row + 48));
            }
            odd = !odd;
            ++nf;
          });
          _mm512_mask_storeu_ps(o + c0, m0, _mm512_add_ps(x0, y0));
          _mm512_mask_storeu_ps(o + c0 + 16, m1, _mm512_add_ps(x1, y1));
          _mm512_mask_storeu_ps(o + c0 + 32, m2, _mm512_add_ps(x2, y2));
          _mm512_mask_storeu_ps(o + c0 + 48, m3, _mm512_add_ps(x3, y3));
        }
        fired[r] = nf;
        continue;
      }
#endif
      std::memset(o, 0, N * sizeof(scalar_t));
      int64_t nf = 0;
      for_each_bit(bits.data(), kw, [&](int64_t k) {
        const scalar_t* __restrict__ row = be + k * N;
#pragma omp simd
        for (int64_t c = 0; c < N; ++c) o[c] += row[c];
        ++nf;
      });
      fired[r] = nf;
    }
  });
  int64_t total = 0;
  if (count)
    for (int64_t v : fired) total += v * N;
  return total;
}

template <typename in_t, typename scalar_t>
int64_t matmul_ds(const scalar_t* a, const in_t* b, int64_t Bt, int64_t M, int64_t K, int64_t N, bool count,
                  scalar_t* out) {
  const int64_t nw = (N + 63) / 64;
  const int64_t mb = matmul_row_block(Bt, M), nmb = (M + mb - 1) / mb;
  std::vector<int64_t> fired(Bt, 0);
  at::parallel_for(0, Bt * nmb, 1, [&](int64_t t0, int64_t t1) {
    std::vector<uint64_t> rb(K * nw);
    const uint64_t* be = rb.data();
    int64_t packed = -1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t e = t / nmb, m0 = (t % nmb) * mb, m1 = std::min(M, m0 + mb);
      if (e != packed) {
        pack_rows(b + e * K * N, K, N, rb.data());
        packed = e;
        if (m0 == 0) {
          int64_t nf = 0;
          for (uint64_t w : rb) nf += __builtin_popcountll(w);
          fired[e] = nf;
        }
      }
      for (int64_t r = e * M + m0; r < e * M + m1; ++r) {
        const scalar_t* ar = a + r * K;
        scalar_t* o = out + r * N;
#if SNNSPARSE_ISA_LEVEL >= 2
        if constexpr (std::is_same<scalar_t, float>::value) {
          // 64 columns in 4 zmm accumulators; a[m, k] is added to the lanes whose b[k, n] fired (the 64 fire
          // bits of b's row k are the masks): no multiplication, no transposed copy of a or out. This costs
          // M*K*N/16 masked adds whatever the spike rate, as many vector ops as a dense GEMM's FMAs; the event-
          // driven alternative (adds of a^T's rows per spike of b) needs a^T, and its strided scalar transposes
          // took most of the kernel's time in perf (1 thread, [256,64,256] x bool [256,256,64], load ~7:
          // 33 ms with them, 6-13 ms this way). An in-register 16x16 transpose would make it event-driven:
          // not done.
          for (int64_t w = 0; w < nw; ++w) {
            // Two accumulator sets (even / odd k): a masked add waits ~4 cycles for its accumulator. The masks
            // are read as 16-bit pieces straight from the bitset (kmovw from memory, a load port), not shifted
            // out of a 64-bit register and moved to k registers, as in linear_kernels.h's csr_row_f32.
            __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, e0 = c0, e1 = c0, e2 = c0, e3 = c0;
            int64_t k = 0;
            for (; k + 1 < K; k += 2) {
              __mmask16* mb = (__mmask16*)(be + k * nw + w);
              __mmask16* mc = (__mmask16*)(be + (k + 1) * nw + w);
              const __m512 v = _mm512_set1_ps(ar[k]), u = _mm512_set1_ps(ar[k + 1]);
              c0 = _mm512_mask_add_ps(c0, _load_mask16(mb), c0, v);
              c1 = _mm512_mask_add_ps(c1, _load_mask16(mb + 1), c1, v);
              c2 = _mm512_mask_add_ps(c2, _load_mask16(mb + 2), c2, v);
              c3 = _mm512_mask_add_ps(c3, _load_mask16(mb + 3), c3, v);
              e0 = _mm512_mask_add_ps(e0, _load_mask16(mc), e0, u);
              e1 = _mm512_mask_add_ps(e1, _load_mask16(mc + 1), e1, u);
              e2 = _mm512_mask_add_ps(e2, _load_mask16(mc + 2), e2, u);
              e3 = _mm512_mask_add_ps(e3, _load_mask16(mc + 3), e3, u);
            }
            if (k < K) {
              __mmask16* mb = (__mmask16*)(be + k * nw + w);
              const __m512 v = _mm512_set1_ps(ar[k]);
              c0 = _mm512_mask_add_ps(c0, _load_mask16(mb), c0, v);
              c1 = _mm512_mask_add_ps(c1, _load_mask16(mb + 1), c1, v);
              c2 = _mm512_mask_add_ps(c2, _load_mask16(mb + 2), c2, v);
              c3 = _mm512_mask_add_ps(c3, _load_mask16(mb + 3), c3, v);
            }
            const int64_t left = std::min<int64_t>(64, N - w * 64);
            const __m512 cs[4] = {_mm512_add_ps(c0, e0), _mm512_add_ps(c1, e1), _mm512_add_ps(c2, e2),
                                  _mm512_add_ps(c3, e3)};
            for (int q = 0; q < 4 && q * 16 < left; ++q) {
              const int64_t lanes = std::min<int64_t>(16, left - q * 16);
              _mm512_mask_storeu_ps(o + w * 64 + q * 16, (__mmask16)((1u << lanes) - 1), cs[q]);
            }
          }
          continue;
        }
#endif
        // each fired b[k, n] adds a[m, k] to out[m, n], in ascending k
        for (int64_t n = 0; n < N; ++n) o[n] = scalar_t(0);
        for (int64_t k = 0; k < K; ++k) {
          const scalar_t v = ar[k];
          for_each_bit(be + k * nw, nw, [&](int64_t n) { o[n] += v; });
        }
      }
    }
  });
  int64_t total = 0;
  if (count)
    for (int64_t v : fired) total += v;
  return total * M;
}
