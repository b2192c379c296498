// Event-driven dual-sparse linear on CPU: out = spikes @ (W*M)^T + b for binary spikes.
//
// Two weight formats, chosen by mask density (kLinearDenseMin below, measured; snnsparse/ops/packed.py names them):
//  * dense rows  [Wt (K x M, masked), colnnz]: "input-stationary". Spikes become per-k bitsets over
//    64-row blocks of N, so a weight row Wt[k, tile] is fetched once for all the rows (all T frames
//    and batch items) that fired at k and added (no multiplies) into each of their output rows.
//  * compressed rows [rowptr, idx (int16 when K < 65536, else int32), val, colnnz] of W:
//    "output-stationary". For output m and a block of 64 spike rows, each kept synapse (m, k) does
//    one broadcast of w and 4 AVX-512 masked adds (mask = the 64 fire bits of column k), so the
//    accumulators never leave registers and no multiplication happens.
// The crossover is measured by bench/sweep.py (see bench/RESULTS.md).
#include "common.h"

namespace snnsparse {
namespace cpu {
namespace {

constexpr int64_t kBlk = 64;  // spike rows per bitset word

// XB[blk * K + k]: bit r set when spikes[blk*64 + r, k] != 0.
template <typename scalar_t>
std::vector<uint64_t> column_bits(const scalar_t* x, int64_t N, int64_t K) {
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

int64_t count_acc(const std::vector<uint64_t>& xb, int64_t nblk, int64_t K, const int64_t* colnnz) {
  int64_t total = 0;
  for (int64_t blk = 0; blk < nblk; ++blk)
    for (int64_t k = 0; k < K; ++k) total += (int64_t)__builtin_popcountll(xb[blk * K + k]) * colnnz[k];
  return total;
}

// ---- dense rows: out[n, tile] += Wt[k, tile] for every fired (n, k) ----
template <typename scalar_t>
void linear_dense_rows(const std::vector<uint64_t>& xb, const scalar_t* wt, const scalar_t* bias, scalar_t* out,
                       int64_t N, int64_t K, int64_t M) {
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

// ---- compressed rows, output-stationary ----
#if defined(__AVX512F__)
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
void linear_csr(const std::vector<uint64_t>& xb, const int64_t* rowptr, const idx_t* idx, const scalar_t* val,
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
#if defined(__AVX512F__)
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

// Event-driven weight gradient, transposed: gwT[k, :] += grad_out[n, :] for every fired (n, k).
// Parallel over k: each k row is owned by one thread.
template <typename scalar_t>
void linear_grad_weight_t(const scalar_t* x, const scalar_t* gp, scalar_t* dst, int64_t N, int64_t K, int64_t M) {
  if (N == 0) return;
  std::vector<uint64_t> xb = column_bits(x, N, K);
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

void check_linear_inputs(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                         const c10::optional<at::Tensor>& mask, const char* op) {
  check_cpu(x, op, "spikes");
  check_cpu(w, op, "weight");
  check_float(w, op, "weight");
  check_same_dtype(x, w, op, "spikes", "weight");
  TORCH_CHECK(w.dim() == 2, op, ": weight must be [M, K], got ", w.sizes());
  TORCH_CHECK(x.dim() == 2 && x.size(1) == w.size(1), op, ": spikes must be [N, ", w.size(1), "], got ",
              x.sizes());
  if (bias.has_value()) {
    check_cpu(*bias, op, "bias");
    check_same_dtype(*bias, w, op, "bias", "weight");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == w.size(0), op, ": bias must be [", w.size(0), "], got ",
                bias->sizes());
  }
  check_mask(mask, w, op);
}

}  // namespace

// Packs (weight, mask) for the kernels. format 1: dense rows; 2: compressed rows.
std::vector<at::Tensor> linear_pack(const at::Tensor& weight, const c10::optional<at::Tensor>& mask, int64_t format) {
  const int64_t M = weight.size(0), K = weight.size(1);
  at::Tensor m = mask.has_value() ? *mask : at::ones_like(weight, weight.options().dtype(at::kBool));
  at::Tensor colnnz = m.sum(0, false, at::kLong).contiguous();
  if (format == 1) {
    at::Tensor wt = masked_weight(weight, mask).t().contiguous();
    return {wt, colnnz};
  }
  at::Tensor nz = m.nonzero();  // row-major order: sorted by m, then k
  at::Tensor rowptr = at::zeros({M + 1}, weight.options().dtype(at::kLong));
  rowptr.slice(0, 1).copy_(m.sum(1, false, at::kLong).cumsum(0));
  at::Tensor idx = nz.select(1, 1).to(K < 65536 ? at::kShort : at::kInt).contiguous();
  at::Tensor val = weight.masked_select(m).contiguous();
  return {rowptr, idx, val, colnnz};
}

std::tuple<at::Tensor, at::Tensor> linear_fwd_packed(const at::Tensor& spikes, const at::Tensor& weight,
                                                     const c10::optional<at::Tensor>& bias,
                                                     const c10::optional<at::Tensor>& mask, int64_t format,
                                                     at::TensorList packed, bool count, bool /*dense_weight_grad*/) {
  const char* op = "snnsparse::spike_linear_fwd";
  check_linear_inputs(spikes, weight, bias, mask, op);
  const int64_t N = spikes.size(0), K = weight.size(1), M = weight.size(0);
  TORCH_CHECK((format == 1 && packed.size() == 2) || (format == 2 && packed.size() == 4), op,
              ": packed weight of format 1 (dense rows) has 2 tensors, of format 2 (compressed rows) 4; got format ",
              format, " with ", packed.size());
  at::Tensor x = spikes.contiguous();
  at::Tensor out = empty_output({N, M}, weight.options());
  at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  int64_t nacc = 0;
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "spike_linear_fwd", [&] {
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    if (N == 0) return;
    std::vector<uint64_t> xb = column_bits(x.data_ptr<scalar_t>(), N, K);
    const at::Tensor& colnnz = packed.back();
    TORCH_CHECK(colnnz.numel() == K && colnnz.scalar_type() == at::kLong, op, ": bad packed colnnz");
    if (format == 1) {
      const at::Tensor wt = packed[0].contiguous();
      TORCH_CHECK(wt.scalar_type() == weight.scalar_type() && wt.dim() == 2 && wt.size(0) == K && wt.size(1) == M,
                  op, ": packed dense rows must be [K, M] of the weight's dtype");
      linear_dense_rows<scalar_t>(xb, wt.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(), N, K, M);
    } else {
      const at::Tensor rowptr = packed[0].contiguous(), idx = packed[1].contiguous(), val = packed[2].contiguous();
      TORCH_CHECK(rowptr.scalar_type() == at::kLong && rowptr.numel() == M + 1 && val.scalar_type() == weight.scalar_type()
                      && idx.numel() == val.numel() && rowptr[M].item<int64_t>() == val.numel(),
                  op, ": bad packed compressed rows");
      if (idx.scalar_type() == at::kShort) {
        TORCH_CHECK(K <= 65536, op, ": int16 indices need K <= 65536");
        linear_csr<scalar_t, uint16_t>(xb, rowptr.data_ptr<int64_t>(), (const uint16_t*)idx.data_ptr<int16_t>(),
                                       val.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(), N, K, M);
      } else {
        TORCH_CHECK(idx.scalar_type() == at::kInt, op, ": packed indices must be int16 or int32");
        linear_csr<scalar_t, int32_t>(xb, rowptr.data_ptr<int64_t>(), idx.data_ptr<int32_t>(),
                                      val.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(), N, K, M);
      }
    }
    if (count) nacc = count_acc(xb, (N + kBlk - 1) / kBlk, K, colnnz.data_ptr<int64_t>());
  });
  if (N == 0 && bias.has_value()) out.copy_(b.expand({N, M}));
  return {out, scalar_count(nacc)};
}

// Density at or above which the dense-rows format is used: the measured crossover (spike rate 0.1,
// N=64, 4096x4096: bench/RESULTS.md, "format crossover"). The only place this number lives.
constexpr double kLinearDenseMin = 0.5;

// spike_linear_pack: format 0 picks by density.
std::tuple<int64_t, std::vector<at::Tensor>> linear_pack_op(const at::Tensor& weight,
                                                            const c10::optional<at::Tensor>& mask, int64_t format) {
  const char* op = "snnsparse::spike_linear_pack";
  check_cpu(weight, op, "weight");
  check_float(weight, op, "weight");
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be [M, K], got ", weight.sizes());
  check_mask(mask, weight, op);
  TORCH_CHECK(format >= 0 && format <= 2, op, ": format must be 0 (auto), 1 (dense rows) or 2 (compressed rows), got ",
              format);
  if (format == 0) format = mask_density(mask) >= kLinearDenseMin ? 1 : 2;
  return {format, linear_pack(weight.contiguous(), mask, format)};
}

// Core op: packs per call, so it can never serve a packing of other weights (no cache anywhere).
std::tuple<at::Tensor, at::Tensor> linear_fwd(const at::Tensor& spikes, const at::Tensor& weight,
                                              const c10::optional<at::Tensor>& bias,
                                              const c10::optional<at::Tensor>& mask, bool count,
                                              bool dense_weight_grad) {
  check_linear_inputs(spikes, weight, bias, mask, "snnsparse::spike_linear_fwd");
  auto [format, packed] = linear_pack_op(weight, mask, 0);
  return linear_fwd_packed(spikes, weight, bias, mask, format, packed, count, dense_weight_grad);
}

std::tuple<at::Tensor, at::Tensor> linear_bwd(const at::Tensor& grad_out, const at::Tensor& spikes,
                                              const at::Tensor& weight, const c10::optional<at::Tensor>& mask,
                                              bool need_input_grad, bool need_weight_grad, bool dense_weight_grad) {
  const char* op = "snnsparse::spike_linear_bwd";
  check_linear_inputs(spikes, weight, c10::nullopt, mask, op);
  check_cpu(grad_out, op, "grad_out");
  check_same_dtype(grad_out, weight, op, "grad_out", "weight");
  const int64_t N = spikes.size(0), K = weight.size(1), M = weight.size(0);
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == N && grad_out.size(1) == M, op,
              ": grad_out must be [", N, ", ", M, "], got ", grad_out.sizes());
  at::Tensor grad_in, grad_w;
  at::Tensor g = grad_out.contiguous();
  if (need_input_grad) {
    // grad_in = grad_out @ (W*M): dense grad_out, so this is one GEMM (MKL).
    grad_in = at::mm(g, masked_weight(weight, mask));
  } else {
    grad_in = at::empty({0}, weight.options());
  }
  if (need_weight_grad) {
    // Event-driven: gwT[k, :] += grad_out[n, :] for every fired (n, k); k rows are owned by one thread.
    at::Tensor gwt = at::zeros({K, M}, weight.options());
    at::Tensor x = spikes.contiguous();
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "spike_linear_bwd", [&] {
      linear_grad_weight_t<scalar_t>(x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), gwt.data_ptr<scalar_t>(), N, K, M);
    });
    grad_w = gwt.t().contiguous();
    if (mask.has_value() && !dense_weight_grad) grad_w.masked_fill_(mask->logical_not(), 0);
  } else {
    grad_w = at::empty({0}, weight.options());
  }
  return {grad_in, grad_w};
}

}  // namespace cpu
}  // namespace snnsparse

TORCH_LIBRARY_IMPL(snnsparse, CPU, m) {
  m.impl("spike_linear_fwd", &snnsparse::cpu::linear_fwd);
  m.impl("spike_linear_fwd_packed", &snnsparse::cpu::linear_fwd_packed);
  m.impl("spike_linear_bwd", &snnsparse::cpu::linear_bwd);
  m.impl("spike_linear_pack", &snnsparse::cpu::linear_pack_op);
}
