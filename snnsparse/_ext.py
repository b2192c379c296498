"""Loading the compiled extension snnsparse._C (op schemas + CPU/CUDA kernels).

`import snnsparse` never fails because of it: load() returns the reason instead, and
ss.backends.available() reports it for "cpp" and "cuda".
"""
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
            _reason = (f"the C++ extension snnsparse._C could not be loaded ({e}); build it with "
                       f"`pip install --no-build-isolation -e .` or `make install`")
    return _reason


def build_info() -> str:
    """"cpu" or "cpu,cuda": the dispatch keys compiled into snnsparse._C ("" if not loaded)."""
    if load() is not None:
        return ""
    import torch
    return torch.ops.snnsparse.build_info()
