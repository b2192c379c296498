"""lif: the glue of the snnsparse::lif_* ops (csrc/registration.cpp), whose kernels are
csrc/cpu/lif.cpp (CPU) and csrc/cuda/lif.cu (CUDA): one fake and one autograd per op, shared by
every device, and the call the cpp and cuda backends make.
"""
from __future__ import annotations

import torch

OPS = torch.ops.snnsparse


def _fwd_fake(x_seq, v0, tau, v_threshold, v_reset, decay_input, save_h):
    h = torch.empty_like(x_seq) if save_h else x_seq.new_empty((0,))
    return torch.empty_like(x_seq), torch.empty_like(v0), h


def _fwd_sg_fake(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha):
    return torch.empty_like(x_seq), torch.empty_like(v0), torch.empty_like(x_seq)


def _bwd_fake(grad_spikes, grad_v_last, h_seq, tau, v_threshold, v_reset, decay_input, detach_reset,
              surrogate, alpha):
    return torch.empty_like(h_seq), h_seq.new_empty((h_seq.shape[1],))


def _bwd_h_fake(grad_spikes, grad_v_last, grad_h, h_seq, tau, v_threshold, v_reset, decay_input,
                detach_reset, surrogate, alpha):
    return torch.empty_like(h_seq), h_seq.new_empty((h_seq.shape[1],))


def _grads(h, grad_s, grad_v, grad_h, params):
    if grad_s is None:
        grad_s = torch.zeros_like(h)
    return OPS.lif_bwd_h(grad_s, grad_v, grad_h, h, *params)


def _setup_sg(ctx, inputs, output):
    # Unused output gradients (v_last, h_seq) arrive as None instead of materialised zeros:
    # measured 27 ms of zero fills per step on [8, 64, 16384] otherwise.
    ctx.set_materialize_grads(False)
    _, _, tau, vth, vreset, decay, detach, sur, alpha = inputs
    ctx.save_for_backward(output[2])
    ctx.params = (tau, vth, vreset, decay, detach, sur, alpha)


def _backward_sg(ctx, grad_s, grad_v, grad_h):
    (h,) = ctx.saved_tensors
    return _grads(h, grad_s, grad_v, grad_h, ctx.params) + (None,) * 7


def _setup_core(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    _, _, tau, vth, vreset, decay, save_h = inputs
    # The core lif_fwd has no surrogate argument: its autograd uses SpikingJelly's LIFNode defaults
    # (sigmoid, alpha=4, detach_reset=False). run() below uses lif_fwd_sg whenever a gradient is needed.
    ctx.save_for_backward(output[2] if save_h else None)
    ctx.save_h = save_h
    ctx.params = (tau, vth, vreset, decay, False, "sigmoid", 4.0)


def _backward_core(ctx, grad_s, grad_v, grad_h):
    (h,) = ctx.saved_tensors
    if not ctx.save_h:
        raise RuntimeError("snnsparse::lif_fwd: backward needs h_seq; call it with save_h=True")
    return _grads(h, grad_s, grad_v, grad_h, ctx.params) + (None,) * 5


def register(lib=torch.library):
    """Fake kernels and autograd of the lif ops (called once by snnsparse.ops.registry)."""
    lib.register_fake("snnsparse::lif_fwd", _fwd_fake)
    lib.register_fake("snnsparse::lif_fwd_sg", _fwd_sg_fake)
    lib.register_fake("snnsparse::lif_bwd", _bwd_fake)
    lib.register_fake("snnsparse::lif_bwd_h", _bwd_h_fake)
    lib.register_autograd("snnsparse::lif_fwd", _backward_core, setup_context=_setup_core)
    lib.register_autograd("snnsparse::lif_fwd_sg", _backward_sg, setup_context=_setup_sg)


def run(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, return_h=False):
    """(spikes [T, N], v_last [N], h_seq [T, N] or None) on the device's kernel; x_seq and v0 of one dtype."""
    if torch.is_grad_enabled() and (x_seq.requires_grad or v0.requires_grad):
        # lif_fwd_sg carries the surrogate into the autograd (lif_bwd_h on backward, with h_seq's gradient).
        s, v, h = OPS.lif_fwd_sg(x_seq, v0, float(tau), float(v_threshold), v_reset, bool(decay_input),
                                 bool(detach_reset), surrogate, float(alpha))
    else:
        s, v, h = OPS.lif_fwd(x_seq, v0, float(tau), float(v_threshold), v_reset, bool(decay_input),
                              bool(return_h))
    return s, v, (h if return_h else None)
