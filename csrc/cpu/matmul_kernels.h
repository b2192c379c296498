// Kernels of spike_matmul (csrc/cpu/matmul.cpp has the op, its checks and the operand layouts). Part of the
// ISA-compiled kernel source: included only by isa_variant.h, inside namespace snnsparse::cpu::<variant> and
// its `#pragma GCC target`; include no header here.
//
//  * binary x binary (matmul_bb): out[m, n] = popcount(A[m] & B^T[n]) over 64-bit words of the reduction dim.
//    Rows of a are packed straight from memory (nonzero_bits, which also refuses non-binary values); b is
//    read row by row (contiguous, also through nonzero_bits) and its set bits are scattered into the
//    transposed bitset B^T[n] (one OR per spike: rate x K x N work, less than one pass over b's floats).
//    No multiplication, no float addition: K/64 AND + POPCNT per output.
//  * spikes x dense (matmul_sd): out[r, :] = sum over the fired k of s[r, :] of d[k, :]: a fired spike adds one
//    contiguous row of the dense operand (vectorised adds; the dense values are never multiplied), in
//    ascending k, so the sum is the float64 reference's up to that order's rounding. The glue runs the
//    "b binary" product through it transposed: out^T = b^T @ a^T.
#ifndef SNNSPARSE_ISA_LEVEL
#error "matmul_kernels.h is compiled only through isa_variant.h"
#endif

template <typename scalar_t>
int64_t matmul_bb(const scalar_t* a, const scalar_t* b, int64_t Bt, int64_t M, int64_t K, int64_t N, bool count,
                  scalar_t* out) {
  const int64_t kw = (K + 63) / 64, nw = (N + 63) / 64;
  std::vector<int64_t> per(Bt, 0);
  // One batch entry per task: [M x K] and [K x N] operands are small (a few 10 KiB), so their bitsets
  // stay in L1 and the tasks share nothing.
  at::parallel_for(0, Bt, 1, [&](int64_t b0, int64_t b1) {
    std::vector<uint64_t> abits(M * kw), bt(N * kw), brow(nw);
    for (int64_t e = b0; e < b1; ++e) {
      const scalar_t* ae = a + e * M * K;
      const scalar_t* be = b + e * K * N;
      for (int64_t m = 0; m < M; ++m) nonzero_bits(ae + m * K, K, abits.data() + m * kw);
      std::fill(bt.begin(), bt.end(), uint64_t(0));
      for (int64_t k = 0; k < K; ++k) {
        nonzero_bits(be + k * N, N, brow.data());
        const uint64_t bit = uint64_t(1) << (k & 63);
        uint64_t* col = bt.data() + (k >> 6);
        for_each_bit(brow.data(), nw, [&](int64_t n) { col[n * kw] |= bit; });
      }
      scalar_t* oe = out + e * M * N;
      int64_t sum = 0;
      for (int64_t m = 0; m < M; ++m) {
        const uint64_t* am = abits.data() + m * kw;
        scalar_t* o = oe + m * N;
        if (kw == 1) {  // K <= 64 (a head dimension): one AND + POPCNT per output
          const uint64_t w = am[0];
          for (int64_t n = 0; n < N; ++n) {
            const int64_t c = __builtin_popcountll(w & bt[n]);
            sum += c;
            o[n] = scalar_t(c);
          }
          continue;
        }
        for (int64_t n = 0; n < N; ++n) {
          const uint64_t* bn = bt.data() + n * kw;
          int64_t c = 0;
          for (int64_t w = 0; w < kw; ++w) c += __builtin_popcountll(am[w] & bn[w]);
          sum += c;
          o[n] = scalar_t(c);
        }
      }
      per[e] = sum;
    }
  });
  int64_t total = 0;
  if (count)
    for (int64_t v : per) total += v;
  return total;
}

template <typename scalar_t>
int64_t matmul_sd(const scalar_t* s, const scalar_t* d, int64_t Bt, int64_t R, int64_t K, int64_t C, bool count,
                  scalar_t* out) {
  const int64_t kw = (K + 63) / 64;
  const int64_t rows = Bt * R;
  std::vector<int64_t> fired(rows, 0);
  // Grain: about 16 KiB of dense rows per task at 10% spikes, so small problems stay on one thread.
  const int64_t grain = std::max<int64_t>(1, 40960 / std::max<int64_t>(1, K * C));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<uint64_t> bits(kw);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t e = r / R;
      nonzero_bits(s + r * K, K, bits.data());
      scalar_t* __restrict__ o = out + r * C;
      std::memset(o, 0, C * sizeof(scalar_t));
      const scalar_t* de = d + e * K * C;
      int64_t nf = 0;
      for_each_bit(bits.data(), kw, [&](int64_t k) {
        const scalar_t* __restrict__ row = de + k * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] += row[c];
        ++nf;
      });
      fired[r] = nf;
    }
  });
  int64_t total = 0;
  if (count)
    for (int64_t v : fired) total += v * C;
  return total;
}
