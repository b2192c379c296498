"""Spiking lottery tickets: Kim et al., ECCV 2022, "Exploring Lottery Ticket Hypothesis in Spiking
Neural Networks" (official code Intelligent-Computing-Lab-Yale/Exploring-Lottery-Ticket-Hypothesis-
in-SNNs, train_snn_laterewindlth.py).

Iterative magnitude pruning (IMP): train, globally prune `prune_fraction` (25%) of the remaining
conv + linear weights by |w| (BN and biases excluded), rewind the survivors to the weights saved at
an early epoch (late rewinding, epoch 20 in the paper), train again; pruned gradients are zeroed by
tensor hooks. After k rounds the sparsity is 1 - 0.75^k (0, 25, 43.75, ..., 95.77% at k = 11).

Early-Time ticket: search the ticket with fewer time steps T_early, the smallest t in {2, 3, 4}
whose KL(P_t || P_T), normalised by the t = 2 value, is below lambda = 0.6 (see early_time_steps).

Usage inside an ordinary loop:
    lt = LotteryTicket(model)
    for rnd in range(rounds):
        for epoch in range(epochs):
            if rnd == 0 and epoch == rewind_epoch: lt.save_rewind_point()
            train_one_epoch(model, opt)      # after opt.step(): lt.zero_pruned() (SGD momentum/wd)
        lt.prune_round()                     # prune 25% of the rest, apply masks, rewind
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..functional import check_bool, check_int, check_real
from .masks import (GradMaskHooks, apply_masks, broadcast_masks, check_fraction, density, load_masks_state,
                    masks_state, prunable_weights, topk_mask, unwrap, zero_pruned_)


def lth_sparsity(rounds: int, prune_fraction: float = 0.25) -> float:
    """Sparsity after `rounds` IMP rounds pruning `prune_fraction` of the remaining weights."""
    return 1.0 - (1.0 - prune_fraction) ** rounds


def global_magnitude_prune(weights: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor],
                           fraction: float) -> Dict[str, torch.Tensor]:
    """New masks pruning round(fraction * alive) of the alive weights with the smallest |w|,
    ranked globally over all tensors (already-pruned entries stay pruned)."""
    names = list(weights)
    scores = torch.cat([torch.where(masks[n], weights[n].detach().abs().float(),
                                    torch.full_like(weights[n], -1.0, dtype=torch.float32)).flatten()
                        for n in names])
    alive = int(sum(int(masks[n].sum()) for n in names))
    keep = alive - int(round(fraction * alive))
    flat = topk_mask(scores, keep)
    out, i = {}, 0
    for n in names:
        k = weights[n].numel()
        out[n] = flat[i:i + k].view_as(weights[n]).to(weights[n].device)
        i += k
    return out


class LotteryTicket:
    """Iterative magnitude pruning with late rewinding over the conv + linear weights of `model`.

    prune_fraction: fraction of the remaining weights pruned per round (0.25 in the paper).
    exclude: parameter names left dense. zero_grad_hooks: zero the gradient of pruned weights.
    The masks ({name: bool}) are in `.masks`; state_dict()/load_state_dict() checkpoint masks,
    round and the rewind point.
    """

    def __init__(self, model: nn.Module, prune_fraction: float = 0.25, exclude: Iterable[str] = (),
                 zero_grad_hooks: bool = True):
        self.prune_fraction = check_fraction(prune_fraction, "prune_fraction")
        if self.prune_fraction <= 0:
            raise ValueError(f"prune_fraction must be in (0, 1), got {prune_fraction!r}")
        check_bool(zero_grad_hooks, "zero_grad_hooks", where="LotteryTicket")
        self.model = model
        self.weights = prunable_weights(model, exclude)
        if not self.weights:
            raise ValueError("LotteryTicket: the model has no conv or linear weight to prune")
        self.masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in self.weights.items()}
        self.round = 0
        self.rewind_state: Optional[Dict[str, torch.Tensor]] = None
        self._hooks = GradMaskHooks(self.weights, self.masks) if zero_grad_hooks else None

    def save_rewind_point(self) -> None:
        """Remember the current model state (all parameters and buffers) as the rewind point."""
        self.rewind_state = {k: v.detach().clone() for k, v in unwrap(self.model).state_dict().items()}

    @torch.no_grad()
    def rewind(self) -> None:
        """Load the rewind point (late rewinding), keeping the current masks."""
        if self.rewind_state is None:
            raise RuntimeError("LotteryTicket.rewind: no rewind point; call save_rewind_point() first")
        model = unwrap(self.model)
        masks = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("weight_mask")}
        state = dict(self.rewind_state)
        state.update(masks)  # the rewind point's weight_mask buffers are stale
        model.load_state_dict(state)
        self.apply()

    def compute_masks(self) -> Dict[str, torch.Tensor]:
        """Masks of the next round (scores only; nothing is written into the model)."""
        return global_magnitude_prune(self.weights, self.masks, self.prune_fraction)

    def apply(self) -> None:
        apply_masks(self.model, self.masks, zero_weights=True)

    def prune_round(self, rewind: bool = True) -> Dict[str, torch.Tensor]:
        """Prune `prune_fraction` of the remaining weights, write the masks, and (if a rewind point
        exists and rewind=True) rewind. Masks are broadcast from rank 0 under torch.distributed."""
        new = broadcast_masks(self.compute_masks())
        self.masks.update(new)
        self.round += 1
        if rewind and self.rewind_state is not None:
            self.rewind()
        else:
            self.apply()
        return self.masks

    @torch.no_grad()
    def zero_pruned(self) -> None:
        """W *= M (call after an optimizer step whose momentum or weight decay could move pruned
        weights; Spike* layers already ignore them in the forward)."""
        zero_pruned_(self.weights, self.masks)

    def sparsity(self) -> float:
        return 1.0 - density(self.masks)

    def state_dict(self) -> dict:
        return {"round": self.round, "prune_fraction": self.prune_fraction, "masks": masks_state(self.masks),
                "rewind_state": None if self.rewind_state is None else dict(self.rewind_state)}

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        self.prune_fraction = float(state["prune_fraction"])
        self.masks.clear()
        self.masks.update(load_masks_state(self.weights, state["masks"]))
        rs = state.get("rewind_state")
        self.rewind_state = None if rs is None else {k: v.clone() for k, v in rs.items()}

    def remove_hooks(self) -> None:
        if self._hooks is not None:
            self._hooks.remove()


@torch.no_grad()
def early_time_steps(forward: Callable[[torch.Tensor, int], torch.Tensor], images: torch.Tensor, T: int,
                     candidates: Sequence[int] = (2, 3, 4), lam: float = 0.6) -> int:
    """Early-Time ticket: the number of time steps to search the ticket with.

    forward(images, t) -> logits of the network run with t time steps. For t in `candidates`,
    KL(P_t || P_T) (batch mean) is normalised by its value at the first candidate; the smallest t
    whose normalised KL is below `lam` is returned (T if none is). Kim et al. use 1000 training
    images after 2 epochs of round 0, candidates {2, 3, 4}, lambda = 0.6.
    """
    T = check_int(T, "T", lo=2, where="early_time_steps")
    if not candidates or any(check_int(t, "candidates", lo=1, where="early_time_steps") >= T for t in candidates):
        raise ValueError(f"early_time_steps: candidates must be time steps in [1, T={T}), got {candidates!r}")
    lam = check_real(lam, "lam", lo=0, lo_open=True, where="early_time_steps")
    kl = kl_to_full(forward, images, T, candidates)
    base = kl[candidates[0]]
    for t in candidates:
        if base > 0 and kl[t] / base < lam:
            return int(t)
    return int(T)


@torch.no_grad()
def kl_to_full(forward, images, T, candidates) -> Dict[int, float]:
    """{t: KL(P_t || P_T)} with P the softmax of forward(images, t), averaged over the batch."""
    log_pT = F.log_softmax(forward(images, T).float(), dim=-1)
    out = {}
    for t in candidates:
        log_pt = F.log_softmax(forward(images, int(t)).float(), dim=-1)
        out[int(t)] = float((log_pt.exp() * (log_pt - log_pT)).sum(-1).mean())
    return out
