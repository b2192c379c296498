"""Compile every csrc/cuda/*.cu with nvcc (sm_80 and sm_90) against torch's headers.

Runs where no GPU exists, so a CUDA source that does not compile fails CI. Nothing is linked
or run. Exits 0 with a message when nvcc is absent (the message says so), 1 on any failure.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("80", "90")


def main() -> int:
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    nvcc = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                    if os.environ.get("CUDA_HOME") else None)
    if not sources:
        print("nvcc-check: no CUDA sources")
        return 0
    if nvcc is None:
        print("nvcc-check: SKIPPED, nvcc not found")
        return 0
    from torch.utils.cpp_extension import include_paths

    incs = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}",
                                                   f"-I{os.path.join(ROOT, 'csrc')}"]
    import torch

    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    out = tempfile.mkdtemp(prefix="nvcc-check-")
    jobs = []
    for src in sources:
        for arch in ARCHS:
            obj = os.path.join(out, f"{os.path.basename(src)}.sm{arch}.o")
            jobs.append((f"{os.path.basename(src)} [sm_{arch}]", [nvcc, "-c", src, "-o", obj, "-std=c++17", "-O1", "--expt-relaxed-constexpr",
                         f"-gencode=arch=compute_{arch},code=sm_{arch}", "-DSNNSPARSE_WITH_CUDA",
                         abi, "-Xcompiler", "-fPIC", *incs]))

    def run(job):
        name, cmd = job
        return name, subprocess.run(cmd, capture_output=True, text=True)

    failed = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, r in pool.map(run, jobs):
            if r.returncode != 0:
                failed += 1
                print(f"nvcc-check: FAIL {name}\n{r.stdout}{r.stderr}")
            else:
                print(f"nvcc-check: ok   {name}")
    shutil.rmtree(out, ignore_errors=True)
    print(f"nvcc-check: {len(jobs) - failed} compiled, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
