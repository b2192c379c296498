"""Surrogate spike functions: Heaviside forward, smooth derivative backward.

Formulas and default alphas are SpikingJelly's (activation_based/surrogate.py), x = H - V_th:
    sigmoid              alpha=4   g'(x) = alpha * sig(alpha x) * (1 - sig(alpha x))
    atan                 alpha=2   g'(x) = alpha / 2 / (1 + (pi/2 * alpha * x)^2)
    piecewise_quadratic  alpha=1   g'(x) = max(0, alpha - alpha^2 |x|)   (0 where |x| > 1/alpha)
    soft_sign            alpha=2   g'(x) = alpha / (2 (1 + alpha |x|)^2)
    erf                  alpha=2   g'(x) = alpha / sqrt(pi) * exp(-(alpha x)^2)
The forward is always x >= 0 (a neuron at exactly threshold fires).
"""
import math

import torch

DEFAULT_ALPHA = {"sigmoid": 4.0, "atan": 2.0, "piecewise_quadratic": 1.0, "soft_sign": 2.0, "erf": 2.0}
NAMES = tuple(DEFAULT_ALPHA)


def check(name: str, alpha):
    """Validate a surrogate name; return (name, alpha) with alpha defaulted to SpikingJelly's."""
    if name not in DEFAULT_ALPHA:
        raise ValueError(f"surrogate must be one of {NAMES}, got {name!r}")
    alpha = DEFAULT_ALPHA[name] if alpha is None else float(alpha)
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")
    return name, alpha


def grad(name: str, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """dS/dH of surrogate `name` at x = H - V_th (same dtype as x)."""
    if name == "sigmoid":
        s = torch.sigmoid(alpha * x)
        return alpha * s * (1 - s)
    if name == "atan":
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)
    if name == "piecewise_quadratic":
        return torch.clamp(alpha - alpha * alpha * x.abs(), min=0)
    if name == "soft_sign":
        return alpha / (2 * (1 + alpha * x.abs()) ** 2)
    if name == "erf":
        return (alpha / math.sqrt(math.pi)) * torch.exp(-((alpha * x) ** 2))
    raise ValueError(f"surrogate must be one of {NAMES}, got {name!r}")


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, name, alpha):
        ctx.save_for_backward(x)
        ctx.name, ctx.alpha = name, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * grad(ctx.name, x, ctx.alpha), None, None


def spike(x: torch.Tensor, name: str = "sigmoid", alpha: float = 4.0) -> torch.Tensor:
    """Heaviside(x) with the surrogate gradient of `name`."""
    return _Spike.apply(x, name, alpha)
