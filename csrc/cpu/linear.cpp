// Event-driven dual-sparse linear on CPU: out = spikes @ (W*M)^T + b for binary spikes. This file
// is the op (checks, packing, format choice, registration), compiled for the baseline target; the
// SIMD kernels are in linear_kernels.h, run through kernels() (the variant selected at load time).
//
// Two weight formats, chosen by mask density (kLinearDenseMin below, measured; snnsparse/ops/packed.py names them):
//  * dense rows  [Wt (K x M, masked), colnnz]: input-stationary adds of weight rows.
//  * compressed rows [rowptr, idx (int16 when K < 65536, else int32), val, colnnz] of W:
//    output-stationary masked adds (linear_kernels.h explains both).
// The crossover is measured by bench/sweep.py (see bench/RESULTS.md).
#include "common.h"
#include "kernels.h"

namespace snnsparse {
namespace cpu {
namespace {

void check_linear_inputs(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                         const c10::optional<at::Tensor>& mask, const char* op) {
  check_cpu(x, op, "spikes");
  check_cpu(w, op, "weight");
  check_float(w, op, "weight");
  check_spikes_dtype(x, w, op);
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

// Packs (weight, mask) for the kernels. format 1: dense rows; 2: compressed rows. One pass over the
// weight in C++ (common.h says why not torch's ops): 4096x4096 at 10% on the 2-core EPYC box took
// 255 ms (format 1) and 545 ms (format 2) through at::where / nonzero / masked_select / bool sums.
std::vector<at::Tensor> linear_pack(const at::Tensor& weight, const c10::optional<at::Tensor>& mask, int64_t format) {
  const int64_t M = weight.size(0), K = weight.size(1);
  const at::Tensor m = mask.has_value() ? mask->contiguous() : at::Tensor();
  at::Tensor colnnz = m.defined() ? column_counts(m, M, K) : at::full({K}, M, at::TensorOptions().dtype(at::kLong));
  if (format == 1) {
    // wt = masked weight transposed, [K, M], through 64x64 tiles; a pruned entry is 0 even when its
    // weight is NaN/inf (masked_weight's rule).
    at::Tensor wt = at::empty({K, M}, weight.options());
    const uint8_t* mp = m.defined() ? mask_bytes(m) : nullptr;
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "spike_linear_pack", [&] {
      const scalar_t* w = weight.const_data_ptr<scalar_t>();
      scalar_t* o = wt.data_ptr<scalar_t>();
      at::parallel_for(0, (K + 63) / 64, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t k0 = b0 * 64; k0 < std::min(K, b1 * 64); k0 += 64) {
          const int64_t k1 = std::min(K, k0 + 64);
          for (int64_t r0 = 0; r0 < M; r0 += 64) {
            const int64_t r1 = std::min(M, r0 + 64);
            for (int64_t k = k0; k < k1; ++k)
              for (int64_t r = r0; r < r1; ++r)
                o[k * M + r] = (!mp || mp[r * K + k]) ? w[r * K + k] : scalar_t(0);
          }
        }
      });
    });
    return {wt, colnnz};
  }
  std::vector<at::Tensor> rows = compressed_rows(weight, m, M, K, K < 65536);
  rows.push_back(colnnz);
  return rows;
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
  const Kernels& kern = kernels();
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "spike_linear_fwd", [&] {
    const TypedKernels<scalar_t>& kt = kern.of<scalar_t>();
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    if (N == 0) return;
    const at::Tensor colnnz = packed.back().contiguous();
    TORCH_CHECK(colnnz.numel() == K && colnnz.scalar_type() == at::kLong, op, ": bad packed colnnz");
    const int64_t* cn = colnnz.data_ptr<int64_t>();
    if (format == 1) {
      const at::Tensor wt = packed[0].contiguous();
      TORCH_CHECK(wt.scalar_type() == weight.scalar_type() && wt.dim() == 2 && wt.size(0) == K && wt.size(1) == M,
                  op, ": packed dense rows must be [K, M] of the weight's dtype");
      nacc = with_spikes(kt, x, [&](const auto& ks, const auto* xp) {
        return ks.linear_dense_rows(xp, N, K, M, wt.data_ptr<scalar_t>(), bp, cn, count, out.data_ptr<scalar_t>());
      });
    } else {
      const at::Tensor rowptr = packed[0].contiguous(), idx = packed[1].contiguous(), val = packed[2].contiguous();
      TORCH_CHECK(rowptr.scalar_type() == at::kLong && rowptr.numel() == M + 1 && val.scalar_type() == weight.scalar_type()
                      && idx.numel() == val.numel() && rowptr[M].item<int64_t>() == val.numel(),
                  op, ": bad packed compressed rows");
      const bool i16 = idx.scalar_type() == at::kShort;
      TORCH_CHECK(i16 || idx.scalar_type() == at::kInt, op, ": packed indices must be int16 or int32");
      TORCH_CHECK(!i16 || K <= 65536, op, ": int16 indices need K <= 65536");
      nacc = with_spikes(kt, x, [&](const auto& ks, const auto* xp) {
        if (i16)
          return ks.linear_csr16(xp, N, K, M, rowptr.data_ptr<int64_t>(), (const uint16_t*)idx.data_ptr<int16_t>(),
                                 val.data_ptr<scalar_t>(), bp, cn, count, out.data_ptr<scalar_t>());
        return ks.linear_csr32(xp, N, K, M, rowptr.data_ptr<int64_t>(), idx.data_ptr<int32_t>(),
                               val.data_ptr<scalar_t>(), bp, cn, count, out.data_ptr<scalar_t>());
      });
    }
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
    TORCH_CHECK(spikes.is_floating_point(), op, ": bool / uint8 spikes have no gradient (need_input_grad must be false)");
    // grad_in = grad_out @ (W*M): dense grad_out, so this is one GEMM (MKL).
    grad_in = at::mm(g, masked_weight(weight, mask));
  } else {
    grad_in = at::empty({0}, weight.options());
  }
  if (need_weight_grad) {
    // Event-driven: gwT[k, :] += grad_out[n, :] for every fired (n, k); k rows are owned by one thread.
    at::Tensor gwt = at::zeros({K, M}, weight.options());
    at::Tensor x = spikes.contiguous();
    const Kernels& kern = kernels();
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "spike_linear_bwd", [&] {
      with_spikes(kern.of<scalar_t>(), x, [&](const auto& ks, const auto* xp) {
        ks.linear_grad_weight_t(xp, g.data_ptr<scalar_t>(), gwt.data_ptr<scalar_t>(), N, K, M);
      });
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
