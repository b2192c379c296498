"""Build snnsparse and its torch extension snnsparse._C (metadata: pyproject.toml).

C++ (csrc/registration.cpp, csrc/cpu/*.cpp) is always built, for the baseline target of the
architecture unless SNNSPARSE_MARCH asks for more (see _march_flags). CUDA sources (csrc/cuda/*.cu)
are built when torch has CUDA and nvcc exists, or when FORCE_CUDA=1; SNNSPARSE_SKIP_CUDA=1
skips them. The Triton kernels in kernels/ install as snnsparse.triton_kernels.
"""
import glob
import os
import re
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _march_flags():
    """Compiler flags for SNNSPARSE_MARCH.

    Unset (default): none. The build targets the compiler's baseline (x86-64, i.e. SSE2; aarch64),
    so the library runs on any CPU of the architecture; the SIMD kernels are compiled side by side
    for AVX-512 (x86-64-v4), AVX2 (x86-64-v3) and generic from one source (csrc/cpu/isa_*.cpp) and
    the widest the CPU runs is chosen at import (SNNSPARSE_CPU_ISA overrides it).
    SNNSPARSE_MARCH=<arch> (opt-in, e.g. native): -march=<arch> for every file, as builds did
    before; only the variant matching <arch> is compiled, and the library runs only on CPUs that
    have <arch>'s instructions.
    """
    march = os.environ.get("SNNSPARSE_MARCH", "")
    if not march:
        return []
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", march):
        raise SystemExit(f"SNNSPARSE_MARCH={march!r}: expected an -march value such as native or x86-64-v3")
    # The value reaches C++ as a bare token (cpu_march() stringifies it): torch's ninja build does
    # not keep quotes in -D values.
    return ["-march=" + march, "-DSNNSPARSE_MARCH=" + march]


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = ["csrc/registration.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    has_nvcc = CUDA_HOME is not None or shutil.which("nvcc") is not None
    with_cuda = not _flag("SNNSPARSE_SKIP_CUDA") and bool(cuda_sources) and (
        _flag("FORCE_CUDA") or (torch.version.cuda is not None and has_nvcc))
    # -fno-trapping-math: the kernels' selects (LIF reset `fire ? vr + 0*h : h`, the exp clamp of the
    # sigmoid/erf surrogates) are if-converted into vector blends only when gcc may evaluate both
    # sides, which with the default -ftrapping-math it does only under AVX-512 masks: the avx2 and
    # generic LIF loops stayed scalar (1 thread, [8, 1M] fp32: forward 53 ms vs 23 ms for avx512,
    # sigmoid backward 80 ms vs 17 ms). It changes no value (no reassociation, NaN/inf/signed zeros
    # kept; clang's default), only whether FP exception flags, which nothing here reads, may be set
    # by a discarded side of a select.
    # -ffp-contract=off: g++ fuses a*b+c into one FMA by default in C++ (-std=c++17 turns that off only
    # for C), so the avx2/avx512 variants rounded the LIF backward differently from the generic one
    # (found in review: up to 6.6e-7 on [4, 100000], 20k-124k elements). Off, every variant, and the
    # torch reference, round each product and sum separately: the same bits on every CPU.
    cxx = ["-O3", "-fopenmp", "-std=c++17", "-fno-trapping-math", "-ffp-contract=off"] + _march_flags()
    kwargs = dict(extra_link_args=["-fopenmp"], include_dirs=[os.path.join(ROOT, "csrc")])
    if with_cuda:
        nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo",
                "-DSNNSPARSE_WITH_CUDA"]
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if not arch:
            nvcc += ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
        ext = CUDAExtension("snnsparse._C", sources + cuda_sources,
                            extra_compile_args={"cxx": cxx + ["-DSNNSPARSE_WITH_CUDA"], "nvcc": nvcc},
                            **kwargs)
    else:
        ext = CppExtension("snnsparse._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


def _torch_requirement():
    """The torch the extension is built against, as the runtime requirement: snnsparse._C uses torch's
    C++ ABI, which changes between releases (a wheel built against 2.13 does not load in 2.12). The
    local label (+cpu, +cu128) is dropped: it names the build, not the API, and "torch==2.13.0"
    matches every 2.13.0 build."""
    import torch
    from packaging.version import Version

    return f"torch=={Version(torch.__version__).public}"


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["snnsparse", "snnsparse.*"]) + ["snnsparse.triton_kernels"],
    package_dir={"snnsparse.triton_kernels": "kernels"},
    install_requires=[_torch_requirement(), "numpy", "packaging", "tqdm"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
