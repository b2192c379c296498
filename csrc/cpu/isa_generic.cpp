// The generic variant of the CPU kernels: the kernel source compiled for the build's baseline
// target (x86-64 = SSE2 by default, aarch64 = NEON), auto-vectorised scalar code, in namespace
// snnsparse::cpu::generic. Runs on every CPU the build targets. How and why: isa_variant.h.
#include "cpu/isa_prelude.h"

#if defined(SNNSPARSE_BUILD_GENERIC)
#define SNNSPARSE_ISA_LEVEL 0
#define SNNSPARSE_ISA_NAME "generic"
namespace snnsparse {
namespace cpu {
namespace generic {
#include "cpu/isa_variant.h"
}  // namespace generic
}  // namespace cpu
}  // namespace snnsparse
const snnsparse::cpu::Kernels* snnsparse::cpu::kernels_generic() { return &generic::kKernels; }
#else
const snnsparse::cpu::Kernels* snnsparse::cpu::kernels_generic() { return nullptr; }
#endif
