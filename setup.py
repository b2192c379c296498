"""Build snnsparse and its torch extension snnsparse._C.

C++ (csrc/registration.cpp, csrc/cpu/*.cpp) is always built. CUDA sources (csrc/cuda/*.cu)
are built when torch has CUDA and nvcc exists, or when FORCE_CUDA=1; SNNSPARSE_SKIP_CUDA=1
skips them. The Triton kernels in kernels/ install as snnsparse.triton_kernels.
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = ["csrc/registration.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    has_nvcc = CUDA_HOME is not None or shutil.which("nvcc") is not None
    with_cuda = not _flag("SNNSPARSE_SKIP_CUDA") and bool(cuda_sources) and (
        _flag("FORCE_CUDA") or (torch.version.cuda is not None and has_nvcc))
    cxx = ["-O3", "-fopenmp", "-std=c++17"]
    if os.environ.get("SNNSPARSE_MARCH", "native"):
        # AVX2/AVX-512 adds of weight rows are the inner loop of every CPU kernel.
        cxx.append("-march=" + os.environ.get("SNNSPARSE_MARCH", "native"))
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


ext_modules, cmdclass = _extensions()

setup(
    name="snnsparse",
    version="0.1.0",
    description="Event-driven dual-sparse kernels, pruners and energy counting for spiking neural networks",
    packages=find_packages(include=["snnsparse", "snnsparse.*"]) + ["snnsparse.triton_kernels"],
    package_dir={"snnsparse.triton_kernels": "kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy", "packaging", "tqdm"],
    extras_require={"triton": ["triton>=3.2"], "demo": ["scikit-learn", "matplotlib"]},
    entry_points={"console_scripts": ["snnsparse=snnsparse.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
