"""Criticality-guided pruning and regeneration: Chen, Liu, Liu, You 2023, "Brain-Inspired Efficient
Pruning: Exploiting Criticality in Spiking Neural Networks" (arXiv 2311.16141; official code
MmPple/pruning-criticality).

Criticality of a neuron (output channel c of a layer) is the surrogate gradient of its pre-fire
membrane potential at threshold, reduced as mean over T, max over space, mean over batch:

    C[c] = mean_b max_{h,w} (1/T) sum_t sigma'(H_t - V_th)

measured with forward hooks on ss.nn.LIF (record_h -> h_seq) and averaged over the training
batches seen since the last pruning step (all-reduced across ranks under DDP).

Code vs paper (PRUNERS.md 6.1). The paper and the channel-pruning code (vggprune.py) use the
surrogate *derivative* sigma'(u - V_th); the weight-pruning code (core.py) instead scores neurons by
the surrogate *function* (tanh(3(u - 0.5)) + tanh 1.5) / (2 tanh 1.5), a smoothed step that is
monotonic in u and so ranks by potential, not by closeness to threshold. We follow the paper:
score="surrogate_grad" (default; sigma' of the LIF's own surrogate unless `surrogate`/`alpha` are
given; ("atan", 2.0) reproduces vggprune.py's 1 / (1 + (pi x)^2)). score="code_tanh" reproduces
core.py (centred on the LIF's threshold). The code scores a single minibatch per pruning step; we
average the batches since the previous step (identical when prune_every == 1 batch).

Unstructured (CriticalityPruner, GraNet-style gradual magnitude pruning with regeneration): every
`prune_every` optimizer steps, for k = 1..K,
    sp_k = (1 - d0) + (d0 - d_f) (1 - (1 - k/K)^3)
    n_keep = floor(N (1 - sp_k)) over all conv + linear weights; tau = n_keep-th largest |W|
    keep_last = #(|W_cls| > tau);  g = floor((n_keep - keep_last) r)
    tau' = (n_keep - keep_last - g)-th largest |W| over the non-classifier layers
    M_cls = |W_cls| > tau;  M_l = |W_l| > tau'
    score_l[o, ...] = C_l[o] * (M_l == 0);  M_l |= score_l >= g-th largest score (ties: all of them)
    W *= M   (regrown synapses restart at 0; the classifier is never regrown)
With regrow_ratio=0 this is plain gradual magnitude pruning (the baseline).

Structured (CriticalityChannelPruner, network slimming + critical-channel regrowth): L1 on BN gamma
during pretraining (slimming_penalty), then a global threshold thr = sorted|gamma|[floor(total p) + g],
g = floor((total - floor(total p)) growth_rate), keep |gamma| > thr, and regrow the g most critical
pruned channels. Channels are removed by masking the producing layer's weight rows and zeroing
(and freezing) the BN's gamma and beta; physically shrinking the network is left to the user.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, Iterable, Mapping, Optional

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..functional import check_int, check_real
from ..nn.lif import LIF
from ..ops import surrogate as _surrogate
from .masks import (GradMaskHooks, all_reduce_mean, apply_masks, broadcast_masks, check_fraction, density,
                    kth_largest, load_masks_state, masks_state, module_of, prunable_weights, strip_prefix,
                    unwrap, zero_pruned_)

SCORES = ("surrogate_grad", "code_tanh")


def criticality(h_seq: torch.Tensor, v_threshold: float = 1.0, surrogate: str = "atan",
                alpha: Optional[float] = None, score: str = "surrogate_grad") -> torch.Tensor:
    """Per-channel criticality [C] of a pre-fire membrane trace h_seq [T, B, C, ...]:
    mean over T, max over the spatial dims, mean over the batch of sigma'(h - V_th)."""
    if h_seq.dim() < 3:
        raise ValueError(f"criticality: h_seq must be [T, B, C, ...], got shape {tuple(h_seq.shape)}")
    x = h_seq.detach().float() - v_threshold
    if score == "surrogate_grad":
        name, alpha = _surrogate.check(surrogate, alpha)
        f = _surrogate.grad(name, x, alpha)
    elif score == "code_tanh":
        f = (torch.tanh(3.0 * x) + math.tanh(1.5)) / (2.0 * math.tanh(1.5))
    else:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    f = f.mean(0)
    if f.dim() > 2:
        f = f.flatten(2).amax(2)
    return f.mean(0)


def _auto_pairs(model: nn.Module, kinds, keys: Iterable[str], key_of) -> "OrderedDict[str, str]":
    """{key: name of the first LIF after the module the key names}, in registration order. `kinds`
    are the module types keys refer to; key_of(module name) -> key (weights: '<name>.weight',
    BN layers: '<name>')."""
    keys = set(keys)
    pairs: "OrderedDict[str, str]" = OrderedDict()
    pending = None
    for name, m in unwrap(model).named_modules():
        if isinstance(m, kinds):
            pending = key_of(name) if key_of(name) in keys else None
        elif isinstance(m, LIF) and pending is not None:
            pairs[pending] = name
            pending = None
    return pairs


class CriticalityMonitor:
    """Forward hooks on LIF modules that accumulate per-channel criticality while the model trains.
    pairs: {key: LIF module name}; values() -> {key: mean criticality [C] since reset()}."""

    def __init__(self, model: nn.Module, pairs: Mapping[str, str], score: str = "surrogate_grad",
                 surrogate: Optional[str] = None, alpha: Optional[float] = None):
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        alpha = check_real(alpha, "alpha", lo=0, lo_open=True, or_none=True, where="CriticalityMonitor")
        if surrogate is not None:
            _surrogate.check(surrogate, alpha)
        elif alpha is not None:  # the hooks use each LIF's own surrogate and alpha: this one would be ignored
            raise ValueError(f"CriticalityMonitor: alpha={alpha!r} needs surrogate=... (without it each LIF's "
                             f"own surrogate and alpha are used)")
        self.score, self.surrogate, self.alpha = score, surrogate, alpha
        self.pairs = OrderedDict(pairs)
        self.sums: Dict[str, torch.Tensor] = {}
        self.counts: Dict[str, int] = {}
        self.handles = []
        self._record_h = {}
        root = unwrap(model)
        for key, lif_name in self.pairs.items():
            lif = root.get_submodule(lif_name)
            if not isinstance(lif, LIF):
                raise ValueError(f"{lif_name!r} is not an ss.nn.LIF module")
            self._record_h.setdefault(lif, lif.record_h)
            lif.record_h = True
            self.handles.append(lif.register_forward_hook(self._hook(key)))

    def _hook(self, key):
        def hook(module, inputs, output):
            if not module.training or module.h_seq is None:
                return
            surrogate = self.surrogate or module.surrogate
            alpha = self.alpha if self.surrogate else module.alpha
            c = criticality(module.h_seq, module.v_threshold, surrogate, alpha, self.score)
            if key in self.sums:
                self.sums[key] += c
                self.counts[key] += 1
            else:
                self.sums[key], self.counts[key] = c.clone(), 1
        return hook

    def values(self) -> Dict[str, torch.Tensor]:
        """Mean criticality per key (all-reduced over ranks under torch.distributed)."""
        return {k: all_reduce_mean(self.sums[k] / self.counts[k]) for k in self.sums}

    def reset(self):
        self.sums.clear()
        self.counts.clear()

    def remove(self):
        """Detach the hooks and give each LIF its record_h setting back."""
        for h in self.handles:
            h.remove()
        self.handles = []
        for lif, rec in self._record_h.items():
            lif.record_h = rec
        self._record_h = {}


def cubic_sparsity(k: int, K: int, final_sparsity: float, init_density: float = 1.0) -> float:
    """GraNet / Zhu-Gupta schedule: sparsity at pruning step k of K."""
    decay = (1.0 - k / K) ** 3
    return (1.0 - init_density) + (init_density - (1.0 - final_sparsity)) * (1.0 - decay)


def prune_and_regrow(weights: Mapping[str, torch.Tensor], crit: Mapping[str, torch.Tensor], sparsity: float,
                     regrow_ratio: float, classifier: Optional[str]) -> Dict[str, torch.Tensor]:
    """One pruning-regeneration step (see the module doc). weights: {name: W}; crit: {name: C [out]}
    for the layers that can regrow; returns new masks (regrown synapses must restart at 0)."""
    names = list(weights)
    absw = {n: weights[n].detach().abs().float() for n in names}
    total = sum(a.numel() for a in absw.values())
    n_keep = int(total * (1.0 - sparsity))
    if n_keep < 1:
        return {n: torch.zeros_like(a, dtype=torch.bool) for n, a in absw.items()}
    tau = kth_largest(torch.cat([a.flatten() for a in absw.values()]), n_keep)
    keep_last = int((absw[classifier] > tau).sum()) if classifier is not None else 0
    body = [n for n in names if n != classifier]
    g = int((n_keep - keep_last) * regrow_ratio)
    n1 = n_keep - keep_last - g
    if body and n1 >= 1:
        tau1 = kth_largest(torch.cat([absw[n].flatten() for n in body]), n1)
    else:
        tau1 = torch.tensor(math.inf)
    masks = {n: absw[n] > (tau if n == classifier else tau1) for n in names}
    if g > 0 and body:
        scores = {}
        for n in body:
            c = crit.get(n)
            if c is None:
                scores[n] = torch.zeros_like(absw[n])
                continue
            if c.numel() != absw[n].shape[0]:
                raise ValueError(f"criticality for {n!r} has {c.numel()} channels, the weight has "
                                 f"{absw[n].shape[0]} outputs")
            shape = (-1,) + (1,) * (absw[n].dim() - 1)
            scores[n] = c.to(absw[n].device).float().view(shape).expand_as(absw[n]) * (~masks[n])
        flat = torch.cat([s.flatten() for s in scores.values()])
        thr = kth_largest(flat, min(g, flat.numel()))
        for n in body:
            masks[n] |= (scores[n] >= thr) & (scores[n] > 0)   # ties regrow whole channels
    return masks


class CriticalityPruner:
    """Gradual cubic-schedule global magnitude pruning with regeneration into the most critical
    neurons (unstructured). Call step() after every optimizer.step().

    final_sparsity: d_f = 1 - final_sparsity; regrow_ratio: r (0.2 in the README; 0 = plain gradual
    magnitude pruning); prune_every: optimizer steps between pruning steps (dt); prune_steps: K;
    start_step: first optimizer step that may prune; init_density: d0 (1 = start dense).
    classifier: the weight never regrown (default: the last conv/linear). lif_for: {weight name:
    LIF module name}; default pairs each weight with the first LIF after it (the classifier needs
    none). score/surrogate/alpha: see criticality().
    """

    def __init__(self, model: nn.Module, final_sparsity: float = 0.9, regrow_ratio: float = 0.2,
                 prune_every: int = 2000, prune_steps: int = 10, start_step: int = 0, init_density: float = 1.0,
                 classifier: Optional[str] = "auto", exclude: Iterable[str] = (),
                 lif_for: Optional[Mapping[str, str]] = None, score: str = "surrogate_grad",
                 surrogate: Optional[str] = None, alpha: Optional[float] = None):
        self.final_sparsity = check_fraction(final_sparsity, "final_sparsity")
        self.regrow_ratio = check_fraction(regrow_ratio, "regrow_ratio")
        self.init_density = check_fraction(init_density, "init_density", allow_one=True)
        self.prune_every = check_int(prune_every, "prune_every", lo=1, where="CriticalityPruner")
        self.prune_steps = check_int(prune_steps, "prune_steps", lo=1, where="CriticalityPruner")
        self.start_step = check_int(start_step, "start_step", lo=0, where="CriticalityPruner")
        self.model = model
        self.weights = prunable_weights(model, exclude)
        if not self.weights:
            raise ValueError("CriticalityPruner: the model has no conv or linear weight to prune")
        if classifier == "auto":
            classifier = list(self.weights)[-1]
        elif classifier is not None:
            classifier = strip_prefix(classifier)
            if classifier not in self.weights:
                raise ValueError(f"unknown classifier parameter name {classifier!r}; prunable weights are "
                                 f"{list(self.weights)}")
        self.classifier = classifier
        if lif_for is None:
            lif_for = _auto_pairs(model, (nn.Linear, nn.modules.conv._ConvNd),
                                  [n for n in self.weights if n != classifier],
                                  lambda name: f"{name}.weight" if name else "weight")
        else:
            lif_for = {strip_prefix(k): v for k, v in lif_for.items()}
            unknown = set(lif_for) - set(self.weights)
            if unknown:
                raise ValueError(f"unknown parameter names in lif_for: {sorted(unknown)}")
        self.monitor = CriticalityMonitor(model, lif_for, score, surrogate, alpha)
        self.masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in self.weights.items()}
        self._hooks = GradMaskHooks(self.weights, self.masks)
        self.iteration = 0
        self.k = 0

    def sparsity_at(self, k: int) -> float:
        return cubic_sparsity(k, self.prune_steps, self.final_sparsity, self.init_density)

    def compute_masks(self, sparsity: float) -> Dict[str, torch.Tensor]:
        return prune_and_regrow(self.weights, self.monitor.values(), sparsity, self.regrow_ratio, self.classifier)

    @torch.no_grad()
    def prune_step(self) -> Dict[str, torch.Tensor]:
        """Run pruning step k+1 now (schedule, prune, regrow, apply); masks broadcast from rank 0."""
        self.k += 1
        new = broadcast_masks(self.compute_masks(self.sparsity_at(self.k)))
        self.masks.update(new)
        self.monitor.reset()
        self.apply()
        return self.masks

    @torch.no_grad()
    def step(self) -> bool:
        """Call after optimizer.step(): keeps pruned weights at 0 and prunes on schedule.
        Returns True when this call ran a pruning step."""
        self.iteration += 1
        pruned = False
        if (self.iteration >= self.start_step and self.iteration % self.prune_every == 0
                and self.k < self.prune_steps):
            self.prune_step()
            pruned = True
        else:
            zero_pruned_(self.weights, self.masks)
        return pruned

    def apply(self) -> None:
        apply_masks(self.model, self.masks, zero_weights=True)

    def sparsity(self) -> float:
        return 1.0 - density(self.masks)

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "k": self.k, "masks": masks_state(self.masks),
                "crit_sums": {k: v.clone() for k, v in self.monitor.sums.items()},
                "crit_counts": dict(self.monitor.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self.k = int(state["iteration"]), int(state["k"])
        self.masks.clear()
        self.masks.update(load_masks_state(self.weights, state["masks"]))
        self.monitor.sums = {k: v.clone() for k, v in state.get("crit_sums", {}).items()}
        self.monitor.counts = dict(state.get("crit_counts", {}))

    def remove(self) -> None:
        self.monitor.remove()
        self._hooks.remove()


def slimming_penalty(model: nn.Module, lam: float = 1e-4) -> None:
    """Network slimming: add lam * sign(gamma) to every BN weight's gradient (call after backward)."""
    lam = check_real(lam, "lam", lo=0, where="slimming_penalty")
    for m in unwrap(model).modules():
        if isinstance(m, _BatchNorm) and m.weight is not None and m.weight.grad is not None:
            m.weight.grad.add_(torch.sign(m.weight.detach()), alpha=lam)


class CriticalityChannelPruner:
    """Structured variant: BN-gamma slimming threshold + regrowth of the most critical channels.

    percent: fraction of channels pruned by |gamma| before regrowth; growth_rate: regrown fraction
    of the rest (README example 0.6764 / 0.05). bn_names: the BN layers considered (default all
    BatchNorm2d/1d followed by a LIF); each BN is paired with the first LIF after it (criticality)
    and the last conv/linear before it (whose weight rows are masked).
    """

    def __init__(self, model: nn.Module, percent: float = 0.5, growth_rate: float = 0.05,
                 bn_names: Optional[Iterable[str]] = None, score: str = "surrogate_grad",
                 surrogate: Optional[str] = None, alpha: Optional[float] = None):
        self.percent = check_fraction(percent, "percent")
        self.growth_rate = check_fraction(growth_rate, "growth_rate")
        self.model = model
        root = unwrap(model)
        producers, last = {}, None
        for name, m in root.named_modules():
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                last = f"{name}.weight"
            elif isinstance(m, _BatchNorm) and last is not None:
                producers[name] = last
        bns = [n for n, m in root.named_modules() if isinstance(m, _BatchNorm)]
        pairs = _auto_pairs(model, _BatchNorm, bns, lambda name: name)
        if bn_names is None:
            bn_names = [n for n in bns if n in pairs and n in producers]
        else:
            bn_names = list(bn_names)
            unknown = [n for n in bn_names if n not in pairs or n not in producers]
            if unknown:
                raise ValueError(f"BN layers {unknown} are unknown or lack a producing layer / following LIF")
        if not bn_names:
            raise ValueError("CriticalityChannelPruner: no BN layer between a conv/linear and a LIF")
        self.bn_names = bn_names
        self.producers = {n: producers[n] for n in bn_names}
        self.monitor = CriticalityMonitor(model, {n: pairs[n] for n in bn_names}, score, surrogate, alpha)
        self.channel_masks: Dict[str, torch.Tensor] = {}
        self._bn_hooks = []

    def _bn(self, name):
        return unwrap(self.model).get_submodule(name)

    @torch.no_grad()
    def compute_channel_masks(self) -> Dict[str, torch.Tensor]:
        gammas = {n: self._bn(n).weight.detach().abs().float() for n in self.bn_names}
        flat = torch.cat(list(gammas.values()))
        total = flat.numel()
        n_prune = int(total * self.percent)
        g = int((total - n_prune) * self.growth_rate)
        idx = min(n_prune + g, total - 1)
        thr = torch.sort(flat).values[idx]
        masks = {n: gm > thr for n, gm in gammas.items()}
        if g > 0:
            crit = self.monitor.values()
            scores = {n: crit[n].to(masks[n].device) * (~masks[n]) if n in crit else torch.zeros_like(gammas[n])
                      for n in self.bn_names}
            allsc = torch.cat(list(scores.values()))
            t = kth_largest(allsc, min(g, allsc.numel()))
            for n in self.bn_names:
                masks[n] |= (scores[n] >= t) & (scores[n] > 0)
        return broadcast_masks(masks)

    @torch.no_grad()
    def apply(self, channel_masks: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Remove the pruned channels: producing weight rows masked (apply_masks), BN gamma/beta
        zeroed and their gradients zeroed by hooks. Returns the weight masks written."""
        if channel_masks is None:
            channel_masks = self.compute_channel_masks()
        self.channel_masks = {n: m.clone() for n, m in channel_masks.items()}
        for h in self._bn_hooks:
            h.remove()
        self._bn_hooks = []
        weight_masks = {}
        for n, cm in self.channel_masks.items():
            wname = self.producers[n]
            w = module_of(self.model, wname).weight
            shape = (-1,) + (1,) * (w.dim() - 1)
            current = getattr(module_of(self.model, wname), "weight_mask", None)
            base = current.to(torch.bool) if isinstance(current, torch.Tensor) else torch.ones_like(w, dtype=torch.bool)
            weight_masks[wname] = base & cm.view(shape).expand_as(w).to(w.device)
            bn = self._bn(n)
            keep = cm.to(bn.weight.device)
            for p in (bn.weight, bn.bias):
                if p is not None:
                    p.mul_(keep.to(p.dtype))
                    self._bn_hooks.append(p.register_hook(lambda grad, k=keep: grad * k.to(grad.dtype)))
        apply_masks(self.model, weight_masks, zero_weights=True)
        return weight_masks

    def channel_sparsity(self) -> float:
        total = sum(m.numel() for m in self.channel_masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.channel_masks.values()) / total if total else 0.0
