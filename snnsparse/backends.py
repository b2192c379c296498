"""Backend registry: which kernel implementation runs an op.

Backends: "reference" (pure torch, the test oracle), "cpp" (CPU, OpenMP; snnsparse._C),
"cuda" (snnsparse._C built with CUDA), "triton" (kernels/, GPU; CPU only under
TRITON_INTERPRET=1 and only when asked for explicitly).

Precedence: explicit ``backend=`` > ``use(...)`` context > env SNNSPARSE_BACKEND > "auto".
Auto picks cuda/triton for CUDA tensors and cpp for CPU tensors, else reference, and falls
back silently; an explicit request for a missing backend raises BackendUnavailable with the reason.

A backend module implements (inputs already validated and flattened by snnsparse.functional):
    spike_linear(x[N,K], weight[M,K], bias[M]|None, mask[M,K] bool|None, *, count, dense_weight_grad)
        -> (out[N,M], n_acc int64 0-dim tensor | None)
    spike_conv2d(x[N,C,H,W], weight, bias, mask, stride, padding, dilation, groups, *, count,
                 dense_weight_grad) -> (out[N,O,Ho,Wo], n_acc | None)
    lif(x_seq[T,N], v0[N], tau, v_threshold, v_reset, decay_input, detach_reset, surrogate,
        alpha, return_h) -> (spikes[T,N], v_last[N], h_seq[T,N] | None)
    spike_matmul(a[Bt,M,K], b[Bt,K,N], binary "both"|"a"|"b", *, count) -> (out[Bt,M,N], n_acc | None)
    supports(device: torch.device) -> True or a reason string
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
from typing import Callable, Dict, Optional, Union

import torch

NAMES = ("reference", "cpp", "cuda", "triton")
ENV_VAR = "SNNSPARSE_BACKEND"

_MODULES = {
    "reference": "snnsparse.ops.reference",
    "cpp": "snnsparse.ops.cpp",
    "cuda": "snnsparse.ops.cuda",
    "triton": "snnsparse.ops.triton",
}
_loaded: Dict[str, object] = {}
_errors: Dict[str, str] = {}
_state = threading.local()
# Optional rule (set by snnsparse.ops.cuda) choosing between cuda and triton for CUDA tensors:
# gpu_rule(op_name, **shape_info) -> "cuda" | "triton".
gpu_rule: Optional[Callable[..., str]] = None


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why."""


def _load(name: str):
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {_errors[name]}")
    try:
        mod = importlib.import_module(_MODULES[name])
        reason = mod.unavailable_reason() if hasattr(mod, "unavailable_reason") else None
    except Exception as e:  # a missing extension or triton must not break `import snnsparse`
        reason = f"{type(e).__name__}: {e}"
    if reason:
        _errors[name] = reason
        raise BackendUnavailable(f"backend {name!r} is unavailable: {reason}")
    _loaded[name] = mod
    return mod


def get(name: str):
    """The backend module called `name`; raises BackendUnavailable with the reason."""
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {NAMES} or 'auto', got {name!r}")
    return _load(name)


def available() -> Dict[str, Union[bool, str]]:
    """dict: backend name -> True, or the reason it is missing."""
    out: Dict[str, Union[bool, str]] = {}
    for name in NAMES:
        try:
            _load(name)
            out[name] = True
        except BackendUnavailable:
            out[name] = _errors[name]
    return out


@contextlib.contextmanager
def use(name: str):
    """Context manager: run snnsparse ops in this block on backend `name` (or "auto")."""
    if name != "auto":
        get(name)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def requested(backend: str = "auto") -> str:
    """The backend name in force for a call: argument > use() > env > auto."""
    if backend and backend != "auto":
        return backend
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    return os.environ.get(ENV_VAR, "auto") or "auto"


def _try(name: str, device: torch.device):
    try:
        mod = _load(name)
    except BackendUnavailable:
        return None
    return mod if mod.supports(device) is True else None


def resolve(backend: str, device: torch.device, op: str = "", **shape_info):
    """(name, module) of the backend that runs `op` on tensors of `device`."""
    name = requested(backend)
    if name != "auto":
        mod = get(name)
        ok = mod.supports(device)
        if ok is not True:
            raise BackendUnavailable(f"backend {name!r} cannot run on {device}: {ok}")
        return name, mod
    if device.type == "cuda":
        order = ["cuda", "triton"]
        _try("cuda", device)  # importing snnsparse.ops.cuda installs gpu_rule
        if gpu_rule is not None and op:
            first = gpu_rule(op, **shape_info)
            order.sort(key=lambda n: n != first)
    elif device.type == "cpu":
        order = ["cpp"]
    else:
        order = []
    for cand in order + ["reference"]:
        mod = _try(cand, device)
        if mod is not None:
            return cand, mod
    raise BackendUnavailable(f"no backend can run on {device}")


def check_name(backend, owner: str, *, dense: bool = False) -> str:
    """Refuse a backend name that no call could ever accept. Valid: snnsparse.NAMES, "auto", and
    (dense=True: Spike* layers and convert) "dense". Only the name is checked here; modules and
    convert use check_usable, which also refuses a backend that cannot run here."""
    valid = tuple(NAMES) + ("auto",) + (("dense",) if dense else ())
    if not isinstance(backend, str):
        raise TypeError(f"{owner}: backend must be a str, one of {valid}, got {type(backend).__name__}")
    if backend not in valid:
        hint = ("; 'dense' is a SpikeLinear/SpikeConv2d setting (plain torch for those layers), a LIF always "
                "runs a kernel backend" if backend == "dense" else "")
        raise ValueError(f"{owner}: backend must be one of {valid}, got {backend!r}{hint}")
    return backend


def check_usable(backend, owner: str, *, dense: bool = False) -> str:
    """check_name, then refuse (BackendUnavailable, with the reason) a named backend that cannot run
    here, so that a module is refused when it is built, not at its first forward. Only the named
    backend is probed ("triton" imports triton, which takes seconds, only when it is named). A model
    meant to run elsewhere is built with "auto" (cuda/triton for CUDA tensors, cpp for CPU tensors),
    or its layers' `backend` attribute is set where it runs; unpickling and deepcopy do not re-check."""
    check_name(backend, owner, dense=dense)
    if backend in NAMES:
        try:
            get(backend)
        except BackendUnavailable as e:
            raise BackendUnavailable(f"{owner}: {e}") from None
    return backend
