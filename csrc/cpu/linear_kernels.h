// SIMD kernels of the event-driven linear (csrc/cpu/linear.cpp has the op, the checks, the packing
// and the weight formats). Part of the ISA-compiled kernel source: included only by isa_variant.h,
// inside namespace snnsparse::cpu::<variant> and its `#pragma GCC target`; include no header here.
//
//  * dense rows [Wt (K x M, masked), colnnz]: "input-stationary". Spikes become per-k bitsets over
//    64-row blocks of N, so a weight row Wt[k, tile] is fetched once for all the rows (all T frames
//    and batch items) that fired at k and added (no multiplies) into each of their output rows.
//  * compressed rows [rowptr, idx (uint16 when K <= 65536, else int32), val, colnnz] of W:
//    "output-stationary". For output m and a block of 64 spike rows, each kept synapse (m, k) adds
//    its broadcast weight into the accumulator lanes of the rows that fired at k (AVX-512: 4 masked
//    adds, the mask being the 64 fire bits of column k; AVX2: the same with the mask expanded by a
//    compare), so the accumulators never leave registers and no multiplication happens.
#ifndef SNNSPARSE_ISA_LEVEL
#error "linear_kernels.h is compiled only through isa_variant.h"
#endif

constexpr int64_t kBlk = 64;  // spike rows per bitset word

// XB[blk * K + k]: bit r set when spikes[blk*64 + r, k] != 0 (spike_t: float spikes, or uint8_t for
// bool / uint8 ones).
template <typename spike_t>
std::vector<uint64_t> column_bits(const spike_t* x, int64_t N, int64_t K) {
  const int64_t nblk = (N + kBlk - 1) / kBlk;
  std::vector<uint64_t> xb(nblk * K, 0);
  const int64_t kw = (K + 63) / 64;
  at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
    std::vector<uint64_t> rowbits(kw);
    for (int64_t blk = b0; blk < b1; ++blk) {
      uint64_t* dst = xb.data() + blk * K;
      const int64_t rows = std::min(kBlk, N - blk * kBlk);
      for (int64_t r = 0; r < rows; ++r) {
        nonzero_bits(x + (blk * kBlk + r) * K, K, rowbits.data());
        const uint64_t bit = uint64_t(1) << r;
        for_each_bit(rowbits.data(), kw, [&](int64_t k) { dst[k] |= bit; });
      }
    }
  });
  return xb;
}

inline int64_t count_acc(const std::vector<uint64_t>& xb, int64_t nblk, int64_t K, const int64_t* colnnz) {
  int64_t total = 0;
  for (int64_t blk = 0; blk < nblk; ++blk)
    for (int64_t k = 0; k < K; ++k) total += (int64_t)__builtin_popcountll(xb[blk * K + k]) * colnnz[k];
  return total;
}

// ---- dense rows: out[n, tile] += Wt[k, tile] for every fired (n, k) ----
template <typename scalar_t>
void dense_rows(const std::vector<uint64_t>& xb, const scalar_t* wt, const scalar_t* bias, scalar_t* out, int64_t N,
                int64_t K, int64_t M) {
  // 512 fp32 = 2 KiB of a weight row per event; 64 rows x 2 KiB of output stay in L2.
  const int64_t MT = 512;
  const int64_t nblk = (N + kBlk - 1) / kBlk, nmt = (M + MT - 1) / MT;
  at::parallel_for(0, nblk * nmt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t blk = t / nmt, m0 = (t % nmt) * MT, mt = std::min(MT, M - m0);
      const int64_t rows = std::min(kBlk, N - blk * kBlk);
      for (int64_t r = 0; r < rows; ++r) {
        scalar_t* o = out + (blk * kBlk + r) * M + m0;
        if (bias) std::memcpy(o, bias + m0, mt * sizeof(scalar_t));
        else std::memset(o, 0, mt * sizeof(scalar_t));
      }
      const uint64_t* bits = xb.data() + blk * K;
      for (int64_t k = 0; k < K; ++k) {
        uint64_t b = bits[k];
        if (!b) continue;
        const scalar_t* __restrict__ w = wt + k * M + m0;
        while (b) {
          const int r = __builtin_ctzll(b);
          b &= b - 1;
          scalar_t* __restrict__ o = out + (blk * kBlk + r) * M + m0;
#pragma omp simd
          for (int64_t c = 0; c < mt; ++c) o[c] += w[c];
        }
      }
    }
  });
}

// ---- compressed rows, output-stationary: col[r] = sum of val[j] over kept j whose column fired in row r ----
#if SNNSPARSE_ISA_LEVEL >= 2
template <int NG, typename idx_t>
inline void csr_row_f32(const uint64_t* bits, const int64_t p0, const int64_t p1, const idx_t* idx,
                        const float* val, float* col /* [64] */) {
  // Two interleaved accumulator sets: a masked add has ~3 cycles latency, so one set would
  // make every kept synapse wait for the previous one (measured 2.9 ms -> see RESULTS.md for
  // 1.68M synapses, N=1, 1 thread).
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  // The 64 fire bits of column k are read as four 16-bit masks straight from memory (kmovw
  // k, m16 uses a load port; shifting a 64-bit word and moving it to k registers was the
  // bottleneck: 3.5 ms -> see RESULTS.md at N=64, 1 thread).
  int64_t j = p0;
  for (; j + 1 < p1; j += 2) {
    __mmask16* mb = (__mmask16*)(bits + idx[j]);
    __mmask16* mc = (__mmask16*)(bits + idx[j + 1]);
    const __m512 w = _mm512_set1_ps(val[j]), v = _mm512_set1_ps(val[j + 1]);
    a0 = _mm512_mask_add_ps(a0, _load_mask16(mb), a0, w);
    b0 = _mm512_mask_add_ps(b0, _load_mask16(mc), b0, v);
    if (NG > 1) {
      a1 = _mm512_mask_add_ps(a1, _load_mask16(mb + 1), a1, w);
      b1 = _mm512_mask_add_ps(b1, _load_mask16(mc + 1), b1, v);
    }
    if (NG > 2) {
      a2 = _mm512_mask_add_ps(a2, _load_mask16(mb + 2), a2, w);
      b2 = _mm512_mask_add_ps(b2, _load_mask16(mc + 2), b2, v);
    }
    if (NG > 3) {
      a3 = _mm512_mask_add_ps(a3, _load_mask16(mb + 3), a3, w);
      b3 = _mm512_mask_add_ps(b3, _load_mask16(mc + 3), b3, v);
    }
  }
  if (j < p1) {
    __mmask16* mb = (__mmask16*)(bits + idx[j]);
    const __m512 w = _mm512_set1_ps(val[j]);
    a0 = _mm512_mask_add_ps(a0, _load_mask16(mb), a0, w);
    if (NG > 1) a1 = _mm512_mask_add_ps(a1, _load_mask16(mb + 1), a1, w);
    if (NG > 2) a2 = _mm512_mask_add_ps(a2, _load_mask16(mb + 2), a2, w);
    if (NG > 3) a3 = _mm512_mask_add_ps(a3, _load_mask16(mb + 3), a3, w);
  }
  a0 = _mm512_add_ps(a0, b0);
  a1 = _mm512_add_ps(a1, b1);
  a2 = _mm512_add_ps(a2, b2);
  a3 = _mm512_add_ps(a3, b3);
  _mm512_storeu_ps(col, a0);
  _mm512_storeu_ps(col + 16, a1);
  _mm512_storeu_ps(col + 32, a2);
  _mm512_storeu_ps(col + 48, a3);
}
#elif SNNSPARSE_ISA_LEVEL == 1
// AVX2 has no mask registers: the 8 fire bits of a group of 8 rows become a lane mask by
// broadcasting the 32-bit half of the column's word (one vpbroadcastd from memory), AND with the
// lane's bit and compare; the weight ANDed with that mask is added (a not-fired lane adds +0.0).
// NG groups of 16 rows, 2 ymm accumulators each, 8 at most: one set suffices, as every synapse
// costs ~30 uops for the 8 adds, longer than the 4-cycle latency of each accumulator's chain.
inline __m256 add_if_bit(__m256 acc, __m256 w, __m256i m, __m256i c) {
  const __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(m, c), c);
  return _mm256_add_ps(acc, _mm256_and_ps(w, _mm256_castsi256_ps(on)));
}

template <int NG, typename idx_t>
inline void csr_row_f32(const uint64_t* bits, const int64_t p0, const int64_t p1, const idx_t* idx,
                        const float* val, float* col /* [64] */) {
  const __m256i c0 = _mm256_setr_epi32(1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7);
  const __m256i c1 = _mm256_slli_epi32(c0, 8), c2 = _mm256_slli_epi32(c0, 16), c3 = _mm256_slli_epi32(c0, 24);
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (int64_t j = p0; j < p1; ++j) {
    const int32_t* mw = (const int32_t*)(bits + idx[j]);  // little-endian: rows 0-31, then 32-63
    const __m256 w = _mm256_set1_ps(val[j]);
    const __m256i lo = _mm256_set1_epi32(mw[0]);
    a0 = add_if_bit(a0, w, lo, c0);
    a1 = add_if_bit(a1, w, lo, c1);
    if (NG > 1) {
      a2 = add_if_bit(a2, w, lo, c2);
      a3 = add_if_bit(a3, w, lo, c3);
    }
    if (NG > 2) {
      const __m256i hi = _mm256_set1_epi32(mw[1]);
      a4 = add_if_bit(a4, w, hi, c0);
      a5 = add_if_bit(a5, w, hi, c1);
      if (NG > 3) {
        a6 = add_if_bit(a6, w, hi, c2);
        a7 = add_if_bit(a7, w, hi, c3);
      }
    }
  }
  store_64f(col, a0, a1, a2, a3, a4, a5, a6, a7);
}
#endif

template <typename scalar_t, typename idx_t>
inline void csr_row_generic(const uint64_t* bits, int64_t p0, int64_t p1, const idx_t* idx, const scalar_t* val,
                            scalar_t* col) {
  for (int r = 0; r < 64; ++r) col[r] = 0;
  for (int64_t j = p0; j < p1; ++j) {
    uint64_t b = bits[idx[j]];
    const scalar_t w = val[j];
    while (b) {
      const int r = __builtin_ctzll(b);
      b &= b - 1;
      col[r] += w;
    }
  }
}

template <typename scalar_t, typename idx_t>
void csr_rows(const std::vector<uint64_t>& xb, const int64_t* rowptr, const idx_t* idx, const scalar_t* val,
              const scalar_t* bias, scalar_t* out, int64_t N, int64_t K, int64_t M) {
  const int64_t MT = 16;
  const int64_t nblk = (N + kBlk - 1) / kBlk, nmt = (M + MT - 1) / MT;
  at::parallel_for(0, nblk * nmt, 4, [&](int64_t t0, int64_t t1) {
    alignas(64) scalar_t col[MT][64];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t blk = t / nmt, m0 = (t % nmt) * MT, mt = std::min(MT, M - m0);
      const int64_t rows = std::min(kBlk, N - blk * kBlk);
      const uint64_t* bits = xb.data() + blk * K;
      for (int64_t i = 0; i < mt; ++i) {
        const int64_t m = m0 + i;
#if SNNSPARSE_ISA_LEVEL >= 1
        if constexpr (std::is_same<scalar_t, float>::value) {
          const int ng = (int)((rows + 15) / 16);
          switch (ng) {
            case 1: csr_row_f32<1>(bits, rowptr[m], rowptr[m + 1], idx, val, col[i]); break;
            case 2: csr_row_f32<2>(bits, rowptr[m], rowptr[m + 1], idx, val, col[i]); break;
            case 3: csr_row_f32<3>(bits, rowptr[m], rowptr[m + 1], idx, val, col[i]); break;
            default: csr_row_f32<4>(bits, rowptr[m], rowptr[m + 1], idx, val, col[i]); break;
          }
          continue;
        }
#endif
        csr_row_generic(bits, rowptr[m], rowptr[m + 1], idx, val, col[i]);
      }
      for (int64_t r = 0; r < rows; ++r) {
        scalar_t* o = out + (blk * kBlk + r) * M + m0;
        for (int64_t i = 0; i < mt; ++i) o[i] = col[i][r] + (bias ? bias[m0 + i] : scalar_t(0));
      }
    }
  });
}

// ---- table entries ----
template <typename scalar_t, typename spike_t>
int64_t linear_dense_rows(const spike_t* x, int64_t N, int64_t K, int64_t M, const scalar_t* wt,
                          const scalar_t* bias, const int64_t* colnnz, bool count, scalar_t* out) {
  if (N == 0) return 0;
  const std::vector<uint64_t> xb = column_bits(x, N, K);
  dense_rows<scalar_t>(xb, wt, bias, out, N, K, M);
  return count ? count_acc(xb, (N + kBlk - 1) / kBlk, K, colnnz) : 0;
}

template <typename scalar_t, typename idx_t, typename spike_t>
int64_t linear_csr(const spike_t* x, int64_t N, int64_t K, int64_t M, const int64_t* rowptr, const idx_t* idx,
                   const scalar_t* val, const scalar_t* bias, const int64_t* colnnz, bool count, scalar_t* out) {
  if (N == 0) return 0;
  const std::vector<uint64_t> xb = column_bits(x, N, K);
  csr_rows<scalar_t, idx_t>(xb, rowptr, idx, val, bias, out, N, K, M);
  return count ? count_acc(xb, (N + kBlk - 1) / kBlk, K, colnnz) : 0;
}

// Event-driven weight gradient, transposed: gwT[k, :] += grad_out[n, :] for every fired (n, k).
// Parallel over k: each k row is owned by one thread.
template <typename scalar_t, typename spike_t>
void linear_grad_weight_t(const spike_t* x, const scalar_t* gp, scalar_t* dst, int64_t N, int64_t K, int64_t M) {
  if (N == 0) return;
  const std::vector<uint64_t> xb = column_bits(x, N, K);
  const int64_t nblk = (N + kBlk - 1) / kBlk;
  at::parallel_for(0, K, 16, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      scalar_t* __restrict__ d = dst + k * M;
      for (int64_t blk = 0; blk < nblk; ++blk) {
        uint64_t b = xb[blk * K + k];
        while (b) {
          const int r = __builtin_ctzll(b);
          b &= b - 1;
          const scalar_t* __restrict__ s = gp + (blk * kBlk + r) * M;
#pragma omp simd
          for (int64_t c = 0; c < M; ++c) d[c] += s[c];
        }
      }
    }
  });
}
