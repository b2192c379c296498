"""Public functional API: validate -> pick backend -> call op.

Spikes are time-major [T, B, ...] (SpikingJelly's multi-step convention) or flat [N, ...];
weights have torch's layout; `mask` is a bool tensor of the weight's shape (True = keep).
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Optional, Tuple, Union

import torch

from . import backends
from .ops import surrogate as _surrogate
from .ops.conv2d import output_size as _conv2d_output_size

try:  # numpy is optional for torch; accept its bool where it exists (e.g. values read from arrays)
    import numpy as _np
    _BOOLS: tuple = (bool, _np.bool_)
except ImportError:  # pragma: no cover
    _BOOLS = (bool,)

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_SPIKE_DTYPES = _FLOATS + (torch.bool, torch.uint8)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # True is an int to Python, never a stride


def _pair(v, name, op):
    if _int(v):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(_int(i) for i in v):
        return tuple(v)
    raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")


# -- argument checks shared by the functional API, the modules' and pruners' constructors and the CLI --
def _bounds_text(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi:g}"
    return ""


def _fail(exc, where, name, expected, value):
    prefix = f"{where}: " if where else ""
    subject = f"{name} must be" if name else "must be"
    raise exc(f"{prefix}{subject} {expected}, got {value!r}")


def check_real(value, name: Optional[str] = None, *, lo=None, hi=None, lo_open: bool = False,
               hi_open: bool = False, or_none: bool = False, where: Optional[str] = None) -> Optional[float]:
    """`value` as a float when it is a finite real number (not a bool) within the bounds (or None,
    returned as is, with or_none=True).

    TypeError for a non-number (a str, a bool, a tensor), ValueError for NaN, infinity or a value out of
    range; the one-line message names `where` (the function or class) and the argument `name`.
    """
    if or_none and value is None:
        return None
    expected = "a finite number" + _bounds_text(lo, hi, lo_open, hi_open) + (" or None" if or_none else "")
    # bool is an int subclass: True as a threshold or a learning rate is a mistake, not 1.0
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        _fail(TypeError, where, name, expected, value)
    v = float(value)
    if (not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo))
            or (hi is not None and (v >= hi if hi_open else v > hi))):
        _fail(ValueError, where, name, expected, value)
    return v


def check_int(value, name: Optional[str] = None, *, lo=None, where: Optional[str] = None) -> int:
    """`value` as an int when it is an integer (not a bool, not a float) >= lo; TypeError / ValueError."""
    expected = "an integer" + _bounds_text(lo, None, False, False)
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        _fail(TypeError, where, name, expected, value)
    if lo is not None and value < lo:
        _fail(ValueError, where, name, expected, value)
    return int(value)


def check_bool(value, name: Optional[str] = None, *, where: Optional[str] = None) -> bool:
    """`value` when it is a bool (or numpy bool); TypeError otherwise: a truthy string such as 'no'
    would silently mean True."""
    if not isinstance(value, _BOOLS):
        _fail(TypeError, where, name, "a bool (True or False)", value)
    return bool(value)


class NonBinarySpikesError(ValueError):
    """An event-driven op was given spikes that are not all 0 or 1 (the message names the op and a value)."""


def is_binary(x: torch.Tensor) -> bool:
    """True when every element of x is 0 or 1 (bool and empty tensors are binary)."""
    if x.dtype == torch.bool or x.numel() == 0:
        return True
    return bool(((x == 0) | (x == 1)).all())


def as_float_input(x, dtype: torch.dtype):
    """bool / uint8 input (spikes stored compactly, or uint8 pixels) as `dtype` for F.linear / F.conv2d,
    which refuse mixed dtypes; anything else unchanged."""
    if isinstance(x, torch.Tensor) and x.dtype in (torch.bool, torch.uint8):
        return x.to(dtype)
    return x


def _check_tensor(t, name, op):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _check_binary(spikes: torch.Tensor, op: str):
    if spikes.dtype == torch.bool or spikes.numel() == 0:
        return
    bad = (spikes != 0) & (spikes != 1)
    if bool(bad.any()):
        value = spikes[bad].flatten()[0].item()
        raise NonBinarySpikesError(f"{op}: spikes must be binary (0 or 1) for an event-driven kernel; found value "
                         f"{value!r}. Use the dense layer (or torch.nn.functional) for non-binary input.")


def _common(op, spikes, weight, bias, mask, weight_rank):
    _check_tensor(spikes, "spikes", op)
    _check_tensor(weight, "weight", op)
    if weight.dtype not in _FLOATS:
        raise TypeError(f"{op}: weight must be floating point (float32/float64/float16/bfloat16), got {weight.dtype}")
    if weight.dim() != weight_rank:
        raise ValueError(f"{op}: weight must have rank {weight_rank}, got shape {tuple(weight.shape)}")
    if spikes.dtype not in _SPIKE_DTYPES:
        raise TypeError(f"{op}: spikes must be float, bool or uint8, got {spikes.dtype}")
    if spikes.device != weight.device:
        raise ValueError(f"{op}: spikes is on {spikes.device} but weight is on {weight.device}")
    if spikes.is_floating_point() and spikes.dtype != weight.dtype:
        raise TypeError(f"{op}: spikes dtype {spikes.dtype} does not match weight dtype {weight.dtype}")
    if bias is not None:
        _check_tensor(bias, "bias", op)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.device != weight.device or bias.dtype != weight.dtype:
            raise TypeError(f"{op}: bias must match weight's dtype and device ({weight.dtype}, {weight.device}), "
                            f"got ({bias.dtype}, {bias.device})")
    if mask is not None:
        _check_tensor(mask, "mask", op)
        if mask.dtype != torch.bool:
            raise TypeError(f"{op}: mask must be a bool tensor (True = keep), got {mask.dtype}")
        if mask.shape != weight.shape:
            raise ValueError(f"{op}: mask must have the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
        if mask.device != weight.device:
            raise ValueError(f"{op}: mask is on {mask.device} but weight is on {weight.device}")
    return spikes


def _spikes_for(impl, x, dtype):
    """x as backend `impl` takes it: bool / uint8 spikes stay bytes where its kernels read them as they
    are (BYTE_SPIKES: the cpp kernels, no float copy of the input), else they become `dtype` floats."""
    if x.is_floating_point() or x.dtype in getattr(impl, "BYTE_SPIKES", ()):
        return x
    return x.to(dtype)


def _run(op, impl, fn, x, *args, **kwargs):
    """Call backend op `fn`, making sure non-binary spikes are refused with the op's name.

    Backends whose kernels check binarity while they pack the spikes (CHECKS_BINARY = True; the
    cpp kernels do it in the same pass, at no measurable cost) skip the separate Python pass,
    which on a 32 MiB input costs 10-14 ms, as much as the sparse kernel itself (bench/RESULTS.md).
    """
    if not getattr(impl, "CHECKS_BINARY", False):
        _check_binary(x, op)
        return fn(x, *args, **kwargs)
    try:
        return fn(x, *args, **kwargs)
    except ValueError as e:
        msg = str(e)
        if "spikes must be binary" not in msg:
            raise
        raise NonBinarySpikesError(f"{op}: " + msg[msg.index("spikes must be binary"):].split("\n")[0]) from None


def _result(out, n, return_count):
    if return_count:
        return out, (0 if n is None else int(n))
    return out


class _ZeroSum(torch.autograd.Function):
    """The synaptic sum of a problem with nothing to sum (no inputs, no input features or no outputs):
    zeros of `shape`, with the zero gradients w.r.t. spikes and weight that torch's ops give."""

    @staticmethod
    def forward(ctx, x, weight, shape):
        ctx.x_meta = (x.shape, x.dtype, x.device)
        ctx.w_meta = (weight.shape, weight.dtype, weight.device)
        return torch.zeros(shape, dtype=weight.dtype, device=weight.device)

    @staticmethod
    def backward(ctx, grad):
        (xs, xd, xdev), (ws, wd, wdev) = ctx.x_meta, ctx.w_meta
        return torch.zeros(xs, dtype=xd, device=xdev), torch.zeros(ws, dtype=wd, device=wdev), None


def _empty_result(op, x, weight, bias, shape, lead, return_count):
    """Output of an op whose problem is empty, computed here for every backend alike (the kernels'
    reshapes and launches are not all defined for zero sizes): 0 + bias of the flat `shape`
    [N, out, ...] reshaped to [*lead, out, ...], with torch's gradients (the bias gets the summed
    output gradient), and a count of 0 accumulations."""
    _check_binary(x, op)  # still an event-driven op: a non-binary input is refused as always
    out = _ZeroSum.apply(x, weight, shape)
    if bias is not None:
        out = out + bias.view(-1, *([1] * (len(shape) - 2)))
    return _result(out.reshape(*lead, *shape[1:]), None, return_count)


def spike_linear(spikes: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                 mask: Optional[torch.Tensor] = None, backend: str = "auto", return_count: bool = False,
                 dense_weight_grad: bool = False):
    """Event-driven ``F.linear(spikes, weight*mask, bias)`` for binary spikes.

    spikes [..., K] (e.g. [T, B, K]) of 0/1 values; weight [M, K]; bias [M]; mask [M, K] bool.
    Returns [..., M]; with return_count=True, (out, accumulations executed by the kernel).
    dense_weight_grad=True gives dL/dweight for pruned entries too (Grad R needs it).
    """
    op = "spike_linear"
    check_bool(return_count, "return_count", where=op)
    check_bool(dense_weight_grad, "dense_weight_grad", where=op)
    spikes = _common(op, spikes, weight, bias, mask, 2)
    if spikes.dim() < 1 or spikes.shape[-1] != weight.shape[1]:
        raise ValueError(f"{op}: spikes must have shape [..., {weight.shape[1]}] (weight is "
                         f"{tuple(weight.shape)}), got {tuple(spikes.shape)}")
    lead = spikes.shape[:-1]
    m, k = weight.shape
    x = spikes.reshape(math.prod(lead), k)  # not -1: that is ambiguous for 0 elements (K = 0)
    name, impl = backends.resolve(backend, x.device, op, n=x.shape[0], k=k, m=m)
    x = _spikes_for(impl, x, weight.dtype)
    if x.shape[0] == 0 or k == 0 or m == 0:
        return _empty_result(op, x, weight, bias, (x.shape[0], m), lead, return_count)
    out, n = _run(op, impl, impl.spike_linear, x, weight, bias, mask, count=return_count,
                  dense_weight_grad=dense_weight_grad)
    return _result(out.reshape(*lead, weight.shape[0]), n, return_count)


# torch's conv output-size formula, written once (snnsparse/ops/conv2d.py) for every backend.
conv2d_output_size = _conv2d_output_size


def spike_conv2d(spikes: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 stride: Union[int, Tuple[int, int]] = 1, padding: Union[int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1, groups: int = 1, *,
                 mask: Optional[torch.Tensor] = None, backend: str = "auto", return_count: bool = False,
                 dense_weight_grad: bool = False):
    """Event-driven ``F.conv2d(spikes, weight*mask, bias, ...)`` for binary spikes.

    spikes [T, B, Cin, H, W] or [N, Cin, H, W]; weight [Cout, Cin/groups, kh, kw]; mask like weight.
    Returns [T, B, Cout, Ho, Wo] or [N, Cout, Ho, Wo]; with return_count=True also the number of
    accumulations the kernel executed.
    """
    op = "spike_conv2d"
    check_bool(return_count, "return_count", where=op)
    check_bool(dense_weight_grad, "dense_weight_grad", where=op)
    spikes = _common(op, spikes, weight, bias, mask, 4)
    stride, padding, dilation = (_pair(stride, "stride", op), _pair(padding, "padding", op),
                                 _pair(dilation, "dilation", op))
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"{op}: stride and dilation must be >= 1 and padding >= 0, got stride={stride}, "
                         f"padding={padding}, dilation={dilation}")
    if not _int(groups) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    if spikes.dim() not in (4, 5):
        raise ValueError(f"{op}: spikes must be [T, B, C, H, W] or [N, C, H, W], got shape {tuple(spikes.shape)}")
    cout, cin_g, kh, kw = weight.shape
    cin = spikes.shape[-3]
    if kh < 1 or kw < 1:
        raise ValueError(f"{op}: weight has an empty kernel {kh}x{kw} (shape {tuple(weight.shape)}); "
                         f"torch's conv2d needs a kernel of at least 1x1")
    if cout % groups != 0:
        raise ValueError(f"{op}: weight has {cout} output channels, not divisible by groups={groups}")
    if cin != cin_g * groups:
        raise ValueError(f"{op}: spikes has {cin} channels but weight expects in_channels = "
                         f"{cin_g} x groups {groups} = {cin_g * groups}")
    h, w = spikes.shape[-2:]
    ho, wo = conv2d_output_size(h, w, (kh, kw), stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"{op}: input {h}x{w} is smaller than the dilated kernel after padding "
                         f"(kernel {kh}x{kw}, padding {padding}, dilation {dilation})")
    lead = spikes.shape[:-3]
    n_img = math.prod(lead)
    if (h == 0 or w == 0) and n_img > 0 and cin > 0:
        # torch's conv2d refuses this too ("Only zero batch or zero channel inputs are supported")
        raise ValueError(f"{op}: spikes has an empty image {h}x{w}; an empty image is only accepted with an "
                         f"empty batch or zero channels, got shape {tuple(spikes.shape)}")
    x = spikes.reshape(n_img, cin, h, w)  # not -1: that is ambiguous for 0 elements (Cin = 0, H = 0)
    name, impl = backends.resolve(backend, x.device, op, n=n_img, cin=cin, cout=cout, h=h, w=w,
                                  kh=kh, kw=kw, groups=groups)
    x = _spikes_for(impl, x, weight.dtype)
    if n_img == 0 or cin == 0 or cout == 0:
        # Cin = 0 gives bias-only outputs of Cout channels, like spike_linear with K = 0 (torch's conv2d
        # returns a [N, 0, Ho, Wo] tensor there, dropping the bias), and Cout = 0 an empty
        # [N, 0, Ho, Wo] output (where torch's conv2d raises).
        return _empty_result(op, x, weight, bias, (n_img, cout, ho, wo), lead, return_count)
    out, n = _run(op, impl, impl.spike_conv2d, x, weight, bias, mask, stride, padding, dilation, groups,
                  count=return_count, dense_weight_grad=dense_weight_grad)
    return _result(out.reshape(*lead, cout, ho, wo), n, return_count)


_CHARGE_OP = {"lif": "lif", "if": "if_neuron", "plif": "plif"}  # charge -> the public function's name


# The scalar arguments' checks, remembered for plain Python scalars: a fused neuron checks the same
# (tau, threshold, reset, surrogate, ...) on every call, 3.7 us of a 76 us LIF call on a tiny input (2 threads,
# EPYC AVX2 host, 2026-12-02). The key is the values with their exact types, so True and 1, or 2 and 2.0,
# are told apart (the checks refuse a bool where a number goes); anything else (a tensor, which can change
# in place, a numpy number) is checked on every call. A call that raises is not remembered.
_PLAIN_SCALARS = (float, int, bool, str, type(None))


@functools.lru_cache(maxsize=256)
def _lif_scalars_typed(key):
    return _lif_scalars(*(v for _, v in key))


def _lif_scalars(charge, tau, v_threshold, v_reset, surrogate, alpha, decay_input, detach_reset):
    op = _CHARGE_OP[charge]
    if charge == "lif":
        tau = check_real(tau, "tau", where=op)
        if tau <= 1.0:
            raise ValueError(f"{op}: tau must be > 1 (as in SpikingJelly's LIFNode), got {tau}")
    v_threshold = check_real(v_threshold, "v_threshold", where=op)
    v_reset = check_real(v_reset, "v_reset", or_none=True, where=op)   # None: soft reset
    check_bool(decay_input, "decay_input", where=op)
    check_bool(detach_reset, "detach_reset", where=op)
    if not isinstance(surrogate, str):
        raise TypeError(f"{op}: surrogate must be a name (str) among {_surrogate.NAMES}, got {surrogate!r}")
    check_real(alpha, "alpha", lo=0, lo_open=True, or_none=True, where=op)  # None: the surrogate's default
    surrogate, alpha = _surrogate.check(surrogate, alpha)
    return tau, v_threshold, v_reset, surrogate, alpha


def _lif_args(x_seq, v0, tau, v_threshold, v_reset, surrogate, alpha, decay_input=True, detach_reset=False, *,
              charge="lif"):
    op = _CHARGE_OP[charge]
    _check_tensor(x_seq, "x_seq", op)
    if x_seq.dtype not in _FLOATS:
        raise TypeError(f"{op}: x_seq must be floating point, got {x_seq.dtype}")
    if x_seq.dim() < 1:
        raise ValueError(f"{op}: x_seq must be time-major [T, ...], got a 0-dim tensor")
    scalars = (charge, tau, v_threshold, v_reset, surrogate, alpha, decay_input, detach_reset)
    if all(type(v) in _PLAIN_SCALARS for v in scalars):
        _, _, _, surrogate, alpha = _lif_scalars_typed(tuple((type(v), v) for v in scalars))
        # the floats from the values themselves, not the cache: -0.0 and 0.0 are one key
        tau = float(tau) if charge == "lif" else tau
        v_threshold, v_reset = float(v_threshold), (None if v_reset is None else float(v_reset))
    else:
        tau, v_threshold, v_reset, surrogate, alpha = _lif_scalars(*scalars)
    if v0 is not None:
        _check_tensor(v0, "v0", op)
        if v0.shape != x_seq.shape[1:]:
            raise ValueError(f"{op}: v0 must have shape {tuple(x_seq.shape[1:])} (x_seq without T), "
                             f"got {tuple(v0.shape)}")
        if v0.device != x_seq.device or v0.dtype != x_seq.dtype:
            raise TypeError(f"{op}: v0 must match x_seq's dtype and device ({x_seq.dtype}, {x_seq.device}), "
                            f"got ({v0.dtype}, {v0.device})")
    return tau, v_threshold, v_reset, surrogate, alpha


def check_plif_w(w, where: str = "plif", device=None) -> None:
    """ParametricLIF's w (k = sigmoid(w)): a 0-dim floating tensor (on `device` when given)."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{where}: w must be a 0-dim floating tensor (the learnable parameter, k = sigmoid(w)), "
                        f"got {type(w).__name__}")
    if not w.is_floating_point() or w.dim() != 0:
        raise ValueError(f"{where}: w must be a 0-dim floating tensor (SpikingJelly's ParametricLIFNode.w), "
                         f"got {w.dtype} of shape {tuple(w.shape)}")
    if device is not None and w.device != device:
        raise TypeError(f"{where}: w must be on x_seq's device ({device}), got {w.device}")


def neuron_with_h(x_seq, v0=None, *, charge="lif", tau=2.0, w=None, v_threshold=1.0, v_reset=0.0,
                  decay_input=True, detach_reset=False, surrogate="sigmoid", alpha=None, backend="auto",
                  return_h=False, spike_dtype=None):
    """The one path of every fused neuron (lif, if_neuron, plif and the ss.nn modules): validate, pick the
    backend, run the lif op with `charge` ("lif": tau; "if"; "plif": k = sigmoid(w), differentiable in w).
    Returns (spike_seq [T, ...], v_last [...], h_seq [T, ...] or None unless return_h)."""
    if charge not in _CHARGE_OP:
        raise ValueError(f"neuron: charge must be one of {tuple(_CHARGE_OP)}, got {charge!r}")
    tau, v_threshold, v_reset, surrogate, alpha = _lif_args(x_seq, v0, tau, v_threshold, v_reset, surrogate,
                                                            alpha, decay_input, detach_reset, charge=charge)
    k = None
    if charge == "plif":
        check_plif_w(w, _CHARGE_OP[charge], x_seq.device)
        # SpikingJelly's k: w.float().sigmoid() for half w, w.sigmoid() otherwise (cast to x_seq's dtype later)
        k = torch.sigmoid(w.float() if w.dtype in (torch.float16, torch.bfloat16) else w)
    elif w is not None:
        raise ValueError(f"{_CHARGE_OP[charge]}: w is read only by charge 'plif'")
    if charge != "lif":
        tau = 0.0  # not read
    shape = x_seq.shape
    t = shape[0]
    x = x_seq.reshape(t, math.prod(shape[1:]))
    if v0 is None:
        v = torch.full((x.shape[1],), 0.0 if v_reset is None else v_reset, dtype=x.dtype, device=x.device)
    else:
        v = v0.reshape(-1)
    name, impl = backends.resolve(backend, x.device, "lif", t=t, n=x.shape[1])
    s, v_last, h = impl.lif(x, v, tau, v_threshold, v_reset, bool(decay_input), bool(detach_reset),
                            surrogate, alpha, return_h, charge=charge, k=k, spike_dtype=spike_dtype)
    return s.reshape(shape), v_last.reshape(shape[1:]), (None if h is None else h.reshape(shape))


def lif_with_h(x_seq, v0=None, *, tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True,
               detach_reset=False, surrogate="sigmoid", alpha=None, backend="auto", return_h=False):
    """lif() that also returns h_seq [T, ...], the pre-fire membrane potential (None unless return_h)."""
    return neuron_with_h(x_seq, v0, charge="lif", tau=tau, v_threshold=v_threshold, v_reset=v_reset,
                         decay_input=decay_input, detach_reset=detach_reset, surrogate=surrogate, alpha=alpha,
                         backend=backend, return_h=return_h)


def if_neuron(x_seq: torch.Tensor, v0: Optional[torch.Tensor] = None, *, v_threshold: float = 1.0,
              v_reset: Optional[float] = 0.0, detach_reset: bool = False, surrogate: str = "sigmoid",
              alpha: Optional[float] = None, backend: str = "auto"):
    """Multi-step integrate-and-fire neuron (SpikingJelly IFNode, step_mode="m"), fused over time:
    H[t] = V[t-1] + X[t]; fire and reset as lif(). Returns (spike_seq [T, ...], v_last [...])."""
    s, v, _ = neuron_with_h(x_seq, v0, charge="if", v_threshold=v_threshold, v_reset=v_reset,
                            detach_reset=detach_reset, surrogate=surrogate, alpha=alpha, backend=backend)
    return s, v


def plif(x_seq: torch.Tensor, w: torch.Tensor, v0: Optional[torch.Tensor] = None, *, decay_input: bool = True,
         v_threshold: float = 1.0, v_reset: Optional[float] = 0.0, detach_reset: bool = False,
         surrogate: str = "sigmoid", alpha: Optional[float] = None, backend: str = "auto"):
    """Multi-step parametric LIF neuron (SpikingJelly ParametricLIFNode, step_mode="m"), fused over time.
    w is the learnable 0-dim parameter, k = sigmoid(w) = 1/tau:
    H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) * k  (decay_input=False: V[t-1] - (V[t-1] - V_reset) * k + X[t]);
    fire and reset as lif(). Differentiable in x_seq, v0 and w. Returns (spike_seq [T, ...], v_last [...])."""
    s, v, _ = neuron_with_h(x_seq, v0, charge="plif", w=w, v_threshold=v_threshold, v_reset=v_reset,
                            decay_input=decay_input, detach_reset=detach_reset, surrogate=surrogate, alpha=alpha,
                            backend=backend)
    return s, v


def lif(x_seq: torch.Tensor, v0: Optional[torch.Tensor] = None, *, tau: float = 2.0,
        v_threshold: float = 1.0, v_reset: Optional[float] = 0.0, decay_input: bool = True,
        detach_reset: bool = False, surrogate: str = "sigmoid", alpha: Optional[float] = None,
        backend: str = "auto"):
    """Multi-step LIF neuron (SpikingJelly LIFNode, step_mode="m"), fused over time.

    x_seq [T, ...] input current; v0 [...] initial potential (None: v_reset, or 0 for soft reset).
    v_reset=None is a soft reset. alpha=None takes the surrogate's SpikingJelly default
    (sigmoid 4, atan 2, piecewise_quadratic 1, soft_sign 2, erf 2).
    Returns (spike_seq [T, ...], v_last [...]).
    """
    s, v, _ = lif_with_h(x_seq, v0, tau=tau, v_threshold=v_threshold, v_reset=v_reset,
                         decay_input=decay_input, detach_reset=detach_reset, surrogate=surrogate,
                         alpha=alpha, backend=backend)
    return s, v


# -- spike_matmul / sdsa (spiking transformers) -------------------------------------------------------------
_MATMUL_BINARY = ("auto", "both", "a", "b")
_INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _matmul_dtype(op, a, b, binary):
    """The result's floating dtype; TypeError for an operand dtype the op cannot take."""
    for t, name, spikes in ((a, "a", binary in ("both", "a")), (b, "b", binary in ("both", "b"))):
        ok = _SPIKE_DTYPES if spikes else _FLOATS + _INTS + (torch.bool,)
        if t.dtype not in ok:
            what = "a spike operand (float, bool or uint8)" if spikes else "floating point, integer or bool"
            raise TypeError(f"{op}: {name} must be {what}, got {t.dtype}")
    floats = {t.dtype for t in (a, b) if t.is_floating_point()}
    if len(floats) > 1:
        raise TypeError(f"{op}: a ({a.dtype}) and b ({b.dtype}) must have the same floating dtype")
    return floats.pop() if floats else torch.float32


def _check_operand_binary(t: torch.Tensor, name: str, op: str):
    if t.dtype == torch.bool or t.numel() == 0:
        return
    bad = (t != 0) & (t != 1)
    if bool(bad.any()):
        value = t[bad].flatten()[0].item()
        raise NonBinarySpikesError(f"{op}: {name} is declared binary but holds the value {value!r} (spikes must "
                                   f"be 0 or 1); declare only the spike operand(s) with binary=, or use "
                                   f"torch.matmul for two non-binary operands")


def spike_matmul(a: torch.Tensor, b: torch.Tensor, *, binary: str = "auto", backend: str = "auto",
                 return_count: bool = False):
    """``torch.matmul(a, b)`` where one or both operands are spikes (values 0 or 1).

    a [..., M, K], b [..., K, N] (both at least 2-D; the batch dims broadcast as in torch.matmul, e.g.
    [T, B, heads]); returns [..., M, N].

    binary names the spike operands:
      * "both": binary x binary (Q @ K^T): AND + popcount on bit-packed rows of a and columns of b; the
        result holds the integer coincidence counts;
      * "a" / "b": that operand is binary, the other holds any values (integer or float, e.g. (Q K^T) @ V
        with binary="b"): event-driven accumulation over the spikes, no multiplication;
      * "auto" (default): decided by scanning both operands for values other than 0 and 1 (one extra pass
        over each; name the operands to skip it). Raises NonBinarySpikesError if neither is binary.
    A declared binary operand holding any other value raises NonBinarySpikesError naming it: never a
    silent wrong product. Spike operands may be float, bool or uint8, the other operand float, integer or
    bool. The result has the floating dtype of the operands (float32 when neither is floating); integer
    operands are converted to it (exact below 2^24 in float32).

    Gradients (float operands that require grad): the exact gradient of the product, dL/da = g @ b^T and
    dL/db = a^T @ g, binary operands included: the "straight" dense gradient a spike input gets from
    spike_linear too (their producer's surrogate gradient takes it from there).
    return_count=True also returns the number of additions the kernel executed: N per fired a[m, k]
    ("a"), M per fired b[k, n] ("b"), one per coincidence a[m, k] = b[k, n] = 1 ("both").
    """
    op = "spike_matmul"
    check_bool(return_count, "return_count", where=op)
    _check_tensor(a, "a", op)
    _check_tensor(b, "b", op)
    if not isinstance(binary, str) or binary not in _MATMUL_BINARY:
        raise ValueError(f"{op}: binary must be one of {_MATMUL_BINARY}, got {binary!r}")
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"{op}: a and b must be at least 2-D ([..., M, K] and [..., K, N]), got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"{op}: a [..., M, K] and b [..., K, N] must share K, got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{op}: a is on {a.device} but b is on {b.device}")
    try:
        # equal batch dims (the usual [T, B, heads]) skip torch.broadcast_shapes: 50 us a call, a fifth of a
        # [256, 64, 64] bool product's time (cProfile, 2026-12-01)
        batch = a.shape[:-2] if a.shape[:-2] == b.shape[:-2] else torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except RuntimeError:
        raise ValueError(f"{op}: the batch dims of a {tuple(a.shape[:-2])} and b {tuple(b.shape[:-2])} do not "
                         f"broadcast") from None
    if binary == "auto":
        ba, bb = is_binary(a), is_binary(b)
        if not (ba or bb):
            raise NonBinarySpikesError(f"{op}: neither a nor b is binary (0/1); use torch.matmul for two "
                                       f"non-binary operands")
        binary = "both" if ba and bb else ("a" if ba else "b")
    dtype = _matmul_dtype(op, a, b, binary)
    (m, k), n = a.shape[-2:], b.shape[-1]
    bt = math.prod(batch)
    name, impl = backends.resolve(backend, a.device, op, bt=bt, m=m, k=k, n=n)
    # Binary operands stored as bytes (bool/uint8) stay so for backends whose kernels read them
    # (BYTE_SPIKES: 1/4 of the fp32 bytes); everything else becomes the result dtype.
    keep = getattr(impl, "BYTE_SPIKES", ())
    a = a if binary in ("both", "a") and a.dtype in keep else a.to(dtype)
    b = b if binary in ("both", "b") and b.dtype in keep else b.to(dtype)
    # not reshape(-1, ...): ambiguous for 0 elements; expand + reshape copies only where a batch broadcasts
    a3 = a.expand(*batch, m, k).reshape(bt, m, k)
    b3 = b.expand(*batch, k, n).reshape(bt, k, n)
    named = [(a3, "a")] * (binary in ("both", "a")) + [(b3, "b")] * (binary in ("both", "b"))
    if bt == 0 or m == 0 or k == 0 or n == 0:
        for t, nm in named:
            _check_operand_binary(t, nm, op)
        return _result(torch.matmul(a3.to(dtype), b3.to(dtype)).reshape(*batch, m, n), None, return_count)
    if not getattr(impl, "CHECKS_BINARY", False):
        for t, nm in named:
            _check_operand_binary(t, nm, op)
        out, cnt = impl.spike_matmul(a3, b3, binary, count=return_count)
    else:
        try:
            out, cnt = impl.spike_matmul(a3, b3, binary, count=return_count)
        except ValueError as e:
            if "spikes must be binary" not in str(e):
                raise
            for t, nm in named:   # the error path only: name the operand
                _check_operand_binary(t, nm, op)
            raise
    return _result(out.reshape(*batch, m, n), cnt, return_count)


def _sdt_neuron(backend):
    def neuron(x):
        return lif(x, tau=2.0, v_threshold=0.5, v_reset=0.0, detach_reset=True, backend=backend)[0]
    return neuron


def sdsa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, neuron=None, backend: str = "auto"):
    """Spike-driven self-attention of the Spike-driven Transformer (SDT, Yao et al., NeurIPS 2023):

        SDSA(Q, K, V) = Q * SN(SUM_c(K * V))

    K masked by V (an AND of spikes), summed over the tokens (a column sum per channel), turned into spikes
    by the neuron SN, which then masks Q. q, k, v: binary, the same shape [T, ..., N, d] (time first, tokens
    N in dim -2, e.g. [T, B, heads, N, d]). neuron: a callable from the column sum [T, ..., 1, d] to spikes;
    None is SDT's talking-heads neuron: a multi-step LIF over dim 0 (tau 2, v_threshold 0.5, hard reset to 0,
    detach_reset), run by snnsparse.functional.lif on `backend`. Returns [T, ..., N, d] in the floating dtype
    of the inputs (float32 if none is floating).

    Without autograd the masks run on bools (AND, popcount-like column sums, no multiplication); a neuron
    output that is not binary is refused. With autograd (an input requires grad) it is the float product
    above, whose gradient reaches q, k and v straight (as spike_matmul's) and the neuron's surrogate.
    """
    op = "sdsa"
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        _check_tensor(t, name, op)
        if t.dtype not in _SPIKE_DTYPES:
            raise TypeError(f"{op}: {name} must be float, bool or uint8 spikes, got {t.dtype}")
        if t.shape != q.shape or t.device != q.device:
            raise ValueError(f"{op}: q, k and v must have the same shape and device, got {name} "
                             f"{tuple(t.shape)} on {t.device} and q {tuple(q.shape)} on {q.device}")
        _check_operand_binary(t, name, op)
    if q.dim() < 3:
        raise ValueError(f"{op}: q, k, v must be [T, ..., N, d] (at least 3-D), got shape {tuple(q.shape)}")
    if neuron is not None and not callable(neuron):
        raise TypeError(f"{op}: neuron must be a callable (column sum -> spikes) or None, got {neuron!r}")
    floats = {t.dtype for t in (q, k, v) if t.is_floating_point()}
    if len(floats) > 1:
        raise TypeError(f"{op}: q, k and v must share one floating dtype, got {sorted(map(str, floats))}")
    dtype = floats.pop() if floats else torch.float32
    sn = _sdt_neuron(backend) if neuron is None else neuron
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        q, k, v = (t.to(dtype) for t in (q, k, v))
        return q * sn((k * v).sum(-2, keepdim=True))
    with torch.no_grad():
        col = (k.bool() & v.bool()).sum(-2, keepdim=True).to(dtype)      # SUM_c(K AND V), exact integers
        s = sn(col)
        if not isinstance(s, torch.Tensor) or s.shape != col.shape:
            raise ValueError(f"{op}: neuron must return spikes of the column sum's shape {tuple(col.shape)}, got "
                             f"{getattr(s, 'shape', type(s).__name__)}")
        _check_operand_binary(s, "the neuron's output", op)
        return (q.bool() & s.bool()).to(dtype)
