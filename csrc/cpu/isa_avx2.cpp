// The avx2 variant of the CPU kernels: the kernel source compiled for x86-64-v3 (AVX2, FMA,
// BMI1/2, LZCNT, POPCNT, F16C, MOVBE: Haswell / Zen 1 and later), in namespace
// snnsparse::cpu::avx2. Selected at load time only where __builtin_cpu_supports("x86-64-v3")
// (isa.cpp). How and why: isa_variant.h.
#include "cpu/isa_prelude.h"  // all headers first: nothing from a header may be compiled for AVX2

#if defined(SNNSPARSE_BUILD_AVX2)
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c,movbe")
#define SNNSPARSE_ISA_LEVEL 1
#define SNNSPARSE_ISA_NAME "avx2"
namespace snnsparse {
namespace cpu {
namespace avx2 {
#include "cpu/isa_variant.h"
}  // namespace avx2
}  // namespace cpu
}  // namespace snnsparse
#pragma GCC pop_options
const snnsparse::cpu::Kernels* snnsparse::cpu::kernels_avx2() { return &avx2::kKernels; }
#else
const snnsparse::cpu::Kernels* snnsparse::cpu::kernels_avx2() { return nullptr; }
#endif
