"""Loading the compiled extension snnsparse._C (op schemas + CPU/CUDA kernels).

`import snnsparse` never fails because of it: load() returns the reason instead, and
ss.backends.available() reports it for "cpp" and "cuda".

Importing snnsparse._C selects its CPU kernel variant (avx512, avx2, generic: the widest the CPU
runs) or the one SNNSPARSE_CPU_ISA names. A value that is unknown, not compiled in, or that the
CPU cannot run fails the import with the reason; since a backend that cannot load is otherwise
skipped silently by backend="auto", load() also warns (RuntimeWarning) in that case: the user
asked for a variant and must not get the reference backend without being told.
"""
import os
import warnings
from typing import Optional

_reason: Optional[str] = None
_loaded = False


def load() -> Optional[str]:
    """Import snnsparse._C once; None on success, else why it could not be loaded."""
    global _reason, _loaded
    if not _loaded:
        _loaded = True
        try:
            from . import _C  # noqa: F401  (registers the snnsparse:: ops with torch)
        except ImportError as e:
            if "SNNSPARSE_CPU_ISA" in str(e) and os.environ.get("SNNSPARSE_CPU_ISA"):
                _reason = f"the C++ extension snnsparse._C refused SNNSPARSE_CPU_ISA: {e}"
                warnings.warn(f"snnsparse: the cpp/cuda backends are unavailable: {_reason}", RuntimeWarning,
                              stacklevel=2)
            else:
                _reason = (f"the C++ extension snnsparse._C could not be loaded ({e}); build it with "
                           f"`pip install --no-build-isolation -e .` or `make install`")
    return _reason


def build_info() -> str:
    """"cpu" or "cpu,cuda": the dispatch keys compiled into snnsparse._C ("" if not loaded)."""
    if load() is not None:
        return ""
    import torch
    return torch.ops.snnsparse.build_info()


def cpu_isa_compiled() -> str:
    """Comma list of the CPU kernel variants compiled into snnsparse._C, widest first
    ("avx512,avx2,generic" for the portable x86-64 build; "" if not loaded)."""
    if load() is not None:
        return ""
    import torch
    return torch.ops.snnsparse.cpu_isa_compiled()


def cpu_march() -> str:
    """The -march snnsparse._C was built with (SNNSPARSE_MARCH, e.g. "native"); "" for the portable
    default build or when it is not loaded."""
    if load() is not None:
        return ""
    import torch
    return torch.ops.snnsparse.cpu_march()
