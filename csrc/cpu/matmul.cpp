// spike_matmul on CPU: out = a @ b per batch entry, where the operands named by `binary` are spikes. This file
// is the op (checks, dtypes, registration), compiled for the baseline target; the kernels are in
// matmul_kernels.h, run through kernels() (the variant selected at load time):
//   "both": matmul_bb (AND + popcount on bit-packed rows of a and columns of b);
//   "a":    matmul_sd (each fired a[m, k] adds row b[k, :]);
//   "b":    matmul_ds (each fired b[k, n] adds column a[:, k], on L1-sized transposed blocks).
// Dtypes: a dense operand is float32/float64 and gives the output dtype; a binary operand is that dtype or
// compact spikes, bool or uint8 (read as bytes). Both binary and both compact: the output is float32.
#include <string>

#include "common.h"
#include "kernels.h"

namespace snnsparse {
namespace cpu {
namespace {

bool compact(const at::Tensor& t) { return t.scalar_type() == at::kBool || t.scalar_type() == at::kByte; }

// A binary operand in the dtype its kernel reads: bool as uint8 (same bytes), else as is.
at::Tensor spikes_in(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return c.scalar_type() == at::kBool ? c.view(at::kByte) : c;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> matmul_fwd(const at::Tensor& a_in, const at::Tensor& b_in,
                                              c10::string_view binary_sv, bool count) {
  const char* op = "snnsparse::spike_matmul_fwd";
  const std::string binary(binary_sv);
  TORCH_CHECK_VALUE(binary == "both" || binary == "a" || binary == "b", op,
                    ": binary must be 'both', 'a' or 'b', got '", binary, "'");
  check_cpu(a_in, op, "a");
  check_cpu(b_in, op, "b");
  TORCH_CHECK(a_in.dim() == 3 && b_in.dim() == 3, op, ": a and b must be [Bt, M, K] and [Bt, K, N], got ",
              a_in.sizes(), " and ", b_in.sizes());
  TORCH_CHECK(a_in.size(0) == b_in.size(0) && a_in.size(2) == b_in.size(1), op,
              ": a [Bt, M, K] and b [Bt, K, N] must share Bt and K, got ", a_in.sizes(), " and ", b_in.sizes());
  const bool a_bin = binary != "b", b_bin = binary != "a";
  for (const auto& [t, name, bin] : {std::make_tuple(a_in, "a", a_bin), std::make_tuple(b_in, "b", b_bin)}) {
    if (bin && compact(t)) continue;
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name, " must be ",
                     bin ? "float32/float64, bool or uint8 (a binary operand)" : "float32 or float64 (a dense operand; "
                     "fp16/bf16 are upcast by snnsparse.ops.cpp)", ", got ", t.scalar_type());
  }
  at::Tensor a = a_in, b = b_in;
  if (!compact(a) && !compact(b))
    check_same_dtype(a, b, op, "a", "b");
  else if (binary == "both" && compact(a) != compact(b))  // one compact, one float: both as the float dtype
    (compact(a) ? a : b) = (compact(a) ? a : b).to(compact(a) ? b.scalar_type() : a.scalar_type());
  const at::ScalarType dtype = !compact(a) ? a.scalar_type() : (!compact(b) ? b.scalar_type() : at::kFloat);
  const int64_t Bt = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
  if (Bt == 0 || M == 0 || N == 0 || K == 0)  // nothing to sum (and nothing to scan when K is 0)
    return {at::zeros({Bt, M, N}, a.options().dtype(dtype)), scalar_count(0)};
  const Kernels& kern = kernels();
  at::Tensor out = empty_output({Bt, M, N}, a.options().dtype(dtype));
  int64_t nacc = 0;
  AT_DISPATCH_FLOATING_TYPES(dtype, "spike_matmul_fwd", [&] {
    const TypedKernels<scalar_t>& kt = kern.of<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    if (binary == "both") {
      const at::Tensor ac = spikes_in(a), bc = spikes_in(b);
      nacc = compact(ac) ? kt.matmul_bb_u8(ac.data_ptr<uint8_t>(), bc.data_ptr<uint8_t>(), Bt, M, K, N, count, o)
                         : kt.matmul_bb(ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), Bt, M, K, N, count, o);
    } else if (binary == "a") {
      const at::Tensor ac = spikes_in(a), bc = b.contiguous();
      nacc = compact(ac) ? kt.matmul_sd_u8(ac.data_ptr<uint8_t>(), bc.data_ptr<scalar_t>(), Bt, M, K, N, count, o)
                         : kt.matmul_sd(ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), Bt, M, K, N, count, o);
    } else {
      const at::Tensor ac = a.contiguous(), bc = spikes_in(b);
      nacc = compact(bc) ? kt.matmul_ds_u8(ac.data_ptr<scalar_t>(), bc.data_ptr<uint8_t>(), Bt, M, K, N, count, o)
                         : kt.matmul_ds(ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), Bt, M, K, N, count, o);
    }
  });
  return {out, scalar_count(nacc)};
}

}  // namespace cpu
}  // namespace snnsparse

TORCH_LIBRARY_IMPL(snnsparse, CPU, m) { m.impl("spike_matmul_fwd", &snnsparse::cpu::matmul_fwd); }
