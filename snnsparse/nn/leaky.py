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

SnnTorchNeuron holds what Leaky shares with ss.nn.Synaptic (snnTorch's current-based neuron,
snnsparse/nn/synaptic.py): the options, these conventions, the firing and reset_delay=False tail of
the step, from_snntorch and snnTorch checkpoints; each class defines only its state update.
"""
from typing import Callable, Dict, Optional, Tuple

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


def _as_tensor(value, name: str, owner: str) -> torch.Tensor:
    t = value.detach().clone() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{owner}: {name} must be finite, got {t}")
    return t


class SnnTorchNeuron(nn.Module):
    """What ss.nn.Leaky and ss.nn.Synaptic share: options, calling conventions (step modes, state,
    reset), the firing / delayed-reset tail of snnTorch's step, from_snntorch and checkpoints.

    A subclass names its decay rates (DECAYS, snnTorch's argument order, each a buffer or, with
    learn_<name>, a Parameter, clamped to [0, 1] every step) and its hidden states (STATES, in
    snnTorch's return order, the membrane last), and defines _integrate: the state update of one step
    before firing, reset mechanism included."""

    DECAYS: Tuple[str, ...] = ()
    STATES: Tuple[str, ...] = ()

    def __init__(self, decays: Dict[str, Tuple[object, bool]], threshold=1.0, *, reset_mechanism: str = "subtract",
                 reset_delay: bool = True, graded_spikes_factor=1.0, surrogate: str = "atan",
                 surrogate_alpha: Optional[float] = None,
                 spike_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, learn_threshold: bool = False,
                 step_mode: str = "m", stateful: bool = False, returns_mem: bool = False):
        super().__init__()
        owner = type(self).__name__
        if reset_mechanism not in RESET_MECHANISMS:
            raise ValueError(f"{owner}: reset_mechanism must be one of {RESET_MECHANISMS}, got {reset_mechanism!r}")
        if step_mode not in ("m", "s"):
            raise ValueError(f"{owner}: step_mode must be 'm' or 's', got {step_mode!r}")
        flags = [(reset_delay, "reset_delay"), (stateful, "stateful"), (learn_threshold, "learn_threshold"),
                 (returns_mem, "returns_mem")] + [(learn, f"learn_{name}") for name, (_, learn) in decays.items()]
        for flag, name in flags:
            if not isinstance(flag, bool):
                raise TypeError(f"{owner}: {name} must be a bool, got {type(flag).__name__}")
        self.surrogate, self.surrogate_alpha = sg.check(surrogate, surrogate_alpha)
        if spike_fn is not None and not callable(spike_fn):
            raise TypeError(f"{owner}: spike_fn must be callable, got {type(spike_fn).__name__}")
        self.spike_fn = spike_fn
        gsf = _as_tensor(graded_spikes_factor, "graded_spikes_factor", owner)
        if bool((gsf == 0).any()):
            raise ValueError(f"{owner}: graded_spikes_factor must be nonzero (reset_delay=False divides by it)")
        for name, (value, learn) in (*decays.items(), ("threshold", (threshold, learn_threshold))):
            t = _as_tensor(value, name, owner)
            if learn:
                setattr(self, name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)
        self.register_buffer("graded_spikes_factor", gsf)
        self.reset_mechanism, self.reset_delay = reset_mechanism, reset_delay
        self.step_mode, self.stateful, self.returns_mem = step_mode, stateful or step_mode == "s", returns_mem
        self.reset()

    @classmethod
    def from_snntorch(cls, node):
        """The module equal to a snnTorch neuron of the same name (callers check snntorch_blocker
        first). Keeps its spike_grad callable, its learnable parameters as Parameters, and its calling
        convention (step_mode "s", the states returned where snnTorch returns them)."""
        learn = {f"learn_{name}": isinstance(getattr(node, name), nn.Parameter) for name in cls.DECAYS}
        new = cls(*(getattr(node, name) for name in cls.DECAYS), node.threshold, reset_mechanism=node.reset_mechanism,
                  reset_delay=bool(node.reset_delay), graded_spikes_factor=node.graded_spikes_factor,
                  spike_fn=node.spike_grad, learn_threshold=isinstance(node.threshold, nn.Parameter), step_mode="s",
                  returns_mem=bool(node.output or not node.init_hidden), **learn)
        for name in (*cls.DECAYS, "threshold", "graded_spikes_factor"):  # same dtype/device/values, no rounding
            src = getattr(node, name)
            getattr(new, name).data = src.detach().clone()
        if isinstance(node.graded_spikes_factor, nn.Parameter):
            new.graded_spikes_factor = nn.Parameter(new.graded_spikes_factor.data)
        return new

    def reset(self):
        for name in self.STATES:
            setattr(self, name, None)

    def reset_mem(self):
        """snnTorch's API (forward loops call it): zero the states and return them (snnTorch's order)."""
        for name in self.STATES:
            old = getattr(self, name)
            setattr(self, name, torch.zeros_like(old) if old is not None else self.threshold.new_zeros(0))
        states = tuple(getattr(self, name) for name in self.STATES)
        return states[0] if len(states) == 1 else states

    def _spike(self, u):
        return self.spike_fn(u) if self.spike_fn is not None else strict_spike(u, self.surrogate, self.surrogate_alpha)

    def _integrate(self, x, reset, *states) -> Tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _step(self, x, *states):
        """One snnTorch step: (spk, *new states); the same torch operations in the same order."""
        reset = self._spike(states[-1] - self.threshold).clone().detach()  # from the previous step's membrane
        *rest, mem = self._integrate(x, reset, *states)
        spk = self._spike(mem - self.threshold)
        spk = spk * self.graded_spikes_factor
        if not self.reset_delay:
            do_reset = spk / self.graded_spikes_factor - reset
            if self.reset_mechanism == "subtract":
                mem = mem - do_reset * self.threshold
            elif self.reset_mechanism == "zero":
                mem = mem - do_reset * mem
        return (spk, *rest, mem)

    def _forward(self, x: torch.Tensor, given: Tuple[Optional[torch.Tensor], ...]):
        """forward with the states passed by the caller (None: kept or zeros), in STATES order."""
        single = self.step_mode == "s"
        frame = x.shape if single else x.shape[1:]
        states = []
        for name, g in zip(self.STATES, given):
            s = g if g is not None else getattr(self, name) if self.stateful else None
            # snnTorch starts (and restarts on a new shape) from zeros; in step mode "m" a kept state of another
            # shape is dropped, one passed by the caller is used as given
            if s is None or (s.shape != frame and (single or g is None)):
                s = x.new_zeros(frame)
            states.append(s)
        if single:
            spk, *states = self._step(x, *states)
            for name, s in zip(self.STATES, states):
                setattr(self, name, s)
            return (spk, *states) if self.returns_mem else spk
        out = []
        for xt in x:
            spk, *states = self._step(xt, *states)
            out.append(spk)
        for name, s in zip(self.STATES, states):
            setattr(self, name, s.detach())
        spikes = torch.stack(out) if out else x.new_zeros(x.shape)
        return (spikes, *states) if self.returns_mem else spikes

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
                                  f"this {type(self).__name__}'s {self.reset_mechanism!r}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self):
        def show(t):
            return f"{t.item():g}" if t.numel() == 1 else f"tensor{list(t.shape)}"
        decays = "".join(f"{name}={show(getattr(self, name))}, " for name in self.DECAYS)
        return (f"{decays}threshold={show(self.threshold)}, reset_mechanism={self.reset_mechanism!r}, "
                f"reset_delay={self.reset_delay}, graded_spikes_factor={show(self.graded_spikes_factor)}, "
                f"spike_fn={'surrogate ' + repr(self.surrogate) if self.spike_fn is None else 'custom'}, "
                f"step_mode={self.step_mode!r}")


class Leaky(SnnTorchNeuron):
    """snnTorch's Leaky neuron, exactly (see the module docstring).

    beta, threshold, graded_spikes_factor: floats or tensors (a tensor is per neuron, broadcast
    against the input as in snnTorch). learn_beta / learn_threshold make them Parameters.
    spike_fn: the spike function u -> spikes, applied to mem - threshold (default: (u > 0) with
    snnsparse's `surrogate` derivative (its parameter `alpha`), atan alpha 2 as snnTorch's default).
    convert() passes the snnTorch module's own spike_grad, so gradients are snnTorch's too.
    Other options (reset_mechanism, reset_delay, graded_spikes_factor, spike_fn, learn_threshold,
    step_mode, stateful, returns_mem): see SnnTorchNeuron and the module docstring.
    """

    DECAYS, STATES = ("beta",), ("mem",)

    def __init__(self, beta, threshold=1.0, *, learn_beta: bool = False, alpha: Optional[float] = None, **options):
        super().__init__({"beta": (beta, learn_beta)}, threshold, surrogate_alpha=alpha, **options)

    @property
    def alpha(self) -> Optional[float]:
        """The surrogate's parameter (Leaky's name for it; Synaptic's alpha is its current decay)."""
        return self.surrogate_alpha

    @alpha.setter
    def alpha(self, value):
        self.surrogate_alpha = value

    init_leaky = SnnTorchNeuron.reset_mem  # snnTorch's deprecated name, still in tutorials

    def _integrate(self, x, reset, mem):
        beta = self.beta.clamp(0, 1)
        if self.reset_mechanism == "subtract":
            mem = beta * mem + x - reset * self.threshold
        elif self.reset_mechanism == "zero":
            mem = (1 - reset) * mem
            mem = beta * mem + x
        else:
            mem = beta * mem + x
        return (mem,)

    def forward(self, x: torch.Tensor, mem: Optional[torch.Tensor] = None):
        return self._forward(x, (mem,))


def snntorch_blocker(node) -> Optional[str]:
    """Why a snnTorch Leaky / Synaptic cannot become its ss.nn twin exactly (None when it can)."""
    ours = f"ss.nn.{type(node).__name__}"
    if getattr(node, "inhibition", False):
        return f"inhibition=True (only the batch's largest membrane fires) is not supported by {ours}"
    if getattr(node, "state_quant", False):
        return f"state_quant quantises the state every step, which {ours} does not do"
    if getattr(node, "reset_mechanism", None) not in RESET_MECHANISMS:
        return f"reset_mechanism {getattr(node, 'reset_mechanism', None)!r} is not one of {RESET_MECHANISMS}"
    return None


def is_snntorch(module: nn.Module, name: str) -> bool:
    """Exactly snnTorch's class `name` (a subclass may change the update)."""
    cls = type(module)
    return cls.__name__ == name and cls.__module__.startswith("snntorch.")
