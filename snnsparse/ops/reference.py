"""Reference backend: pure torch, differentiable by autograd, the oracle every test compares to.

Inputs arrive validated and flattened by snnsparse.functional (see snnsparse.backends for the
backend contract). The counts are the number of accumulations an event-driven kernel does:
sum over fired inputs of the kept outgoing synapses, i.e. sum(x @ mask^T) / sum(conv2d(x, mask)).
"""
from typing import Optional

import torch
import torch.nn.functional as F

from . import surrogate


def supports(device: torch.device):
    return True


class _KeepAllGrads(torch.autograd.Function):
    """where(mask, weight, 0) whose gradient reaches every entry, pruned ones too (Grad R's regrowth)."""

    @staticmethod
    def forward(ctx, weight, mask):
        return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def masked_weight(weight: torch.Tensor, mask: Optional[torch.Tensor], dense_weight_grad: bool = False):
    """weight with pruned entries 0; with dense_weight_grad the gradient reaches every entry (pruned ones too).

    A pruned synapse is absent: torch.where, never weight * mask, because a pruned NaN or inf weight
    would leak into the output as NaN * 0 = NaN (the rule every backend follows, issue 11)."""
    if mask is None:
        return weight
    if dense_weight_grad:
        return _KeepAllGrads.apply(weight, mask)
    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def _mask_or_ones(weight, mask):
    return torch.ones_like(weight) if mask is None else mask.to(weight.dtype)


def spike_linear(x, weight, bias, mask, *, count=False, dense_weight_grad=False):
    out = F.linear(x, masked_weight(weight, mask, dense_weight_grad), bias)
    n = None
    if count:
        with torch.no_grad():
            n = (x.detach().double() @ _mask_or_ones(weight, mask).double().t()).sum().round().to(torch.int64)
    return out, n


def spike_conv2d(x, weight, bias, mask, stride, padding, dilation, groups, *, count=False,
                 dense_weight_grad=False):
    # Contiguous input: torch 2.13's CPU conv backward is wrong (by up to 3.0) for float64, groups > 1,
    # a channels_last weight and a channels_last-strided input of batch 1, which is exactly what
    # snnsparse.functional's reshape of [T, B=1, C, H, W] can produce (issue 11, test in test_reference.py).
    x = x.contiguous()
    out = F.conv2d(x, masked_weight(weight, mask, dense_weight_grad), bias, stride, padding, dilation, groups)
    n = None
    if count:
        with torch.no_grad():
            n = F.conv2d(x.detach().double(), _mask_or_ones(weight, mask).double(), None, stride, padding,
                         dilation, groups).sum().round().to(torch.int64)
    return out, n


def lif_charge(x, v, tau: float, decay_input: bool, v_reset, charge: str = "lif", k=None):
    """H[t] from X[t] and V[t-1] (SpikingJelly's float operation order; charges: snnsparse/ops/lif.py)."""
    if charge == "if":
        return v + x
    vr = 0.0 if v_reset is None else v_reset
    if charge == "plif":
        if decay_input:
            return v + (x - (v - vr)) * k
        return v - (v - vr) * k + x
    if decay_input:
        return v + (x - (v - vr)) / tau
    return v - (v - vr) / tau + x


def lif(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate_name, alpha,
        return_h=False, charge="lif", k=None):
    """Multi-step neuron loop, x_seq [T, ...], v0 [...]: (spikes [T, ...], v_last, h_seq or None).
    charge "lif" (tau), "if" or "plif" (k: a 0-dim tensor, cast to x_seq's dtype; its gradient by autograd)."""
    if k is not None:
        k = k.to(x_seq.dtype)
    v = v0
    spikes, hs = [], []
    for x in x_seq:
        h = lif_charge(x, v, tau, decay_input, v_reset, charge, k)
        s = surrogate.spike(h - v_threshold, surrogate_name, alpha)
        sr = s.detach() if detach_reset else s
        if v_reset is None:
            v = h - sr * v_threshold
        else:
            v = sr * v_reset + (1.0 - sr) * h
        spikes.append(s)
        if return_h:
            hs.append(h)
    if not spikes:  # T == 0
        return x_seq.clone(), v0, (x_seq.clone() if return_h else None)
    return torch.stack(spikes), v, (torch.stack(hs) if return_h else None)
