"""Registers, once, the fake kernels and autograd of every snnsparse:: op (schemas: csrc/registration.cpp).

One place for all devices: the cpp and cuda backends share these registrations (pytorch/extension-cpp
style: schema once, kernels per device, fake + autograd per op). Each op's glue lives in the module
named after it: snnsparse/ops/linear.py, conv2d.py, lif.py, matmul.py, pool.py.
"""
from __future__ import annotations

import threading

import torch

from .. import _ext

_lock = threading.Lock()
_done = False


def ensure_registered() -> None:
    """Import snnsparse._C and register fakes and autograd (no-op when already done or _C is missing)."""
    global _done
    with _lock:
        if _done or _ext.load() is not None:
            return
        from . import conv2d, lif, linear, matmul, pool
        for mod in (linear, conv2d, lif, matmul, pool):
            mod.register()
        _done = True


def require_cpp(what: str) -> None:
    """Load snnsparse._C (and the registrations) before `what` calls an op directly; raise with the
    reason when the extension is missing."""
    ensure_registered()
    reason = _ext.load()
    if reason:
        raise RuntimeError(f"{what} needs the C++ extension: {reason}")


def _wants_grad(a) -> bool:
    if isinstance(a, torch.Tensor):
        return a.requires_grad
    return isinstance(a, (list, tuple)) and any(isinstance(t, torch.Tensor) and t.requires_grad for t in a)


def call(op, *args):
    """op(*args), below its autograd kernel where no argument can need a gradient (grad mode off, or no
    tensor argument requires one): the torch.library autograd wrapper (Python) would only forward the
    call there, at about 7 us a call (spike_conv2d_fwd_packed on a tiny input, 2 threads: 15.8 -> 9.2
    us), which whole optimized models pay on every conv, linear and neuron. The result is the same
    tensors either way; with a gradient to track the call goes through autograd as usual. The guard is
    the one torch's own wrapper enters (torch/_library/autograd.py). Under torch.compile the op is called
    as it is: Dynamo cannot trace the guard (a graph break, an error with fullgraph=True), and the
    compiled graph has no per-call wrapper to skip."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(_wants_grad(a) for a in args)):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)
