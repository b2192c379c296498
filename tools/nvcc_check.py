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


# Headers that a CUDA build of torch generates at build time and a CPU wheel does not ship.
# Their content is what torch's CMake writes for a shared-library CUDA build; they only let
# the c10/cuda headers parse here (nothing is linked).
_GENERATED = {
    "c10/cuda/impl/cuda_cmake_macros.h": "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n",
}


def _shim_includes(torch_includes, out):
    """An include dir with the generated headers missing from torch's own include dirs."""
    missing = {rel: text for rel, text in _GENERATED.items()
               if not any(os.path.exists(os.path.join(d, rel)) for d in torch_includes)}
    if not missing:
        return []
    shim = os.path.join(out, "shim-include")
    for rel, text in missing.items():
        os.makedirs(os.path.dirname(os.path.join(shim, rel)), exist_ok=True)
        with open(os.path.join(shim, rel), "w") as f:
            f.write(text)
    print("nvcc-check: torch is a CPU build; using stand-ins for " + ", ".join(sorted(missing)))
    return [f"-I{shim}"]


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
    incs += _shim_includes(include_paths(), out)
    jobs = []
    # One nvcc call per source with every arch: the host pass over torch's headers (most of the
    # time) runs once, the device pass once per arch; an error names the arch it came from.
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    archs = ",".join(f"sm_{a}" for a in ARCHS)
    for src in sources:
        obj = os.path.join(out, f"{os.path.basename(src)}.o")
        # -std=c++20: what torch.utils.cpp_extension and setup.py's CUDA branch use.
        jobs.append((f"{os.path.basename(src)} [{archs}]",
                     [nvcc, "-c", src, "-o", obj, "-std=c++20", "-O1", "--expt-relaxed-constexpr", *gencode,
                      "-DSNNSPARSE_WITH_CUDA", abi, "-Xcompiler", "-fPIC", *incs]))

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
                if r.stderr.strip():  # warnings: shown, not fatal
                    print(r.stderr.rstrip())
    shutil.rmtree(out, ignore_errors=True)
    print(f"nvcc-check: {len(jobs) - failed} compiled, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
