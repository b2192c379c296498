"""Multi-step neuron modules on the fused lif op: LIF, IF and ParametricLIF (SpikingJelly's LIFNode, IFNode
and ParametricLIFNode, bit-compatible in float32/float64). One base class (FusedNeuron) holds everything
they share (state, step modes, backend, validation, SpikingJelly import); each subclass only says how its
membrane charges (snnsparse.functional.neuron_with_h's `charge`)."""
import math
from typing import Optional

import torch
import torch.nn as nn

from .. import functional as SF
from .layers import check_backend_name

# SpikingJelly surrogate class name -> snnsparse surrogate name (same formulas).
_SJ_SURROGATES = {"Sigmoid": "sigmoid", "ATan": "atan", "PiecewiseQuadratic": "piecewise_quadratic",
                  "SoftSign": "soft_sign", "Erf": "erf"}


class FusedNeuron(nn.Module):
    """Base of the fused multi-step neurons (LIF, IF, ParametricLIF); not used directly.

    step_mode="m" (default): input [T, ...] -> spikes [T, ...], fused over time. Stateless across
    calls by default (each call starts from v_reset), which is what a time-major network wants;
    stateful=True carries v from one call to the next until reset() (SpikingJelly's behaviour).
    step_mode="s": one time step per call, input [N, ...], always stateful (SpikingJelly's
    single-step mode; reset() between sequences).
    After a call, `v` holds V[T-1]; with record_h=True, `h_seq` holds the pre-fire membrane potential
    [T, ...] (used by the criticality pruner). A stateful neuron keeps v attached to the autograd graph,
    as SpikingJelly's does, so that a sequence fed step by step (step_mode="s") back-propagates through
    time exactly like SpikingJelly's; reset() (or functional.reset_net) between sequences, or detach v to
    truncate. A stateless one stores it detached.
    """

    CHARGE = ""        # the lif op's charge ("lif", "if", "plif")
    SJ_CLASS = ""      # the SpikingJelly class from_spikingjelly takes

    def __init__(self, v_threshold: float = 1.0, v_reset: Optional[float] = 0.0, decay_input: bool = True,
                 detach_reset: bool = False, surrogate: str = "sigmoid", alpha: Optional[float] = None, *,
                 tau: float = 2.0, backend: str = "auto", stateful: bool = False, record_h: bool = False,
                 step_mode: str = "m"):
        super().__init__()
        name = type(self).__name__
        if not self.CHARGE:
            raise TypeError("FusedNeuron is the base class of ss.nn.LIF, IF and ParametricLIF; build one of those")
        if step_mode not in ("m", "s"):
            raise ValueError(f"{name}: step_mode must be 'm' or 's', got {step_mode!r}")
        check_backend_name(backend, name, dense=False)
        SF.check_bool(stateful, "stateful", where=name)
        SF.check_bool(record_h, "record_h", where=name)
        self.step_mode = step_mode
        stateful = stateful or step_mode == "s"
        # Every argument checked here, in the constructor, with the messages of the functional API.
        tau, v_threshold, v_reset, _, _ = SF._lif_args(torch.zeros(1), None, tau, v_threshold, v_reset, surrogate,
                                                       alpha, decay_input, detach_reset, charge=self.CHARGE)
        self.decay_input, self.detach_reset = decay_input, detach_reset
        self.surrogate, self.alpha = surrogate, alpha
        self.backend, self.stateful, self.record_h = backend, stateful, record_h
        self.tau, self.v_threshold, self.v_reset = tau, v_threshold, v_reset
        self.v: Optional[torch.Tensor] = None
        self.h_seq: Optional[torch.Tensor] = None

    def reset(self):
        self.v = None
        self.h_seq = None

    # -- SpikingJelly --------------------------------------------------------------------------------
    @classmethod
    def _sj_common(cls, node, backend: str) -> dict:
        """The constructor arguments every neuron shares, read from a SpikingJelly node."""
        if type(node).__name__ != cls.SJ_CLASS or not type(node).__module__.startswith("spikingjelly."):
            raise TypeError(f"{cls.__name__}.from_spikingjelly: expected SpikingJelly's {cls.SJ_CLASS}, got "
                            f"{type(node).__module__}.{type(node).__qualname__}")
        sg_name = _SJ_SURROGATES.get(type(node.surrogate_function).__name__)
        if sg_name is None:
            raise ValueError(f"{cls.__name__}.from_spikingjelly: surrogate {type(node.surrogate_function).__name__} "
                             f"is not supported (supported: {sorted(_SJ_SURROGATES)})")
        return dict(v_threshold=float(node.v_threshold), v_reset=node.v_reset, detach_reset=bool(node.detach_reset),
                    surrogate=sg_name, alpha=float(node.surrogate_function.alpha), backend=backend, stateful=True,
                    step_mode=getattr(node, "step_mode", "s"))

    def _take_sj_state(self, node) -> "FusedNeuron":
        """Carry the node's current membrane potential (a tensor after a forward without reset)."""
        v = getattr(node, "v", None)
        if isinstance(v, torch.Tensor):
            self.v = v.detach().clone()
        return self

    # -- forward -------------------------------------------------------------------------------------
    def _charge_kwargs(self) -> dict:
        """The charge's own arguments of SF.neuron_with_h (tau for LIF, w for ParametricLIF)."""
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "s":
            return self._forward_seq(x.unsqueeze(0))[0]
        return self._forward_seq(x)

    # None: spikes of the input's dtype. torch.uint8 / torch.bool: spikes written one byte each, which the
    # cpp event kernels read as they are (set by optimize_for_inference on its inference-only copy where
    # every reader of this neuron takes bytes; no gradient).
    spike_dtype: Optional[torch.dtype] = None

    def _forward_seq(self, x_seq: torch.Tensor) -> torch.Tensor:
        v0 = None
        if self.stateful and self.v is not None and self.v.shape == x_seq.shape[1:]:
            v0 = self.v.to(dtype=x_seq.dtype, device=x_seq.device)  # SpikingJelly's state follows the input
        s, v, h = SF.neuron_with_h(x_seq, v0, charge=self.CHARGE, v_threshold=self.v_threshold,
                                   v_reset=self.v_reset, decay_input=self.decay_input,
                                   detach_reset=self.detach_reset, surrogate=self.surrogate, alpha=self.alpha,
                                   backend=self.backend, return_h=self.record_h, spike_dtype=self.spike_dtype,
                                   **self._charge_kwargs())
        v = v if self.stateful else v.detach()
        d = self.__dict__
        if "v" in d and "h_seq" in d:
            # Plain attributes (set in __init__; a buffer, parameter or submodule never lives in __dict__), where
            # nn.Module.__setattr__ would put them after its checks, at ~4 us a write (two per call).
            d["v"], d["h_seq"] = v, h
        else:
            self.v, self.h_seq = v, h
        return s

    def _repr_charge(self) -> str:
        return ""

    def extra_repr(self):
        return (f"{self._repr_charge()}v_threshold={self.v_threshold}, v_reset={self.v_reset}, "
                f"detach_reset={self.detach_reset}, surrogate={self.surrogate!r}, alpha={self.alpha}, "
                f"backend={self.backend!r}, step_mode={self.step_mode!r}"
                + (f", spike_dtype={self.spike_dtype}" if self.spike_dtype is not None else ""))


class LIF(FusedNeuron):
    """LIF neuron (SpikingJelly LIFNode; same parameters as ss.functional.lif). See FusedNeuron for the
    step modes and state."""

    CHARGE = "lif"
    SJ_CLASS = "LIFNode"

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, v_reset: Optional[float] = 0.0,
                 decay_input: bool = True, detach_reset: bool = False, surrogate: str = "sigmoid",
                 alpha: Optional[float] = None, *, backend: str = "auto", stateful: bool = False,
                 record_h: bool = False, step_mode: str = "m"):
        super().__init__(v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, tau=tau,
                         backend=backend, stateful=stateful, record_h=record_h, step_mode=step_mode)

    @classmethod
    def from_spikingjelly(cls, node, *, backend: str = "auto") -> "LIF":
        """The LIF equal to a SpikingJelly LIFNode (same tau, threshold, reset, surrogate, step mode and
        current v). Like SpikingJelly's node it keeps v across calls until reset()."""
        return cls(tau=float(node.tau), decay_input=bool(node.decay_input),
                   **cls._sj_common(node, backend))._take_sj_state(node)

    def _charge_kwargs(self) -> dict:
        return {"tau": self.tau}

    def _repr_charge(self) -> str:
        return f"tau={self.tau}, decay_input={self.decay_input}, "


class IF(FusedNeuron):
    """Integrate-and-fire neuron (SpikingJelly IFNode): H[t] = V[t-1] + X[t]; same threshold, reset,
    surrogate, step modes and state as LIF (see FusedNeuron)."""

    CHARGE = "if"
    SJ_CLASS = "IFNode"

    def __init__(self, v_threshold: float = 1.0, v_reset: Optional[float] = 0.0, detach_reset: bool = False,
                 surrogate: str = "sigmoid", alpha: Optional[float] = None, *, backend: str = "auto",
                 stateful: bool = False, record_h: bool = False, step_mode: str = "m"):
        super().__init__(v_threshold, v_reset, True, detach_reset, surrogate, alpha, backend=backend,
                         stateful=stateful, record_h=record_h, step_mode=step_mode)

    @classmethod
    def from_spikingjelly(cls, node, *, backend: str = "auto") -> "IF":
        """The IF equal to a SpikingJelly IFNode (same threshold, reset, surrogate, step mode and current v).
        Like SpikingJelly's node it keeps v across calls until reset()."""
        return cls(**cls._sj_common(node, backend))._take_sj_state(node)


class ParametricLIF(FusedNeuron):
    """Parametric LIF neuron (SpikingJelly ParametricLIFNode, Fang et al. 2021): a LIF whose 1/tau = k =
    sigmoid(w) is learned, w a 0-dim Parameter (state_dict key "w", as SpikingJelly's) initialised to
    -log(init_tau - 1). H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) * k (decay_input=False:
    V[t-1] - (V[t-1] - V_reset) * k + X[t]). Step modes and state as LIF (see FusedNeuron)."""

    CHARGE = "plif"
    SJ_CLASS = "ParametricLIFNode"

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: Optional[float] = 0.0, detach_reset: bool = False, surrogate: str = "sigmoid",
                 alpha: Optional[float] = None, *, backend: str = "auto", stateful: bool = False,
                 record_h: bool = False, step_mode: str = "m"):
        init_tau = SF.check_real(init_tau, "init_tau", where="ParametricLIF")
        if not (init_tau > 1.0 and math.isfinite(init_tau)):
            raise ValueError(f"ParametricLIF: init_tau must be a finite number > 1 (as in SpikingJelly's "
                             f"ParametricLIFNode), got {init_tau}")
        super().__init__(v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, backend=backend,
                         stateful=stateful, record_h=record_h, step_mode=step_mode)
        self.w = nn.Parameter(torch.as_tensor(-math.log(init_tau - 1.0)))  # SpikingJelly's initialisation

    @classmethod
    def from_spikingjelly(cls, node, *, backend: str = "auto") -> "ParametricLIF":
        """The ParametricLIF equal to a SpikingJelly ParametricLIFNode: its w (value, dtype, device,
        requires_grad) copied, and the same threshold, reset, surrogate, step mode and current v. Like
        SpikingJelly's node it keeps v across calls until reset()."""
        new = cls(decay_input=bool(node.decay_input), **cls._sj_common(node, backend))
        SF.check_plif_w(node.w, "ParametricLIF.from_spikingjelly")
        new.w = nn.Parameter(node.w.detach().clone(), requires_grad=node.w.requires_grad)
        return new._take_sj_state(node)

    @property
    def k(self) -> torch.Tensor:
        """1/tau = sigmoid(w) (differentiable)."""
        return torch.sigmoid(self.w)

    def _charge_kwargs(self) -> dict:
        return {"w": self.w}

    def _repr_charge(self) -> str:
        w = float(self.w.detach())
        return f"tau={1.0 + math.exp(-w):.6g} (w={w:.6g}), decay_input={self.decay_input}, "
