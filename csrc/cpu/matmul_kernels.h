// Kernels of spike_matmul (csrc/cpu/matmul.cpp has the op and its checks). Part of the ISA-compiled kernel
// source: included only by isa_variant.h, inside namespace snnsparse::cpu::<variant> and its
// `#pragma GCC target`; include no header here.
//
// Operands, per batch entry e of Bt, all contiguous: a [M, K], b [K, N], out [M, N] (float or double). A
// binary operand may also be uint8 (bool spikes viewed as bytes: 1/4 of the fp32 bytes to read, and
// AVX-512BW turns 64 of them into 64 bits with one vptestmb). Every binary operand is scanned through
// spike_bits, which refuses any value other than 0 and 1 (ValueError) in the same pass.
//
//  * binary x binary (matmul_bb): out[m, n] = popcount(A[m] & B^T[n]) over 64-bit words of K. Phase 1 packs
//    the rows of a and builds B^T from the rows of b (one OR per spike of b: rate x K x N work); phase 2 is
//    K/64 AND + POPCNT per output, no float arithmetic, parallel over all Bt x M output rows.
//  * binary a x dense b (matmul_sd): out[m, :] = sum over the fired k of a[m, :] of b[k, :]: each spike adds
//    one contiguous row of b (vectorised adds, never a multiplication), in ascending k.
//  * dense a x binary b (matmul_ds): out[:, n] = sum over the fired k of b[:, n] of a[:, k]. Phase 1 builds
//    B^T (as matmul_bb); phase 2 works on blocks of kMB columns of out: it transposes the block of a into
//    a [K, kMB] buffer, adds its rows k for the fired k of each n (contiguous adds again) into a [N, kMB]
//    buffer, and writes that back transposed. The transposes stay in L1/L2 (instead of three passes
//    over memory for b^T, a^T and out^T).
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

// bt[(e*kw + k/64)*N + n] bit k%64 = b[e, k, n] != 0 for every entry e (phase 1 of matmul_bb / matmul_ds):
// word-major, so that one word of 8 consecutive columns is one vector load.
template <typename in_t>
std::vector<uint64_t> column_bitsets(const in_t* b, int64_t Bt, int64_t K, int64_t N) {
  const int64_t kw = (K + 63) / 64, nw = (N + 63) / 64;
  std::vector<uint64_t> bt(Bt * kw * N, 0);
  at::parallel_for(0, Bt, 1, [&](int64_t e0, int64_t e1) {
    std::vector<uint64_t> brow(nw);
    for (int64_t e = e0; e < e1; ++e) {
      for (int64_t k = 0; k < K; ++k) {
        spike_bits(b + (e * K + k) * N, N, brow.data());
        const uint64_t bit = uint64_t(1) << (k & 63);
        uint64_t* col = bt.data() + (e * kw + (k >> 6)) * N;
        for_each_bit(brow.data(), nw, [&](int64_t n) { col[n] |= bit; });
      }
    }
  });
  return bt;
}

#if SNNSPARSE_ISA_LEVEL >= 2
// popcount of each of 8 uint64 lanes: nibble table lookups (vpshufb) summed per lane by vpsadbw. AVX-512
// VPOPCNTQ would do it in one instruction but is not part of x86-64-v4, the level of this variant.
inline __m512i popcount_epi64(__m512i v) {
  const __m512i lut = _mm512_set4_epi32(0x04030302, 0x03020201, 0x03020201, 0x02010100);  // popcount(0..15)
  const __m512i low = _mm512_set1_epi8(0x0f);
  const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
  const __m512i c = _mm512_add_epi8(_mm512_shuffle_epi8(lut, lo), _mm512_shuffle_epi8(lut, hi));
  return _mm512_sad_epu8(c, _mm512_setzero_si512());
}
#endif

// o[n] = popcount(am & be[:, n]) over kw words for n in [0, N); returns the sum of o.
template <typename scalar_t>
inline int64_t popcount_row(const uint64_t* am, const uint64_t* be, int64_t kw, int64_t N, scalar_t* o) {
  int64_t sum = 0;
  int64_t n = 0;
#if SNNSPARSE_ISA_LEVEL >= 2
  // 8 outputs per step. The scalar loop (one POPCNT, one int->float conversion and one store per output)
  // was the kernel's bottleneck: [256, 64, 64] x [256, 64, 64] bool, 1 thread, 1.08 -> 0.76 ms (load ~7).
  __m512i total = _mm512_setzero_si512();
  for (; n < N; n += 8) {
    const __mmask8 lane = N - n >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (N - n)) - 1);
    __m512i acc = _mm512_setzero_si512();
    for (int64_t w = 0; w < kw; ++w)
      acc = _mm512_add_epi64(acc, popcount_epi64(_mm512_and_si512(_mm512_set1_epi64((long long)am[w]),
                                                                  _mm512_maskz_loadu_epi64(lane, be + w * N + n))));
    total = _mm512_add_epi64(total, acc);
    if constexpr (std::is_same<scalar_t, float>::value) _mm256_mask_storeu_ps(o + n, lane, _mm512_cvtepi64_ps(acc));
    else _mm512_mask_storeu_pd(o + n, lane, _mm512_cvtepi64_pd(acc));
  }
  return _mm512_reduce_add_epi64(total);
#endif
  for (; n < N; ++n) {
    int64_t c = 0;
    for (int64_t w = 0; w < kw; ++w) c += __builtin_popcountll(am[w] & be[w * N + n]);
    sum += c;
    o[n] = scalar_t(c);
  }
  return sum;
}

// Rows of work per task so that one task holds about 64k elementary steps.
inline int64_t matmul_grain(int64_t per_row) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, per_row)); }

template <typename in_t, typename scalar_t>
int64_t matmul_bb(const in_t* a, const in_t* b, int64_t Bt, int64_t M, int64_t K, int64_t N, bool count,
                  scalar_t* out) {
  const int64_t kw = (K + 63) / 64, rows = Bt * M;
  const std::vector<uint64_t> bt = column_bitsets(b, Bt, K, N);
  std::vector<int64_t> per(rows, 0);
  at::parallel_for(0, rows, matmul_grain(K + N * kw), [&](int64_t r0, int64_t r1) {
    std::vector<uint64_t> am(kw);
    for (int64_t r = r0; r < r1; ++r) {
      spike_bits(a + r * K, K, am.data());
      per[r] = popcount_row(am.data(), bt.data() + (r / M) * kw * N, kw, N, out + r * N);
    }
  });
  int64_t total = 0;
  if (count)
    for (int64_t v : per) total += v;
  return total;
}

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
      std::memset(o, 0, N * sizeof(scalar_t));
      const scalar_t* be = b + (r / M) * K * N;
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

constexpr int64_t kMB = 64;  // columns of a (rows of out^T) per block of matmul_ds

template <typename in_t, typename scalar_t>
int64_t matmul_ds(const scalar_t* a, const in_t* b, int64_t Bt, int64_t M, int64_t K, int64_t N, bool count,
                  scalar_t* out) {
  const int64_t kw = (K + 63) / 64, nmb = (M + kMB - 1) / kMB;
  const std::vector<uint64_t> bt = column_bitsets(b, Bt, K, N);
  at::parallel_for(0, Bt * nmb, 1, [&](int64_t t0, int64_t t1) {
    std::vector<scalar_t> at_(K * kMB), ot(N * kMB);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t e = t / nmb, m0 = (t % nmb) * kMB, mb = std::min(kMB, M - m0);
      const scalar_t* ae = a + (e * M + m0) * K;
      for (int64_t m = 0; m < mb; ++m)  // at_[k, m] = a[e, m0 + m, k]
        for (int64_t k = 0; k < K; ++k) at_[k * kMB + m] = ae[m * K + k];
      const uint64_t* be = bt.data() + e * kw * N;
      for (int64_t n = 0; n < N; ++n) {
        scalar_t* __restrict__ o = ot.data() + n * kMB;
        for (int64_t m = 0; m < mb; ++m) o[m] = scalar_t(0);
        for (int64_t w = 0; w < kw; ++w) {
          uint64_t bits = be[w * N + n];
          while (bits) {
            const int64_t k = w * 64 + __builtin_ctzll(bits);
            bits &= bits - 1;
            const scalar_t* __restrict__ row = at_.data() + k * kMB;
#pragma omp simd
            for (int64_t m = 0; m < mb; ++m) o[m] += row[m];
          }
        }
      }
      scalar_t* oe = out + (e * M + m0) * N;
      for (int64_t m = 0; m < mb; ++m)
        for (int64_t n = 0; n < N; ++n) oe[m * N + n] = ot[n * kMB + m];
    }
  });
  int64_t total = 0;
  if (count)
    for (uint64_t w : bt) total += __builtin_popcountll(w);
  return total * M;
}
