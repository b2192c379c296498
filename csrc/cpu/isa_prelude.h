// Included first by each ISA translation unit (isa_avx512.cpp, isa_avx2.cpp, isa_generic.cpp):
// every header the kernel source uses, so that all of them are parsed BEFORE the variant's
// `#pragma GCC target` (why: isa_variant.h). Also decides which variants this build compiles.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>  // gcc >= 4.9: declares every intrinsic whatever the -m flags
#endif

#include "cpu/common.h"   // ATen, at::parallel_for, checks, non_binary_error
#include "cpu/kernels.h"  // the table types

// Which variants this build compiles (each isa_*.cpp defines its table accessor either way, so
// the selection code in isa.cpp links unchanged):
//  * portable default (SNNSPARSE_MARCH unset; setup.py passes no -march): x86-64 gcc builds all
//    three, avx512 and avx2 through `#pragma GCC target`, generic for the baseline x86-64
//    (SSE2); other compilers and other architectures (aarch64: NEON is baseline there and the
//    generic variant is auto-vectorised for it) build generic only.
//  * SNNSPARSE_MARCH=<arch> (opt-in; setup.py passes -march=<arch> to every file and defines
//    SNNSPARSE_MARCH): exactly one variant, the widest that <arch> provides, as before this
//    split (-march=native on an AVX-512 machine: avx512 only).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#if !defined(SNNSPARSE_MARCH)
#define SNNSPARSE_BUILD_AVX512 1
#define SNNSPARSE_BUILD_AVX2 1
#define SNNSPARSE_BUILD_GENERIC 1
#else
#if defined(__AVX2__) && defined(__FMA__) && defined(__BMI2__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512CD__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define SNNSPARSE_BUILD_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__BMI2__)
#define SNNSPARSE_BUILD_AVX2 1
#else
#define SNNSPARSE_BUILD_GENERIC 1
#endif
#endif
#else
#define SNNSPARSE_BUILD_GENERIC 1
#endif
