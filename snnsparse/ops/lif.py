"""lif: the glue of the lif ops, one schema in every namespace (csrc/registration.cpp for
snnsparse::, kernels in csrc/cpu/lif.cpp and csrc/cuda/lif.cu; snnsparse_triton:: in
snnsparse/ops/triton.py): one fake, one autograd, and the call every backend makes.

    lif_fwd(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, save_h,
            charge="lif", k=None, spike_dtype=None) -> (spikes, v_last, h_seq)
    lif_bwd(grad_spikes, grad_v_last?, grad_h?, h_seq, tau, v_threshold, v_reset, decay_input,
            detach_reset, surrogate, alpha, charge="lif", k=None, x_seq=None, v0=None)
        -> (grad_x, grad_v0, grad_k)

One op for the neurons of the LIF family: `charge` says how the membrane charges, in SpikingJelly's
float operation order (vr = v_reset, 0 when None):
    "lif"  (LIFNode)            V + (X - (V - vr)) / tau    or, decay_input=False, V - (V - vr) / tau + X
    "if"   (IFNode)             V + X
    "plif" (ParametricLIFNode)  V + (X - (V - vr)) * k      or, decay_input=False, V - (V - vr) * k + X
k = sigmoid(w) is a 0-dim tensor of x_seq's dtype: the op's autograd gives its gradient (the backward
recomputes V[t-1] from h_seq, so the forward's x_seq and v0 are saved for it), and sigmoid's own
backward takes it to w.
"""
from __future__ import annotations

import math

import torch

from .registry import call

CHARGES = ("lif", "if", "plif")  # index = the kernels' charge id (csrc/cpu/kernels.h, lif_kernels.cuh, kernels/lif.py)
_K_INPUT = 11  # position of k among lif_fwd's inputs


def check_charge(op: str, charge: str, tau: float, k, like: torch.Tensor) -> int:
    """The charge id after the checks every backend makes (the C++ ops make the same): tau > 1 for "lif";
    k a 0-dim tensor of `like`'s dtype and device for "plif", None otherwise."""
    if charge not in CHARGES:
        raise ValueError(f"{op}: charge must be one of {CHARGES}, got {charge!r}")
    if charge == "plif":
        if k is None:
            raise ValueError(f"{op}: charge 'plif' needs k (a 0-dim tensor, sigmoid(w))")
        if k.dtype != like.dtype or k.device != like.device:
            raise TypeError(f"{op}: k must match the sequence's dtype and device ({like.dtype}, {like.device}), "
                            f"got ({k.dtype}, {k.device})")
        if k.dim() != 0:
            raise ValueError(f"{op}: k must be a 0-dim tensor, got shape {tuple(k.shape)}")
    elif k is not None:
        raise ValueError(f"{op}: k is read only by charge 'plif'; pass None for charge {charge!r}")
    if charge == "lif" and not (math.isfinite(tau) and tau > 1.0):
        raise ValueError(f"{op}: tau must be > 1, got {tau}")
    return CHARGES.index(charge)


def check_k_grad_inputs(op: str, charge: str, x_seq, v0, h_seq: torch.Tensor) -> bool:
    """True when lif_bwd is to compute the gradient of k (x_seq and v0 given), after checking them."""
    if (x_seq is None) != (v0 is None):
        raise ValueError(f"{op}: x_seq and v0 (for the gradient of k) are given together or not at all")
    if x_seq is None:
        return False
    if charge != "plif":
        raise ValueError(f"{op}: x_seq and v0 are read only for the gradient of k (charge 'plif')")
    if x_seq.shape != h_seq.shape or x_seq.dtype != h_seq.dtype or x_seq.device != h_seq.device:
        raise TypeError(f"{op}: x_seq must match h_seq's shape, dtype and device")
    if v0.shape != h_seq.shape[1:] or v0.dtype != h_seq.dtype or v0.device != h_seq.device:
        raise TypeError(f"{op}: v0 must be [{h_seq.shape[1]}] of h_seq's dtype and device")
    return True


BYTE_SPIKES = (torch.bool, torch.uint8)


def byte_spikes(op: str, spike_dtype, like: torch.Tensor, save_h: bool) -> bool:
    """True when lif_fwd writes its spikes as bytes (spike_dtype bool / uint8), after the checks every
    backend makes (csrc/cpu/lif.cpp makes the same): None or x_seq's dtype means floats; byte spikes
    carry no gradient, so they come without h_seq."""
    if spike_dtype is None or spike_dtype == like.dtype:
        return False
    if spike_dtype not in BYTE_SPIKES:
        raise TypeError(f"{op}: spike_dtype must be None, x_seq's dtype, bool or uint8, got {spike_dtype}")
    if save_h:
        raise ValueError(f"{op}: bool / uint8 spikes have no gradient, so save_h must be false")
    return True


def _fwd_fake(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, save_h,
              charge="lif", k=None, spike_dtype=None):
    h = torch.empty_like(x_seq) if save_h else x_seq.new_empty((0,))
    bytes_ = byte_spikes("lif_fwd", spike_dtype, x_seq, save_h)
    return torch.empty_like(x_seq, dtype=spike_dtype if bytes_ else x_seq.dtype), torch.empty_like(v0), h


def _bwd_fake(grad_spikes, grad_v_last, grad_h, h_seq, tau, v_threshold, v_reset, decay_input, detach_reset,
              surrogate, alpha, charge="lif", k=None, x_seq=None, v0=None):
    gk = h_seq.new_empty(()) if x_seq is not None else h_seq.new_empty((0,))
    return torch.empty_like(h_seq), h_seq.new_empty((h_seq.shape[1],)), gk


def _setup(ctx, inputs, output):
    # Unused output gradients (v_last, h_seq) arrive as None instead of materialised zeros:
    # measured 27 ms of zero fills per step on [8, 64, 16384] otherwise.
    ctx.set_materialize_grads(False)
    x_seq, v0, tau, vth, vreset, decay, detach, sur, alpha, save_h, charge, k, spike_dtype = inputs
    ctx.params = (tau, vth, vreset, decay, detach, sur, alpha, charge)
    # The gradient of k recomputes V[t-1] from h_seq and reads x_seq and v0 (saved by reference: no copy).
    ctx.save_for_backward(output[2], *((k, x_seq, v0) if charge == "plif" else ()))
    if not save_h:  # the empty placeholder; a returned h_seq is differentiable, as in the reference
        ctx.mark_non_differentiable(output[2])


def _backward_for(ns: str):
    def backward(ctx, grad_s, grad_v, grad_h):
        h, *plif = ctx.saved_tensors
        if h.dim() != 2:
            raise RuntimeError(f"{ns}::lif_fwd was called with save_h=False; it cannot be differentiated")
        if grad_s is None:
            grad_s = torch.zeros_like(h)
        k, x_seq, v0 = plif if plif else (None, None, None)
        want_k = k is not None and ctx.needs_input_grad[_K_INPUT]
        gx, gv0, gk = getattr(torch.ops, ns).lif_bwd(grad_s, grad_v, grad_h, h, *ctx.params, k,
                                                     x_seq if want_k else None, v0 if want_k else None)
        return (gx, gv0) + (None,) * 9 + ((gk if want_k else None), None)
    return backward


def register(ns: str = "snnsparse"):
    """Fake kernels and autograd of the lif ops of namespace `ns` (see ops.linear.register)."""
    torch.library.register_fake(f"{ns}::lif_fwd", _fwd_fake)
    torch.library.register_fake(f"{ns}::lif_bwd", _bwd_fake)
    torch.library.register_autograd(f"{ns}::lif_fwd", _backward_for(ns), setup_context=_setup)


def run(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, return_h=False,
        ns: str = "snnsparse", charge: str = "lif", k=None, spike_dtype=None):
    """(spikes [T, N], v_last [N], h_seq [T, N] or None) on the kernels of namespace `ns`; h_seq is kept
    when asked for or when a gradient will be needed (the backward reads it). k: charge "plif"'s
    constant (any 0-dim floating tensor; cast to x_seq's dtype here, differentiably). spike_dtype
    bool / uint8: spikes written as bytes (inference: refused where a gradient or h_seq is wanted)."""
    if k is not None:
        k = k.to(x_seq.dtype)
    needs_grad = torch.is_grad_enabled() and (x_seq.requires_grad or v0.requires_grad
                                              or (k is not None and k.requires_grad))
    if spike_dtype in BYTE_SPIKES and (needs_grad or return_h):
        raise RuntimeError(f"{ns}::lif_fwd: spike_dtype={spike_dtype} writes spikes as bytes, which carry no "
                           f"gradient and come without h_seq; run it under torch.no_grad() (inference) or keep "
                           f"float spikes")
    s, v, h = call(getattr(torch.ops, ns).lif_fwd, x_seq, v0, float(tau), float(v_threshold),
                                             None if v_reset is None else float(v_reset), bool(decay_input),
                                             bool(detach_reset), surrogate, float(alpha),
                                             bool(return_h or needs_grad), charge, k, spike_dtype)
    return s, v, (h if return_h else None)
