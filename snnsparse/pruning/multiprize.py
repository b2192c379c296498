"""Multi-prize spiking lottery tickets (SLT / MPSLT): Cheng et al. 2023, "Gaining the Sparse Rewards
by Exploring Lottery Tickets in Spiking Neural Network" (arXiv 2309.13302; no official code; method
details from the sibling paper arXiv 2311.12060 and chrundle/biprop utils/conv_type.py).

A strong lottery ticket is searched over randomly initialised, frozen weights W: every pruned layer
gets a trainable score tensor S, and the forward uses

    M = top-k mask of |S| (per layer, k = 1 - sparsity of the entries)
    edge-popup (binarize=False):  W_eff = W * M
    biprop / MPSLT (binarize=True): W_eff = alpha * sign(W) * M,  alpha = ||M * |W|||_1 / nnz(M)
    backward (straight-through):  dL/dS = dL/d(alpha M) * |W|   (= dL/dW_eff * W, through |S|)

Only the scores are optimised (MultiPrizeTicket.parameters()). finalize() bakes W_eff into the
weights and writes the masks with apply_masks, after which the model is an ordinary sparse SNN.
The multi-level sparsity of the spiking transformer (MultiSp-SLT) is in multisp.py.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..functional import check_bool
from .masks import (apply_masks, broadcast_masks, check_fraction, module_of, prunable_weights, strip_prefix,
                    topk_mask)


def biprop_gain(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """alpha = ||M * |W|||_1 / nnz(M) (0 when the mask is empty)."""
    nnz = mask.sum()
    return (weight.abs() * mask).sum() / nnz.clamp(min=1)


class _TopKSubnet(torch.autograd.Function):
    """Forward: M (edge-popup) or alpha * M (biprop), M the top-k of the scores; backward:
    straight-through, times |W| for biprop (chrundle/biprop GetQuantnet_binary)."""

    @staticmethod
    def forward(ctx, scores, weight, keep, binarize):
        mask = topk_mask(scores, keep).to(weight.dtype)
        ctx.binarize = binarize
        if binarize:
            ctx.save_for_backward(weight)
            return mask * biprop_gain(weight, mask)
        return mask

    @staticmethod
    def backward(ctx, g):
        if ctx.binarize:
            (weight,) = ctx.saved_tensors
            g = g * weight.abs()
        return g, None, None, None


class PopupWeight(nn.Module):
    """Parametrization of a frozen weight by a score tensor (edge-popup / biprop).
    In both variants dL/dS = dL/dW_eff * W * sign(S)."""

    def __init__(self, weight: torch.Tensor, sparsity: float, binarize: bool):
        super().__init__()
        self.sparsity = float(sparsity)
        self.binarize = bool(binarize)
        self.keep = weight.numel() - int(self.sparsity * weight.numel())   # biprop: j = int((1-k) numel)
        self.scores = nn.Parameter(torch.empty_like(weight))
        nn.init.kaiming_uniform_(self.scores, a=math.sqrt(5))

    def mask(self) -> torch.Tensor:
        return topk_mask(self.scores.detach().abs(), self.keep)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        weight = weight.detach()
        subnet = _TopKSubnet.apply(self.scores.abs(), weight, self.keep, self.binarize)
        return torch.sign(weight) * subnet if self.binarize else weight * subnet


class MultiPrizeTicket:
    """Score-based strong tickets over the frozen random weights of `model`'s conv + linear layers.

    sparsity: fraction of each layer's weights pruned (per-layer top-k; 0.5 for MPSLT).
    binarize: biprop binary weights alpha * sign(W) (MPSLT); False: edge-popup full-precision SLT.
    exclude: parameter names left dense and trainable (e.g. a temporary linear head);
    include: only these parameter names (e.g. ["cpm.weight"] for MultiSp-SLT's patch embedding).
    weight_init: "kaiming_normal" re-draws the frozen weights as biprop does; None keeps them.
    The model's other parameters (BN, biases) are left as they are; freeze them or not as the
    recipe requires (edge-popup trains only the scores).
    """

    def __init__(self, model: nn.Module, sparsity: float = 0.5, binarize: bool = True,
                 exclude: Iterable[str] = (), weight_init: str = "kaiming_normal",
                 include: Optional[Iterable[str]] = None):
        self.sparsity = check_fraction(sparsity, "sparsity")
        if weight_init not in ("kaiming_normal", None):
            raise ValueError(f"weight_init must be 'kaiming_normal' or None, got {weight_init!r}")
        self.model = model
        self.binarize = check_bool(binarize, "binarize", where="MultiPrizeTicket")
        names = list(prunable_weights(model, exclude))
        if include is not None:
            include = [strip_prefix(n) for n in include]
            unknown = set(include) - set(names)
            if unknown:
                raise ValueError(f"unknown parameter names in include: {sorted(unknown)}; prunable weights "
                                 f"are {names}")
            names = [n for n in names if n in include]
        self.names: List[str] = names
        if not self.names:
            raise ValueError("MultiPrizeTicket: the model has no conv or linear weight to search")
        for name in self.names:
            module = module_of(model, name)
            if parametrize.is_parametrized(module, "weight"):
                raise ValueError(f"MultiPrizeTicket: {name!r} is already parametrized")
            w = module.weight
            if weight_init == "kaiming_normal":
                with torch.no_grad():
                    nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
            w.requires_grad_(False)
            parametrize.register_parametrization(module, "weight", PopupWeight(w, self.sparsity, self.binarize))

    def _popup(self, name: str) -> PopupWeight:
        return module_of(self.model, name).parametrizations["weight"][0]

    def parameters(self) -> List[nn.Parameter]:
        """The score tensors (the only thing the search trains)."""
        return [self._popup(n).scores for n in self.names]

    def named_masks(self) -> Dict[str, torch.Tensor]:
        """{weight name: bool mask} of the current top-k scores (broadcast from rank 0 under DDP)."""
        return broadcast_masks({n: self._popup(n).mask() for n in self.names})

    def gains(self) -> Dict[str, float]:
        return {n: float(biprop_gain(module_of(self.model, n).parametrizations["weight"].original,
                                     self._popup(n).mask())) for n in self.names}

    def sparsity_now(self) -> float:
        masks = self.named_masks()
        return 1.0 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())

    @torch.no_grad()
    def finalize(self) -> Dict[str, torch.Tensor]:
        """Bake W_eff into each weight (removing the parametrization) and write the masks into the
        model; returns them. The scores are dropped."""
        masks = self.named_masks()
        for name in self.names:
            module = module_of(self.model, name)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            module.weight.requires_grad_(True)
        apply_masks(self.model, masks, zero_weights=True)
        return masks
