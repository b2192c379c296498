"""Leaky: the discrete LIF neuron of snnTorch's `snn.Leaky`, step for step.

snnTorch's update is not SpikingJelly's (ss.nn.LIF): the membrane decays by a multiply
(beta * mem, not mem - mem / tau), the reset is decided from the *previous* step's membrane and
subtracted after the decay, and a neuron fires only strictly above threshold. Per step, with
beta clamped to [0, 1] every step as snnTorch does:

    reset = spike_fn(mem - threshold)                 # from the previous step's mem, detached
    "subtract": mem = beta * mem + x - reset * threshold
    "zero":     mem = (1 - reset) * mem;  mem = beta * mem + x
    "none":     mem = beta * mem + x
    spk = spike_fn(mem - threshold) * graded_spikes_factor   # spike_fn(u) = (u > 0)
    reset_delay=False: do_reset = spk / graded_spikes_factor - reset, then
        "subtract": mem = mem - do_reset * threshold;  "zero": mem = mem - do_reset * mem

This module runs exactly these torch operations in this order (pure torch: no fused kernel
reproduces snnTorch's order), so float32 results equal snnTorch's bit for bit; tests compare them.
The layers around it (Linear / Conv2d) become Spike* layers with convert().

Calling conventions:
- step_mode="s" (what convert() gives a snnTorch model): snnTorch's own, one step per call:
  forward(x, mem=None) returns spk, or (spk, mem) when snnTorch would (init_hidden=False or
  output=True: `returns_mem`). The membrane is kept in `self.mem` between calls; reset() clears it.
- step_mode="m": x is [T, ...]; returns spikes [T, ...]. Each call starts from mem = 0 unless
  stateful=True (as ss.nn.LIF).
"""
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..ops import surrogate as sg

RESET_MECHANISMS = ("subtract", "zero", "none")  # snnTorch's reset_mechanism_val 0, 1, 2


class _StrictSpike(torch.autograd.Function):
    """(u > 0) forward, as snnTorch fires; surrogate derivative of snnsparse.ops.surrogate backward."""

    @staticmethod
    def forward(ctx, u, name, alpha):
        ctx.save_for_backward(u)
        ctx.name, ctx.alpha = name, alpha
        return (u > 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad * sg.grad(ctx.name, u, ctx.alpha), None, None


def strict_spike(u: torch.Tensor, name: str = "atan", alpha: float = 2.0) -> torch.Tensor:
    """Heaviside (u > 0) with a surrogate gradient (snnTorch's default is atan, alpha 2)."""
    return _StrictSpike.apply(u, name, alpha)


def _as_tensor(value, name: str) -> torch.Tensor:
    t = value.detach().clone() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"Leaky: {name} must be finite, got {t}")
    return t


class Leaky(nn.Module):
    """snnTorch's Leaky neuron, exactly (see the module docstring).

    beta, threshold, graded_spikes_factor: floats or tensors (a tensor is per neuron, broadcast
    against the input as in snnTorch). learn_beta / learn_threshold make them Parameters.
    spike_fn: the spike function u -> spikes, applied to mem - threshold (default: (u > 0) with
    snnsparse's `surrogate` derivative, atan alpha 2 as snnTorch's default). convert() passes the
    snnTorch module's own spike_grad, so gradients are snnTorch's too.
    """

    def __init__(self, beta, threshold=1.0, *, reset_mechanism: str = "subtract", reset_delay: bool = True,
                 graded_spikes_factor=1.0, surrogate: str = "atan", alpha: Optional[float] = None,
                 spike_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, learn_beta: bool = False,
                 learn_threshold: bool = False, step_mode: str = "m", stateful: bool = False,
                 returns_mem: bool = False):
        super().__init__()
        if reset_mechanism not in RESET_MECHANISMS:
            raise ValueError(f"Leaky: reset_mechanism must be one of {RESET_MECHANISMS}, got {reset_mechanism!r}")
        if step_mode not in ("m", "s"):
            raise ValueError(f"Leaky: step_mode must be 'm' or 's', got {step_mode!r}")
        for flag, name in ((reset_delay, "reset_delay"), (learn_beta, "learn_beta"), (stateful, "stateful"),
                           (learn_threshold, "learn_threshold"), (returns_mem, "returns_mem")):
            if not isinstance(flag, bool):
                raise TypeError(f"Leaky: {name} must be a bool, got {type(flag).__name__}")
        self.surrogate, self.alpha = sg.check(surrogate, alpha)
        if spike_fn is not None and not callable(spike_fn):
            raise TypeError(f"Leaky: spike_fn must be callable, got {type(spike_fn).__name__}")
        self.spike_fn = spike_fn
        gsf = _as_tensor(graded_spikes_factor, "graded_spikes_factor")
        if bool((gsf == 0).any()):
            raise ValueError("Leaky: graded_spikes_factor must be nonzero (reset_delay=False divides by it)")
        for name, value, learn in (("beta", beta, learn_beta), ("threshold", threshold, learn_threshold)):
            t = _as_tensor(value, name)
            if learn:
                setattr(self, name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)
        self.register_buffer("graded_spikes_factor", gsf)
        self.reset_mechanism, self.reset_delay = reset_mechanism, reset_delay
        self.step_mode, self.stateful, self.returns_mem = step_mode, stateful or step_mode == "s", returns_mem
        self.mem: Optional[torch.Tensor] = None

    @classmethod
    def from_snntorch(cls, node) -> "Leaky":
        """The Leaky equal to a snnTorch `snn.Leaky` (callers check snntorch_blocker first). Keeps its
        spike_grad callable, its learnable parameters as Parameters, and its calling convention
        (step_mode "s", (spk, mem) returned where snnTorch returns them)."""
        new = cls(node.beta, node.threshold, reset_mechanism=node.reset_mechanism, reset_delay=bool(node.reset_delay),
                  graded_spikes_factor=node.graded_spikes_factor, spike_fn=node.spike_grad,
                  learn_beta=isinstance(node.beta, nn.Parameter),
                  learn_threshold=isinstance(node.threshold, nn.Parameter), step_mode="s",
                  returns_mem=bool(node.output or not node.init_hidden))
        for name in ("beta", "threshold", "graded_spikes_factor"):  # same dtype/device/values, no rounding
            src = getattr(node, name)
            getattr(new, name).data = src.detach().clone()
        if isinstance(node.graded_spikes_factor, nn.Parameter):
            new.graded_spikes_factor = nn.Parameter(new.graded_spikes_factor.data)
        return new

    def reset(self):
        self.mem = None

    def reset_mem(self) -> torch.Tensor:
        """snnTorch's API (forward loops call it): zero the membrane and return it."""
        self.mem = torch.zeros_like(self.mem) if self.mem is not None else self.beta.new_zeros(0)
        return self.mem

    init_leaky = reset_mem  # snnTorch's deprecated name, still in tutorials

    def _spike(self, u):
        return self.spike_fn(u) if self.spike_fn is not None else strict_spike(u, self.surrogate, self.alpha)

    def _step(self, x, mem):
        """One snnTorch step: (spk, new mem); the same torch operations in the same order."""
        reset = self._spike(mem - self.threshold).clone().detach()
        beta = self.beta.clamp(0, 1)
        if self.reset_mechanism == "subtract":
            mem = beta * mem + x - reset * self.threshold
        elif self.reset_mechanism == "zero":
            mem = (1 - reset) * mem
            mem = beta * mem + x
        else:
            mem = beta * mem + x
        spk = self._spike(mem - self.threshold)
        spk = spk * self.graded_spikes_factor
        if not self.reset_delay:
            do_reset = spk / self.graded_spikes_factor - reset
            if self.reset_mechanism == "subtract":
                mem = mem - do_reset * self.threshold
            elif self.reset_mechanism == "zero":
                mem = mem - do_reset * mem
        return spk, mem

    def forward(self, x: torch.Tensor, mem: Optional[torch.Tensor] = None):
        if self.step_mode == "s":
            if mem is None:
                mem = self.mem
            if mem is None or mem.shape != x.shape:
                mem = torch.zeros_like(x)  # snnTorch starts (and restarts on a new shape) from zeros
            spk, self.mem = self._step(x, mem)
            return (spk, self.mem) if self.returns_mem else spk
        if mem is None:
            mem = self.mem if (self.stateful and self.mem is not None and self.mem.shape == x.shape[1:]) else None
        if mem is None:
            mem = torch.zeros_like(x[0]) if x.shape[0] else x.new_zeros(x.shape[1:])
        out = []
        for xt in x:
            spk, mem = self._step(xt, mem)
            out.append(spk)
        self.mem = mem.detach()
        spikes = torch.stack(out) if out else x.new_zeros(x.shape)
        return (spikes, mem) if self.returns_mem else spikes

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A snnTorch checkpoint has reset_mechanism_val (0 subtract, 1 zero, 2 none): it must say this
        # module's mechanism (loading must never change the update silently), then it is dropped.
        key = prefix + "reset_mechanism_val"
        if key in state_dict:
            val = state_dict.pop(key)
            code = int(val) if isinstance(val, torch.Tensor) and val.numel() == 1 else None
            if code is None or code not in range(3) or RESET_MECHANISMS[code] != self.reset_mechanism:
                error_msgs.append(f"{key}: the checkpoint's reset mechanism {val!r} (0 subtract, 1 zero, 2 none) is not "
                                  f"this Leaky's {self.reset_mechanism!r}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self):
        def show(t):
            return f"{t.item():g}" if t.numel() == 1 else f"tensor{list(t.shape)}"
        return (f"beta={show(self.beta)}, threshold={show(self.threshold)}, reset_mechanism={self.reset_mechanism!r}, "
                f"reset_delay={self.reset_delay}, graded_spikes_factor={show(self.graded_spikes_factor)}, "
                f"spike_fn={'surrogate ' + repr(self.surrogate) if self.spike_fn is None else 'custom'}, "
                f"step_mode={self.step_mode!r}")


def snntorch_blocker(node) -> Optional[str]:
    """Why a snnTorch Leaky cannot become ss.nn.Leaky exactly (None when it can)."""
    if getattr(node, "inhibition", False):
        return "inhibition=True (only the batch's largest membrane fires) is not supported by ss.nn.Leaky"
    if getattr(node, "state_quant", False):
        return "state_quant quantises the membrane every step, which ss.nn.Leaky does not do"
    if getattr(node, "reset_mechanism", None) not in RESET_MECHANISMS:
        return f"reset_mechanism {getattr(node, 'reset_mechanism', None)!r} is not one of {RESET_MECHANISMS}"
    return None


def is_snntorch_leaky(module: nn.Module) -> bool:
    """Exactly snnTorch's Leaky class (a subclass may change the update)."""
    cls = type(module)
    return cls.__name__ == "Leaky" and cls.__module__.startswith("snntorch.")
