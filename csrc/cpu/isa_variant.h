// One instruction-set variant of the CPU kernels: the kernel source (scan, linear, conv, LIF, matmul) and
// its table. Included exactly once by each of isa_avx512.cpp, isa_avx2.cpp and isa_generic.cpp,
// like this:
//
//   #include "cpu/isa_prelude.h"        // EVERY header the kernels need, before the pragma
//   #pragma GCC push_options
//   #pragma GCC target("...")           // the variant's instruction sets (none for generic)
//   #define SNNSPARSE_ISA_LEVEL 2       // 2 avx512, 1 avx2, 0 generic
//   #define SNNSPARSE_ISA_NAME "avx512"
//   namespace snnsparse { namespace cpu { namespace avx512 {
//   #include "cpu/isa_variant.h"
//   }}}
//   #pragma GCC pop_options
//
// Why headers first (the SIGILL/ODR hazard): an inline function or template defined in a header
// gets the target options in force where it is DEFINED. A header included after the pragma would
// define, e.g., std::vector<uint64_t>::_M_default_append or a c10 helper with AVX-512 enabled; its
// out-of-line copy is a weak (COMDAT) symbol, the same name as the baseline copy the glue TUs
// emit, and the linker keeps one of them for the whole library, so the generic path could
// execute AVX-512 code and die with SIGILL on an AVX2 CPU. Defined before the pragma, such
// functions stay baseline even when instantiated from inside the region (checked with gcc 12:
// a header template instantiated inside `#pragma GCC target("avx512f")` has no AVX instruction,
// the same template defined inside it does and is emitted as a weak symbol). Everything defined
// here lives in the variant's namespace (and an unnamed one), so no symbol of wider-ISA code can
// be shared with another translation unit; tools/check_isa_symbols.py verifies the built library.
//
// Why our own SNNSPARSE_ISA_LEVEL and not __AVX512F__ / __AVX2__: g++ 12 lexes the whole
// translation unit before it parses the pragma, so `#pragma GCC target` does NOT define those
// macros in the region in C++ (it does in C); `#if defined(__AVX512F__)` would silently drop the
// intrinsic paths. Why ISA lists and not target("arch=x86-64-v4"): gcc inlines a function only
// into a caller with the same arch and tune (ix86_can_inline_p), so an arch= change would stop
// every baseline header helper (std::min, vector::operator[], ...) from being inlined into the
// kernels; a pure ISA list keeps arch/tune and allows it (callee ISA a subset of the caller's).
#ifndef SNNSPARSE_ISA_LEVEL
#error "define SNNSPARSE_ISA_LEVEL before including isa_variant.h"
#endif

namespace {

#include "cpu/scan_kernels.h"
#include "cpu/linear_kernels.h"
#include "cpu/conv_kernels.h"
#include "cpu/lif_kernels.h"
#include "cpu/matmul_kernels.h"

template <typename T, typename S>
constexpr SpikeKernels<T, S> spike_kernels() {
  SpikeKernels<T, S> k{};
  k.linear_dense_rows = &linear_dense_rows<T, S>;
  k.linear_csr16 = &linear_csr<T, uint16_t, S>;
  k.linear_csr32 = &linear_csr<T, int32_t, S>;
  k.linear_grad_weight_t = &linear_grad_weight_t<T, S>;
  k.conv_dense_slabs = &conv_fwd_dense<T, S>;
  k.conv_blocks = &conv_fwd_blocked<T, S>;
  k.conv_blocks_counts = &conv_fwd_blocked<T, S, true>;
  k.conv_csr16 = &conv_fwd_csr<T, int16_t, S>;
  k.conv_csr32 = &conv_fwd_csr<T, int32_t, S>;
#if SNNSPARSE_ISA_LEVEL >= 1
  if constexpr (std::is_same<T, float>::value) {
    k.conv_outrows16 = &conv_fwd_outrows_f32<int16_t, S>;
    k.conv_outrows32 = &conv_fwd_outrows_f32<int32_t, S>;
  }
#endif
  k.conv_grad_weight = &conv_grad_weight<T, S>;
  return k;
}

template <typename T>
constexpr TypedKernels<T> typed_kernels() {
  TypedKernels<T> k{};
  k.spikes = spike_kernels<T, T>();
  k.u8_spikes = spike_kernels<T, uint8_t>();
  k.lif_fwd = &lif_fwd<T>;
  k.lif_bwd = &lif_bwd<T>;
  k.matmul_bb = &matmul_bb<T, T>;
  k.matmul_bb_u8 = &matmul_bb<uint8_t, T>;
  k.matmul_sd = &matmul_sd<T, T>;
  k.matmul_sd_u8 = &matmul_sd<uint8_t, T>;
  k.matmul_ds = &matmul_ds<T, T>;
  k.matmul_ds_u8 = &matmul_ds<uint8_t, T>;
  return k;
}

}  // namespace

// constexpr: the table is constant-initialised data, so taking the variant's function addresses
// executes none of its code (the CPU is checked before any of it runs).
constexpr Kernels kKernels = {SNNSPARSE_ISA_NAME, static_cast<Isa>(SNNSPARSE_ISA_LEVEL), typed_kernels<float>(),
                              typed_kernels<double>()};
