"""lif: the glue of the lif ops, one schema in every namespace (csrc/registration.cpp for
snnsparse::, kernels in csrc/cpu/lif.cpp and csrc/cuda/lif.cu; snnsparse_triton:: in
snnsparse/ops/triton.py): one fake, one autograd, and the call every backend makes.

    lif_fwd(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, save_h)
        -> (spikes, v_last, h_seq)
    lif_bwd(grad_spikes, grad_v_last?, grad_h?, h_seq, tau, v_threshold, v_reset, decay_input,
            detach_reset, surrogate, alpha) -> (grad_x, grad_v0)
"""
from __future__ import annotations

import torch


def _fwd_fake(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, save_h):
    h = torch.empty_like(x_seq) if save_h else x_seq.new_empty((0,))
    return torch.empty_like(x_seq), torch.empty_like(v0), h


def _bwd_fake(grad_spikes, grad_v_last, grad_h, h_seq, tau, v_threshold, v_reset, decay_input, detach_reset,
              surrogate, alpha):
    return torch.empty_like(h_seq), h_seq.new_empty((h_seq.shape[1],))


def _setup(ctx, inputs, output):
    # Unused output gradients (v_last, h_seq) arrive as None instead of materialised zeros:
    # measured 27 ms of zero fills per step on [8, 64, 16384] otherwise.
    ctx.set_materialize_grads(False)
    _, _, tau, vth, vreset, decay, detach, sur, alpha, save_h = inputs
    ctx.params = (tau, vth, vreset, decay, detach, sur, alpha)
    ctx.save_for_backward(output[2])
    if not save_h:  # the empty placeholder; a returned h_seq is differentiable, as in the reference
        ctx.mark_non_differentiable(output[2])


def _backward_for(ns: str):
    def backward(ctx, grad_s, grad_v, grad_h):
        (h,) = ctx.saved_tensors
        if h.dim() != 2:
            raise RuntimeError(f"{ns}::lif_fwd was called with save_h=False; it cannot be differentiated")
        if grad_s is None:
            grad_s = torch.zeros_like(h)
        gx, gv0 = getattr(torch.ops, ns).lif_bwd(grad_s, grad_v, grad_h, h, *ctx.params)
        return (gx, gv0) + (None,) * 8
    return backward


def register(ns: str = "snnsparse"):
    """Fake kernels and autograd of the lif ops of namespace `ns` (see ops.linear.register)."""
    torch.library.register_fake(f"{ns}::lif_fwd", _fwd_fake)
    torch.library.register_fake(f"{ns}::lif_bwd", _bwd_fake)
    torch.library.register_autograd(f"{ns}::lif_fwd", _backward_for(ns), setup_context=_setup)


def run(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, return_h=False,
        ns: str = "snnsparse"):
    """(spikes [T, N], v_last [N], h_seq [T, N] or None) on the kernels of namespace `ns`; h_seq is kept
    when asked for or when a gradient will be needed (the backward reads it)."""
    needs_grad = torch.is_grad_enabled() and (x_seq.requires_grad or v0.requires_grad)
    s, v, h = getattr(torch.ops, ns).lif_fwd(x_seq, v0, float(tau), float(v_threshold),
                                             None if v_reset is None else float(v_reset), bool(decay_input),
                                             bool(detach_reset), surrogate, float(alpha), bool(return_h or needs_grad))
    return s, v, (h if return_h else None)
