"""Grad R: Chen et al., IJCAI 2021, "Pruning of Deep Spiking Neural Networks through Gradient
Rewiring" (official code Yanqi-Chen/Gradient-Rewiring, gradrewire.py).

Each synapse has a fixed sign s and a hidden strength theta, w = s * relu(theta); the synapse
exists iff theta > 0. The optimizer runs Adam on theta with the redefined gradient s * dL/dw for
every synapse (pruned ones too, which is how they regrow), then applies the Laplace-prior step
alpha * lr_hat * sign(theta_old - mu), mu = ln(2 (1 - target_sparsity)) / alpha, outside Adam's
preconditioner. s and theta live in the optimizer state ('sign', 'strength'), so
optimizer.state_dict() checkpoints them. The update, per prunable tensor:

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2          (g = dL/dw, dense)
    lr_hat = lr / (1 - b1^t);  den = sqrt(v) / sqrt(1 - b2^t) + eps
    theta <- theta - lr_hat * s * m / den - alpha * lr_hat * sign(theta_old - mu)
    w = s * max(theta, 0)

Dense gradients. Spike* layers return dL/dw only for kept synapses unless their
`dense_weight_grad` is True; GradRewiring.from_model(model) sets it on every managed layer (or
call enable_dense_weight_grad(model) yourself). Alternatively leave every weight_mask all True
during training: the weights of pruned synapses are exactly 0 anyway, and the gradient is dense.
Call apply_masks(model, opt.named_masks()) to let the kernels skip the pruned synapses.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn

from ..functional import check_real
from .masks import module_of, prunable_weights, strip_prefix, unwrap


def enable_dense_weight_grad(model: nn.Module, names: Optional[Iterable[str]] = None) -> None:
    """Set dense_weight_grad=True on the Spike* layers owning `names` (default: all prunable)."""
    names = list(prunable_weights(model)) if names is None else list(names)
    for name in names:
        module = module_of(model, name)
        if hasattr(module, "dense_weight_grad"):
            module.dense_weight_grad = True


class GradRewiring(torch.optim.Optimizer):
    """Grad R optimizer over weight Parameters (conv + linear weights; put BN and biases in an
    ordinary optimizer). `params` may be Parameters, named parameters ((name, p) pairs) or param
    groups. `.masks()` -> {param: bool}; `.named_masks()` -> {name: bool} for apply_masks.

    alpha is the Laplace-prior penalty; target_sparsity (>= 0.5, as in the official code) sets
    mu = ln(2 (1 - target)) / alpha. With the defaults mu ~ -2303, so the prior is in effect a
    constant shrink of theta by alpha * lr_hat per step and alpha alone sets the connectivity.
    """

    def __init__(self, params, lr: float = 1e-3, alpha: float = 1e-3, target_sparsity: float = 0.95,
                 betas=(0.9, 0.999), eps: float = 1e-8):
        defaults = self._checked(dict(lr=lr, alpha=alpha, target_sparsity=target_sparsity, betas=betas, eps=eps))
        super().__init__(params, defaults)

    @staticmethod
    def _checked(group: dict) -> dict:
        """The hyperparameters of a param group, validated (an inf lr or a NaN eps would silently turn
        every weight into NaN at the first step) and normalised to floats."""
        where = "GradRewiring"
        out = dict(group)
        for name in ("lr", "alpha", "eps"):
            out[name] = check_real(group[name], name, lo=0, where=where)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{where}: betas must be a pair of numbers in [0, 1), got {betas!r}")
        out["betas"] = tuple(check_real(b, f"betas[{i}]", lo=0, hi=1, hi_open=True, where=where)
                             for i, b in enumerate(betas))
        ts = check_real(group["target_sparsity"], "target_sparsity", where=where)
        if not 0.5 <= ts < 1:
            raise ValueError(f"{where}: target_sparsity must be in [0.5, 1) (the prior's centre "
                             f"mu = ln(2(1-s))/alpha needs s >= 0.5), got {group['target_sparsity']!r}")
        out["target_sparsity"] = ts
        return out

    def add_param_group(self, param_group: dict) -> None:
        # A param group may override the defaults (lr=..., betas=...); check its values too.
        super().add_param_group(param_group)
        self.param_groups[-1].update(self._checked(self.param_groups[-1]))

    @classmethod
    def from_model(cls, model: nn.Module, exclude: Iterable[str] = (), **kwargs) -> "GradRewiring":
        """Grad R over every conv + linear weight of `model` (named, so named_masks() works), with
        dense_weight_grad enabled on those layers. BN and biases are left to another optimizer."""
        named = list(prunable_weights(model, exclude).items())
        enable_dense_weight_grad(model, [n for n, _ in named])
        return cls(named, **kwargs)

    @staticmethod
    def mu(alpha: float, target_sparsity: float) -> float:
        return math.log(2.0 * (1.0 - target_sparsity)) / alpha

    def _init_state(self, p, group):
        state = self.state[p]
        state["step"] = torch.zeros((), dtype=torch.float64)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["sign"] = torch.sign(p.detach())      # sign(0) = 0: a weight that is exactly 0 stays dead
        state["strength"] = p.detach().abs().clone()
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GradRewiring does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state = self._init_state(p, group)
                g = p.grad
                sgn, theta = state["sign"], state["strength"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = float(state["step"])
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                lr_hat = lr / (1 - beta1 ** t)
                den = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(eps)
                prior = None
                if alpha > eps:  # official code: no prior (and no mu) when alpha <= eps
                    prior = (theta - self.mu(alpha, group["target_sparsity"])).sign_()  # pre-step theta
                # Adam on the redefined gradient s * g (Adam is sign-equivariant: s * m / den).
                theta.addcdiv_(sgn * m, den, value=-lr_hat)
                if prior is not None:
                    theta.add_(prior, alpha=-alpha * lr_hat)
                p.copy_(sgn * theta.clamp(min=0))
        return loss

    # -- masks ---------------------------------------------------------------------------------
    def masks(self) -> Dict[torch.Tensor, torch.Tensor]:
        """{parameter: bool mask}; True where the synapse exists (theta > 0 and sign != 0)."""
        out = {}
        for group in self.param_groups:
            for p in group["params"]:
                out[p] = p.detach() != 0
        return out

    def named_masks(self, model: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
        """{parameter name: bool mask} for apply_masks. Names come from named params given to the
        constructor (from_model does that) or, failing that, from `model`."""
        by_id = {}
        if model is not None:
            by_id = {id(p): n for n, p in unwrap(model).named_parameters()}
        out = {}
        for group in self.param_groups:
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                name = names[i] if names is not None else by_id.get(id(p))
                if name is None:
                    raise ValueError("GradRewiring.named_masks: parameters were given without names; pass "
                                     "named parameters (or use from_model), or pass the model")
                out[strip_prefix(name)] = p.detach() != 0
        return out

    def connectivity(self) -> float:
        """Fraction of managed weights with |w| >= 1e-10 (the official code's measure)."""
        kept = total = 0
        for group in self.param_groups:
            for p in group["params"]:
                kept += int((p.detach().abs() >= 1e-10).sum())
                total += p.numel()
        return kept / total if total else 0.0
