// The avx512 variant of the CPU kernels: the kernel source compiled for x86-64-v4 (AVX-512
// F/BW/CD/DQ/VL on top of x86-64-v3), in namespace snnsparse::cpu::avx512. Selected at load time
// only where __builtin_cpu_supports("x86-64-v4") (isa.cpp). How and why: isa_variant.h.
#include "cpu/isa_prelude.h"  // all headers first: nothing from a header may be compiled for AVX-512

#if defined(SNNSPARSE_BUILD_AVX512)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512cd,avx512dq,avx512vl,avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c,movbe")
#define SNNSPARSE_ISA_LEVEL 2
#define SNNSPARSE_ISA_NAME "avx512"
namespace snnsparse {
namespace cpu {
namespace avx512 {
#include "cpu/isa_variant.h"
}  // namespace avx512
}  // namespace cpu
}  // namespace snnsparse
#pragma GCC pop_options
const snnsparse::cpu::Kernels* snnsparse::cpu::kernels_avx512() { return &avx512::kKernels; }
#else
const snnsparse::cpu::Kernels* snnsparse::cpu::kernels_avx512() { return nullptr; }
#endif
