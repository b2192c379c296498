"""Registers, once, the fake kernels and autograd of every snnsparse:: op (schemas: csrc/registration.cpp).

One place for all devices: the cpp and cuda backends share these registrations (pytorch/extension-cpp
style: schema once, kernels per device, fake + autograd per op). Each op's glue lives in the module
named after it: snnsparse/ops/linear.py, conv2d.py, lif.py, matmul.py.
"""
from __future__ import annotations

import threading

from .. import _ext

_lock = threading.Lock()
_done = False


def ensure_registered() -> None:
    """Import snnsparse._C and register fakes and autograd (no-op when already done or _C is missing)."""
    global _done
    with _lock:
        if _done or _ext.load() is not None:
            return
        from . import conv2d, lif, linear, matmul
        for mod in (linear, conv2d, lif, matmul):
            mod.register()
        _done = True


def require_cpp(what: str) -> None:
    """Load snnsparse._C (and the registrations) before `what` calls an op directly; raise with the
    reason when the extension is missing."""
    ensure_registered()
    reason = _ext.load()
    if reason:
        raise RuntimeError(f"{what} needs the C++ extension: {reason}")
