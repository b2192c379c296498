// Shared helpers of the CPU kernels (csrc/cpu/*.cpp): input checks, spike-plane scanning.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// The SIMD level this translation unit was compiled for (reported by snnsparse::cpu_isa).
inline const char* cpu_isa_name() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2";
#else
  return "generic";
#endif
}

[[noreturn]] inline void non_binary_error(double value) {
  TORCH_CHECK_VALUE(false, "snnsparse: spikes must be binary (0 or 1) for an event-driven kernel; found value ", value,
                    ". Use the dense layer (or torch.nn.functional) for non-binary input.");
}

template <typename scalar_t>
[[noreturn]] inline void non_binary_in(const scalar_t* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (p[i] != scalar_t(0) && p[i] != scalar_t(1)) non_binary_error((double)p[i]);
  non_binary_error(0.5);  // unreachable
}

// Bits of the nonzero entries of p[0..n): bit i of word i/64 is set when p[i] != 0.
// words must hold (n + 63) / 64 entries. Spikes are binary, so "nonzero" is "fired"; any value
// other than 0 and 1 (NaN included) raises ValueError, at the cost of one more compare per
// 16 floats, so callers need not make a separate validation pass over the spikes.
template <typename scalar_t>
inline void nonzero_bits(const scalar_t* p, int64_t n, uint64_t* words) {
  const int64_t nw = (n + 63) / 64;
  for (int64_t w = 0; w < nw; ++w) {
    const int64_t base = w * 64;
    const int64_t lim = std::min<int64_t>(64, n - base);
    uint64_t bits = 0;
#if defined(__AVX512F__)
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
        bad |= _mm512_mask_cmp_ps_mask(nz, v, one, _CMP_NEQ_UQ);
        out |= (uint64_t)nz << q;
      }
      if (__builtin_expect(bad != 0, 0)) non_binary_in(p + base, lim);
      words[w] = out;
      continue;
    }
#endif
    bool bad = false;
    for (int64_t i = 0; i < lim; ++i) {
      const scalar_t v = p[base + i];
      bits |= (uint64_t)(v != scalar_t(0)) << i;
      bad |= (v != scalar_t(0)) & (v != scalar_t(1));
    }
    if (__builtin_expect(bad, 0)) non_binary_in(p + base, lim);
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
