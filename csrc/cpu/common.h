// Shared helpers of the CPU op glue (csrc/cpu/*.cpp): input checks, weight masking, outputs.
// Compiled for the baseline target only. The SIMD kernels (spike scanning included) are in
// csrc/cpu/*_kernels.h, compiled once per instruction-set variant (kernels.h, isa_variant.h).
// This header is also the first thing every ISA translation unit includes (isa_prelude.h), so
// that ATen's inline functions are defined before any `#pragma GCC target`.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace snnsparse {
namespace cpu {

// fp32 and fp64 only. fp16/bf16 are refused here with a TypeError; snnsparse/ops/cpp.py upcasts
// them to fp32 (and casts the result back) before calling an op.
inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                   " must be float32 or float64 on CPU (fp16/bf16 are upcast by snnsparse.ops.cpp), got ",
                   t.scalar_type());
}

inline void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* op, const char* na,
                             const char* nb) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), op, ": ", na, " (", a.scalar_type(), ") and ", nb,
                   " (", b.scalar_type(), ") must have the same dtype");
}

// Spikes are floats of the weight's dtype, or bool / uint8 (read by the kernels as bytes: no float copy).
inline void check_spikes_dtype(const at::Tensor& x, const at::Tensor& w, const char* op) {
  const at::ScalarType st = x.scalar_type();
  TORCH_CHECK_TYPE(st == w.scalar_type() || st == at::kBool || st == at::kByte, op,
                   ": spikes must be bool, uint8 or the weight's dtype (", w.scalar_type(), "), got ", st);
}

// f(spike kernels, spike pointer) with the kernels that read x's element type: the float-spike
// kernels of the weight's dtype T, or the uint8 ones for bool / uint8 spikes (a bool is one byte
// holding 0 or 1; any other byte is refused by the scan as non-binary). x must be contiguous.
template <typename T, typename F>
auto with_spikes(const TypedKernels<T>& kt, const at::Tensor& x, F&& f) {
  if (x.scalar_type() == at::kBool || x.scalar_type() == at::kByte)
    return f(kt.u8_spikes, static_cast<const uint8_t*>(x.const_data_ptr()));
  return f(kt.spikes, x.const_data_ptr<T>());
}

inline void check_mask(const c10::optional<at::Tensor>& mask, const at::Tensor& weight, const char* op) {
  if (!mask.has_value()) return;
  check_cpu(*mask, op, "mask");
  TORCH_CHECK_TYPE(mask->scalar_type() == at::kBool, op, ": mask must be bool, got ", mask->scalar_type());
  TORCH_CHECK(mask->sizes() == weight.sizes(), op, ": mask must have the weight's shape ", weight.sizes(),
              ", got ", mask->sizes());
}

// weight with pruned entries set to 0 (never weight * mask: a pruned NaN/inf weight must be absent,
// and NaN * 0 is NaN). The project rule: a pruned synapse contributes nothing, on every backend.
inline at::Tensor masked_weight(const at::Tensor& weight, const c10::optional<at::Tensor>& mask) {
  if (!mask.has_value()) return weight;
  return at::where(*mask, weight, at::zeros({}, weight.options()));
}

// Fraction of kept synapses (1 without a mask); picks the weight format.
inline double mask_density(const c10::optional<at::Tensor>& mask) {
  return mask.has_value() && mask->numel() ? mask->sum().item<double>() / mask->numel() : 1.0;
}

// Raised by the kernels' spike scans (scan_kernels.h) for a value other than 0 and 1 (NaN included).
[[noreturn]] inline void non_binary_error(double value) {
  TORCH_CHECK_VALUE(false, "snnsparse: spikes must be binary (0 or 1) for an event-driven kernel; found value ", value,
                    ". Use the dense layer (or torch.nn.functional) for non-binary input.");
}

// at::empty, with transparent huge pages requested for large buffers (>= 4 MiB): a fresh 32 MiB
// output otherwise costs ~8k page faults, measured 14.6 ms of the 15.8 ms a fresh
// [64,128,32,32] fp32 fill takes on the 2-core EPYC box (1.1 ms when pre-faulted).
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  at::Tensor t = at::empty(sizes, opts);
  const size_t nbytes = t.nbytes();
  if (nbytes >= (size_t(4) << 20)) {
    const uintptr_t huge = uintptr_t(2) << 20;
    const uintptr_t p = (uintptr_t)t.data_ptr();
    const uintptr_t a = (p + huge - 1) & ~(huge - 1), e = (p + nbytes) & ~(huge - 1);
    if (e > a) madvise((void*)a, e - a, MADV_HUGEPAGE);
  }
  return t;
}

inline at::Tensor scalar_count(int64_t n) { return at::scalar_tensor(n, at::TensorOptions().dtype(at::kLong)); }

}  // namespace cpu
}  // namespace snnsparse
