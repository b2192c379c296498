// spike_matmul on CPU: out = a @ b per batch entry, where the operands named by `binary` are spikes. This file
// is the op (checks, operand layouts, registration), compiled for the baseline target; the kernels are in
// matmul_kernels.h, run through kernels() (the variant selected at load time).
//   "both": matmul_bb(a, b): AND + popcount on bit-packed rows of a and columns of b.
//   "a":    matmul_sd(s = a, d = b): each fired a[m, k] adds row b[k, :].
//   "b":    the same kernel transposed, out^T = b^T @ a^T: each fired b[k, n] adds row k of a^T (column a[:, k])
//           into row n of out^T. The two transposed copies cost one pass over a and b each; the direct
//           form would scatter single floats instead of adding contiguous rows.
#include <string>

#include "common.h"
#include "kernels.h"

namespace snnsparse {
namespace cpu {

std::tuple<at::Tensor, at::Tensor> matmul_fwd(const at::Tensor& a, const at::Tensor& b, c10::string_view binary_sv,
                                              bool count) {
  const char* op = "snnsparse::spike_matmul_fwd";
  const std::string binary(binary_sv);
  TORCH_CHECK_VALUE(binary == "both" || binary == "a" || binary == "b", op,
                    ": binary must be 'both', 'a' or 'b', got '", binary, "'");
  check_cpu(a, op, "a");
  check_cpu(b, op, "b");
  check_float(a, op, "a");
  check_same_dtype(a, b, op, "a", "b");
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3, op, ": a and b must be [Bt, M, K] and [Bt, K, N], got ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(a.size(0) == b.size(0) && a.size(2) == b.size(1), op, ": a [Bt, M, K] and b [Bt, K, N] must share Bt "
              "and K, got ", a.sizes(), " and ", b.sizes());
  const int64_t Bt = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
  const Kernels& kern = kernels();
  int64_t nacc = 0;
  at::Tensor out;
  if (Bt == 0 || M == 0 || N == 0 || K == 0) {
    // nothing to sum; the binary operands are still checked (an empty K leaves none to check)
    out = at::zeros({Bt, M, N}, a.options());
    return {out, scalar_count(0)};
  }
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "spike_matmul_fwd", [&] {
    const TypedKernels<scalar_t>& kt = kern.of<scalar_t>();
    if (binary == "both") {
      const at::Tensor ac = a.contiguous(), bc = b.contiguous();
      out = empty_output({Bt, M, N}, a.options());
      nacc = kt.matmul_bb(ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), Bt, M, K, N, count,
                          out.data_ptr<scalar_t>());
    } else if (binary == "a") {
      const at::Tensor ac = a.contiguous(), bc = b.contiguous();
      out = empty_output({Bt, M, N}, a.options());
      nacc = kt.matmul_sd(ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), Bt, M, K, N, count,
                          out.data_ptr<scalar_t>());
    } else {
      const at::Tensor st = b.transpose(1, 2).contiguous(), dt = a.transpose(1, 2).contiguous();  // [Bt,N,K], [Bt,K,M]
      at::Tensor outt = empty_output({Bt, N, M}, a.options());
      nacc = kt.matmul_sd(st.data_ptr<scalar_t>(), dt.data_ptr<scalar_t>(), Bt, N, K, M, count,
                          outt.data_ptr<scalar_t>());
      out = outt.transpose(1, 2).contiguous();
    }
  });
  return {out, scalar_count(nacc)};
}

}  // namespace cpu
}  // namespace snnsparse

TORCH_LIBRARY_IMPL(snnsparse, CPU, m) { m.impl("spike_matmul_fwd", &snnsparse::cpu::matmul_fwd); }
