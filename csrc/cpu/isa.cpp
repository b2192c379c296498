// Selection of the CPU kernel variant, once, when snnsparse._C is imported (PyInit__C calls
// isa_selection_error(); the first kernels() call would do it otherwise).
//
// Default: the widest compiled variant the CPU runs (avx512 > avx2 > generic). SNNSPARSE_CPU_ISA
// (avx512 | avx2 | generic; "" or "auto" = default) forces one; an unknown value, a variant this
// build does not contain or one the CPU cannot run is refused: the import raises ImportError with
// the reason, and every op that would run a kernel raises it too (the ops are registered with
// torch by then: kernels() below), so no kernel ever runs on a refused selection.
//
// CPU features come from __builtin_cpu_supports("x86-64-v3" / "x86-64-v4"), the ISA levels the
// avx2 / avx512 variants are compiled for (isa_avx2.cpp, isa_avx512.cpp). It includes the OS
// check: gcc 12's libgcc (cpuinfo.o, get_available_features) runs xgetbv and reports AVX/AVX2/FMA
// only when XCR0 & 0x6 == 0x6 (XMM+YMM state enabled by the OS) and AVX-512 only when
// XCR0 & 0xe6 == 0xe6 (also opmask, ZMM_Hi256, Hi16_ZMM): verified in the disassembly of
// /usr/lib/gcc/x86_64-linux-gnu/12/libgcc.a(cpuinfo.o) ("and $0x6 / cmp $0x6", "and $0xe6 /
// cmp $0xe6" after xgetbv). This file is compiled for the baseline target like all the glue.
#include <cstdlib>
#include <string>

#include "cpu/kernels.h"

#include <c10/util/Exception.h>

namespace snnsparse {
namespace cpu {
namespace {

struct Selection {
  const Kernels* kernels = nullptr;
  std::string error;
};

const Kernels* compiled(Isa isa) {
  switch (isa) {
    case Isa::avx512: return kernels_avx512();
    case Isa::avx2: return kernels_avx2();
    case Isa::generic: return kernels_generic();
  }
  return nullptr;
}

bool cpu_runs(Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();  // harmless when libgcc's constructor already ran
  switch (isa) {
    case Isa::avx512: return __builtin_cpu_supports("x86-64-v4");
    case Isa::avx2: return __builtin_cpu_supports("x86-64-v3");
    case Isa::generic: return true;
  }
  return false;
#else
  return isa == Isa::generic;
#endif
}

const char* requirement(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "x86-64-v4: AVX-512 F/BW/CD/DQ/VL enabled by the OS, plus the AVX2 set";
    case Isa::avx2: return "x86-64-v3: AVX2, FMA, BMI1/2, LZCNT, F16C, MOVBE, with AVX state enabled by the OS";
    case Isa::generic: return "nothing beyond the build target";
  }
  return "";
}

const char* name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    case Isa::generic: return "generic";
  }
  return "?";
}

constexpr Isa kWidestFirst[] = {Isa::avx512, Isa::avx2, Isa::generic};

std::string runnable_list() {
  std::string s;
  for (Isa isa : kWidestFirst)
    if (compiled(isa) && cpu_runs(isa)) s += std::string(s.empty() ? "" : ",") + name(isa);
  return s.empty() ? "none" : s;
}

Selection select() {
  Selection sel;
  const char* env = std::getenv("SNNSPARSE_CPU_ISA");
  const std::string want = env ? env : "";
  const std::string build = std::string("this build of snnsparse._C has ") + cpu_isa_compiled() +
                            (cpu_march()[0] ? std::string(" (built with SNNSPARSE_MARCH=") + cpu_march() + ")" : "") +
                            " and this CPU runs " + runnable_list();
  if (want.empty() || want == "auto") {
    for (Isa isa : kWidestFirst) {
      if (compiled(isa) && cpu_runs(isa)) {
        sel.kernels = compiled(isa);
        return sel;
      }
    }
    // Only a SNNSPARSE_MARCH build for a wider CPU than this one gets here.
    sel.error = "snnsparse._C: no compiled CPU kernel variant runs on this CPU: " + build +
                ". Rebuild without SNNSPARSE_MARCH (the default build runs on any x86-64).";
    return sel;
  }
  for (Isa isa : kWidestFirst) {
    if (want != name(isa)) continue;
    if (!compiled(isa)) {
      sel.error = "SNNSPARSE_CPU_ISA=" + want + ": " + build + "; choose one of those or unset SNNSPARSE_CPU_ISA.";
    } else if (!cpu_runs(isa)) {
      sel.error = "SNNSPARSE_CPU_ISA=" + want + ": this CPU cannot run the " + want + " kernels (they need " +
                  requirement(isa) + "); " + build + ". Choose one of those or unset SNNSPARSE_CPU_ISA.";
    } else {
      sel.kernels = compiled(isa);
    }
    return sel;
  }
  sel.error = "SNNSPARSE_CPU_ISA='" + want + "' is not a CPU kernel variant: use avx512, avx2 or generic (or unset it "
              "for the widest the CPU runs); " + build + ".";
  return sel;
}

const Selection& selection() {
  static const Selection sel = select();
  return sel;
}

}  // namespace

const Kernels& kernels() {
  const Selection& s = selection();
  TORCH_CHECK(s.kernels != nullptr, s.error);
  return *s.kernels;
}

const std::string& isa_selection_error() { return selection().error; }

const char* cpu_isa_selected() {
  const Selection& s = selection();
  return s.kernels ? s.kernels->name : "";
}

std::string cpu_isa_compiled() {
  std::string s;
  for (Isa isa : kWidestFirst)
    if (compiled(isa)) s += std::string(s.empty() ? "" : ",") + name(isa);
  return s;
}

// setup.py passes SNNSPARSE_MARCH as a bare token (-DSNNSPARSE_MARCH=native; it accepts only
// [A-Za-z0-9_.-] in the value), as torch does with TORCH_EXTENSION_NAME: a quoted string would not
// survive the ninja command line.
#define SNNSPARSE_STR2(x) #x
#define SNNSPARSE_STR(x) SNNSPARSE_STR2(x)
const char* cpu_march() {
#if defined(SNNSPARSE_MARCH)
  return SNNSPARSE_STR(SNNSPARSE_MARCH);
#else
  return "";
#endif
}

}  // namespace cpu
}  // namespace snnsparse
