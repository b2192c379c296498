// CUDA implementation of snnsparse::spike_matmul_fwd (schema: csrc/registration.cpp; autograd:
// snnsparse/ops/matmul.py). Kernels and design notes: matmul_kernels.cuh.
//
// The operands are floating tensors of one dtype (fp32/fp64/fp16/bf16; snnsparse.functional converts bool/
// uint8 spikes, as this backend's COMPACT_SPIKES is not set). A value != 0 of a binary operand packs as a
// spike: snnsparse.functional refuses non-binary operands before calling this op.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <tuple>

#include "matmul_kernels.cuh"

namespace snnsparse {
namespace cuda {
namespace {

constexpr int64_t kMaxGrid = 1 << 20;  // grid-stride loops beyond this many blocks

int64_t grid_for(int64_t n) { return std::max<int64_t>(1, std::min(ceil_div(n, kThreads), kMaxGrid)); }

// bits [Bt, R, KW] of a binary operand x[e, r, k] = x_ptr[e*st.e + r*st.r + k*st.k].
at::Tensor pack(const at::Tensor& x, int64_t Bt, int64_t R, int64_t K, const Strides3 st, cudaStream_t stream) {
  const MatmulShape s{Bt, R, K, ceil_div(K, kWord)};
  at::Tensor bits = at::empty({Bt, R, s.KW}, x.options().dtype(at::kInt));
  if (bits.numel() == 0) return bits;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "snnsparse_matmul_pack", [&] {
    matmul_pack_kernel<scalar_t><<<grid_for(bits.numel()), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), reinterpret_cast<uint32_t*>(bits.data_ptr<int32_t>()), s, st);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return bits;
}

std::tuple<at::Tensor, at::Tensor> spike_matmul_fwd_cuda(const at::Tensor& a_in, const at::Tensor& b_in,
                                                         c10::string_view binary_sv, bool count) {
  const char* op = "snnsparse::spike_matmul_fwd";
  const std::string binary(binary_sv);
  TORCH_CHECK_VALUE(binary == "both" || binary == "a" || binary == "b", op,
                    ": binary must be 'both', 'a' or 'b', got '", binary, "'");
  TORCH_CHECK(a_in.is_cuda() && b_in.device() == a_in.device(), op, ": a and b must be on one CUDA device, got ",
              a_in.device(), " and ", b_in.device());
  TORCH_CHECK_TYPE(at::isFloatingType(a_in.scalar_type()) && a_in.scalar_type() == b_in.scalar_type(), op,
                   ": a and b must have one floating dtype on CUDA (bool/uint8 spikes are converted by "
                   "snnsparse.functional), got ", a_in.scalar_type(), " and ", b_in.scalar_type());
  TORCH_CHECK(a_in.dim() == 3 && b_in.dim() == 3 && a_in.size(0) == b_in.size(0) && a_in.size(2) == b_in.size(1),
              op, ": a must be [Bt, M, K] and b [Bt, K, N], got ", a_in.sizes(), " and ", b_in.sizes());
  const c10::cuda::OptionalCUDAGuard guard(a_in.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t Bt = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
  at::Tensor out = at::empty({Bt, M, N}, a.options());
  at::Tensor n_acc = at::zeros({}, a.options().dtype(at::kLong));
  if (out.numel() == 0 || K == 0) return {out.zero_(), n_acc};
  unsigned long long* np = reinterpret_cast<unsigned long long*>(n_acc.data_ptr<int64_t>());
  const int64_t KW = ceil_div(K, kWord);
  if (binary == "both") {
    const at::Tensor ab = pack(a, Bt, M, K, Strides3{M * K, K, 1}, stream);   // rows of a
    const at::Tensor bb = pack(b, Bt, N, K, Strides3{K * N, 1, N}, stream);   // columns of b
    const uint32_t* ap = reinterpret_cast<const uint32_t*>(ab.data_ptr<int32_t>());
    const uint32_t* bp = reinterpret_cast<const uint32_t*>(bb.data_ptr<int32_t>());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "snnsparse_matmul_bb", [&] {
      scalar_t* o = out.data_ptr<scalar_t>();
      if (count) matmul_bb_kernel<scalar_t, true><<<grid_for(out.numel()), kThreads, 0, stream>>>(ap, bp, o, np, Bt, M, N, KW);
      else matmul_bb_kernel<scalar_t, false><<<grid_for(out.numel()), kThreads, 0, stream>>>(ap, bp, o, np, Bt, M, N, KW);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return {out, n_acc};
  }
  // "a": out = a @ b (spikes a); "b": out^T = b^T @ a^T (spikes b), as strides
  const bool sa = binary == "a";
  const int64_t R = sa ? M : N, C = sa ? N : M;
  const at::Tensor sb = sa ? pack(a, Bt, M, K, Strides3{M * K, K, 1}, stream)
                           : pack(b, Bt, N, K, Strides3{K * N, 1, N}, stream);
  const Strides3 ds = sa ? Strides3{K * N, N, 1} : Strides3{M * K, 1, K};    // d[e, k, c]
  const Strides3 os = sa ? Strides3{M * N, N, 1} : Strides3{M * N, 1, N};    // out[e, r, c]
  const MatmulShape s{Bt, R, K, KW};
  const uint32_t* sp = reinterpret_cast<const uint32_t*>(sb.data_ptr<int32_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "snnsparse_matmul_sd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dp = (sa ? b : a).data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t total = Bt * R * C;
    if (count) matmul_sd_kernel<scalar_t, acc_t, true><<<grid_for(total), kThreads, 0, stream>>>(sp, dp, o, np, s, C, ds, os);
    else matmul_sd_kernel<scalar_t, acc_t, false><<<grid_for(total), kThreads, 0, stream>>>(sp, dp, o, np, s, C, ds, os);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, n_acc};
}

}  // namespace
}  // namespace cuda
}  // namespace snnsparse

TORCH_LIBRARY_IMPL(snnsparse, CUDA, m) { m.impl("spike_matmul_fwd", &snnsparse::cuda::spike_matmul_fwd_cuda); }
