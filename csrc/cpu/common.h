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
#include <atomic>
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

// Packing helpers. torch's own reductions of a bool mask go through a cast to int64 and were most of a
// packing's time: for a 4096x4096 mask at 10% on the 2-core EPYC box (2 threads, 2026-12-01) mask.sum(1)
// took 225 ms, masked_select 257 ms, mask.sum(0) 65 ms, so a per-call spike_linear packed in 410 ms
// (F.linear: 32 ms). These loops read the mask as bytes (a bool is one byte, nonzero = kept).
inline const uint8_t* mask_bytes(const at::Tensor& m) { return static_cast<const uint8_t*>(m.const_data_ptr()); }

// Number of kept entries of a contiguous bool tensor.
inline int64_t count_kept(const at::Tensor& m) {
  const uint8_t* p = mask_bytes(m);
  std::atomic<int64_t> n{0};
  at::parallel_for(0, m.numel(), int64_t(1) << 18, [&](int64_t a, int64_t b) {
    int64_t c = 0;
    for (int64_t i = a; i < b; ++i) c += p[i] != 0;
    n += c;
  });
  return n.load();
}

// Fraction of kept synapses (1 without a mask); picks the weight format.
inline double mask_density(const c10::optional<at::Tensor>& mask) {
  return mask.has_value() && mask->numel() ? double(count_kept(mask->contiguous())) / mask->numel() : 1.0;
}

// out[r] = kept entries of row r of a contiguous bool [R, L] (int64 [R]).
inline at::Tensor row_counts(const at::Tensor& m, int64_t R, int64_t L) {
  at::Tensor out = at::empty({R}, at::TensorOptions().dtype(at::kLong));
  const uint8_t* p = mask_bytes(m);
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, R, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, L)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t c = 0;
      for (int64_t i = 0; i < L; ++i) c += p[r * L + i] != 0;
      o[r] = c;
    }
  });
  return out;
}

// out[l] = kept entries of column l of a contiguous bool [R, L] (int64 [L]); threads own blocks of 64
// columns (one cache line of each row).
inline at::Tensor column_counts(const at::Tensor& m, int64_t R, int64_t L) {
  at::Tensor out = at::zeros({L}, at::TensorOptions().dtype(at::kLong));
  const uint8_t* p = mask_bytes(m);
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, (L + 63) / 64, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t l0 = b0 * 64; l0 < std::min(L, b1 * 64); l0 += 64) {
      const int64_t l1 = std::min(L, l0 + 64);
      for (int64_t r = 0; r < R; ++r)
        for (int64_t l = l0; l < l1; ++l) o[l] += p[r * L + l] != 0;
    }
  });
  return out;
}

// Compressed rows of the kept entries of v [R, L] (contiguous; m: contiguous bool [R, L], or undefined =
// all kept), in row-major order: {rowptr int64 [R + 1], idx [nnz] (int16 bits of the column when
// `i16`, read back as uint16 by the kernels; else int32), val [nnz] of v's dtype}.
inline std::vector<at::Tensor> compressed_rows(const at::Tensor& v, const at::Tensor& m, int64_t R, int64_t L,
                                               bool i16) {
  at::Tensor rowptr = at::zeros({R + 1}, at::TensorOptions().dtype(at::kLong));
  int64_t* rp = rowptr.data_ptr<int64_t>();
  if (m.defined()) {
    at::Tensor rc = row_counts(m, R, L);
    const int64_t* c = rc.const_data_ptr<int64_t>();
    for (int64_t r = 0; r < R; ++r) rp[r + 1] = rp[r] + c[r];
  } else {
    for (int64_t r = 0; r < R; ++r) rp[r + 1] = rp[r] + L;
  }
  const int64_t nnz = rp[R];
  at::Tensor idx = at::empty({nnz}, at::TensorOptions().dtype(i16 ? at::kShort : at::kInt));
  at::Tensor val = at::empty({nnz}, v.options());
  const uint8_t* mp = m.defined() ? mask_bytes(m) : nullptr;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "snnsparse_compressed_rows", [&] {
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    scalar_t* op = val.data_ptr<scalar_t>();
    int16_t* i16p = i16 ? idx.data_ptr<int16_t>() : nullptr;
    int32_t* i32p = i16 ? nullptr : idx.data_ptr<int32_t>();
    at::parallel_for(0, R, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, L)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t q = rp[r];
        for (int64_t l = 0; l < L; ++l) {
          if (mp && !mp[r * L + l]) continue;
          if (i16) i16p[q] = (int16_t)(uint16_t)l;
          else i32p[q] = (int32_t)l;
          op[q++] = vp[r * L + l];
        }
      }
    });
  });
  return {rowptr, idx, val};
}

// Raised by the kernels' spike scans (scan_kernels.h) for a value other than 0 and 1 (NaN included).
[[noreturn]] inline void non_binary_error(double value) {
  TORCH_CHECK_VALUE(false, "snnsparse: spikes must be binary (0 or 1) for an event-driven kernel; found value ", value,
                    ". Use the dense layer (or torch.nn.functional) for non-binary input.");
}

// Raised by the spike-count kernels (conv_kernels.h conv_fwd_blocked<..., true>) for a nonzero value that is
// not an integer count 1..15 (NaN included). "spike counts must be" is what the Python side matches.
[[noreturn]] inline void non_count_error(double value) {
  TORCH_CHECK_VALUE(false, "snnsparse: spike counts must be integers 0..15 for the counts kernel; found value ",
                    value, ".");
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
