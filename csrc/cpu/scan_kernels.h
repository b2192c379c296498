// Spike-plane scanning shared by every CPU kernel (bitsets of the fired entries, with the binary
// check in the same pass), and small SIMD helpers the kernels share.
// Part of the ISA-compiled kernel source: included only by isa_variant.h,
// inside namespace snnsparse::cpu::<variant> and that variant's `#pragma GCC target`, with
// SNNSPARSE_ISA_LEVEL set (0 generic, 1 avx2, 2 avx512). Include no header here (see isa_variant.h).
#ifndef SNNSPARSE_ISA_LEVEL
#error "scan_kernels.h is compiled only through isa_variant.h"
#endif

template <typename scalar_t>
[[noreturn]] __attribute__((noinline, cold)) void non_binary_in(const scalar_t* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (p[i] != scalar_t(0) && p[i] != scalar_t(1)) non_binary_error((double)p[i]);
  non_binary_error(0.5);  // unreachable
}

// Bits of the nonzero entries of p[0..n): bit i of word i/64 is set when p[i] != 0. scalar_t is
// the weight's float type (float spikes) or uint8_t (bool / uint8 spikes, read without a float copy).
// words must hold (n + 63) / 64 entries. Spikes are binary, so "nonzero" is "fired"; any value
// other than 0 and 1 (NaN included) raises ValueError, at the cost of one more compare per
// vector, so callers need not make a separate validation pass over the spikes. kBinary = false
// skips that check (spike counts: conv_fwd_blocked<..., true> validates the nonzero values itself).
template <typename scalar_t, bool kBinary = true>
inline void nonzero_bits(const scalar_t* p, int64_t n, uint64_t* words) {
  const int64_t nw = (n + 63) / 64;
  for (int64_t w = 0; w < nw; ++w) {
    const int64_t base = w * 64;
    const int64_t lim = std::min<int64_t>(64, n - base);
#if SNNSPARSE_ISA_LEVEL >= 2
    if constexpr (std::is_same<scalar_t, uint8_t>::value) {
      // bool / uint8 spikes: one 64-byte masked load per word, the fired bits are the word itself
      // (vptestmb) and a byte above 1 is non-binary (one unsigned compare).
      const __mmask64 lane = lim >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << lim) - 1);
      const __m512i v = _mm512_maskz_loadu_epi8(lane, p + base);
      if (kBinary && __builtin_expect(_mm512_cmpgt_epu8_mask(v, _mm512_set1_epi8(1)) != 0, 0))
        non_binary_in(p + base, lim);
      words[w] = (uint64_t)_mm512_test_epi8_mask(v, v);
      continue;
    }
    if constexpr (std::is_same<scalar_t, float>::value) {
      // Full and partial words alike: masked loads never touch memory past p + n.
      const __m512 z = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
      uint64_t out = 0;
      __mmask16 bad = 0;
      for (int64_t q = 0; q < lim; q += 16) {
        const int64_t rem = lim - q;
        const __mmask16 lane = rem >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rem) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(lane, p + base + q);
        const __mmask16 nz = _mm512_mask_cmp_ps_mask(lane, v, z, _CMP_NEQ_UQ);
        if (kBinary) bad |= _mm512_mask_cmp_ps_mask(nz, v, one, _CMP_NEQ_UQ);
        out |= (uint64_t)nz << q;
      }
      if (kBinary && __builtin_expect(bad != 0, 0)) non_binary_in(p + base, lim);
      words[w] = out;
      continue;
    }
#elif SNNSPARSE_ISA_LEVEL == 1
    if constexpr (std::is_same<scalar_t, uint8_t>::value) {
      if (lim == 64) {  // a full word: two 32-byte loads; a partial word takes the scalar loop below
        const __m256i z = _mm256_setzero_si256(), one = _mm256_set1_epi8(1);
        const __m256i lo = _mm256_loadu_si256((const __m256i*)(p + base));
        const __m256i hi = _mm256_loadu_si256((const __m256i*)(p + base + 32));
        // max(v, 1) == 1 exactly when v is 0 or 1
        const __m256i ok = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_max_epu8(lo, one), one),
                                            _mm256_cmpeq_epi8(_mm256_max_epu8(hi, one), one));
        if (kBinary && __builtin_expect(_mm256_movemask_epi8(ok) != -1, 0)) non_binary_in(p + base, lim);
        const uint64_t zlo = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(lo, z));
        const uint64_t zhi = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(hi, z));
        words[w] = ~(zlo | (zhi << 32));
        continue;
      }
    }
    if constexpr (std::is_same<scalar_t, float>::value) {
      // 8 lanes per compare; movemask packs the 8 "fired" lanes into bits. A partial word uses
      // vmaskmovps, which (like the AVX-512 masked load) never touches memory past p + n.
      const __m256 z = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
      const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      uint64_t out = 0;
      __m256 bad = z;
      for (int64_t q = 0; q < lim; q += 8) {
        const int64_t rem = lim - q;
        __m256 v;
        if (rem >= 8) {
          v = _mm256_loadu_ps(p + base + q);
        } else {
          const __m256i lane = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), iota);
          v = _mm256_maskload_ps(p + base + q, lane);  // masked-out lanes read as 0: not fired
        }
        const __m256 nz = _mm256_cmp_ps(v, z, _CMP_NEQ_UQ);
        bad = _mm256_or_ps(bad, _mm256_and_ps(nz, _mm256_cmp_ps(v, one, _CMP_NEQ_UQ)));
        out |= (uint64_t)(uint32_t)_mm256_movemask_ps(nz) << q;
      }
      if (kBinary && __builtin_expect(!_mm256_testz_ps(bad, bad), 0)) non_binary_in(p + base, lim);
      words[w] = out;
      continue;
    }
#endif
    uint64_t bits = 0;
    bool bad = false;
    for (int64_t i = 0; i < lim; ++i) {
      const scalar_t v = p[base + i];
      bits |= (uint64_t)(v != scalar_t(0)) << i;
      bad |= (v != scalar_t(0)) & (v != scalar_t(1));
    }
    if (kBinary && __builtin_expect(bad, 0)) non_binary_in(p + base, lim);
    words[w] = bits;
  }
}

// Raises the non-binary error when p[0..n) holds a value other than 0 and 1 (NaN included). For
// spike planes a kernel does not otherwise read (an input channel with no kept synapse): the
// layer must still refuse pixels there, or energy counting would book them as spikes.
template <typename scalar_t>
inline void check_binary(const scalar_t* p, int64_t n) {
  constexpr int64_t kChunk = 256;
  for (int64_t base = 0; base < n; base += kChunk) {
    const int64_t lim = std::min<int64_t>(kChunk, n - base);
    bool bad = false;
#pragma omp simd reduction(|| : bad)
    for (int64_t i = 0; i < lim; ++i) {
      const scalar_t v = p[base + i];
      bad = bad || ((v != scalar_t(0)) & (v != scalar_t(1)));
    }
    if (__builtin_expect(bad, 0)) non_binary_in(p + base, lim);
  }
}

// Calls f(i) for every set bit i of words[0..nw).
template <typename F>
inline void for_each_bit(const uint64_t* words, int64_t nw, F&& f) {
  for (int64_t w = 0; w < nw; ++w) {
    uint64_t b = words[w];
    while (b) {
      const int i = __builtin_ctzll(b);
      b &= b - 1;
      f(w * 64 + i);
    }
  }
}

#if SNNSPARSE_ISA_LEVEL == 1
// Stores 64 floats held in 8 ymm accumulators (the AVX2 register-blocked kernels' epilogue).
inline void store_64f(float* p, __m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6,
                      __m256 a7) {
  _mm256_storeu_ps(p, a0);
  _mm256_storeu_ps(p + 8, a1);
  _mm256_storeu_ps(p + 16, a2);
  _mm256_storeu_ps(p + 24, a3);
  _mm256_storeu_ps(p + 32, a4);
  _mm256_storeu_ps(p + 40, a5);
  _mm256_storeu_ps(p + 48, a6);
  _mm256_storeu_ps(p + 56, a7);
}
#endif
