"""Multi-step LIF neuron module (SpikingJelly LIFNode, step_mode="m")."""
from typing import Optional

import torch
import torch.nn as nn

from .. import functional as SF
from .layers import check_backend_name


class LIF(nn.Module):
    """LIF neuron (same parameters as ss.functional.lif).

    step_mode="m" (default): input [T, ...] -> spikes [T, ...], fused over time. Stateless across
    calls by default (each call starts from v_reset), which is what a time-major network wants;
    stateful=True carries v from one call to the next until reset() (SpikingJelly's behaviour).
    step_mode="s": one time step per call, input [N, ...], always stateful (SpikingJelly's
    single-step mode; reset() between sequences).
    After a call, `v` holds V[T-1] (detached); with record_h=True, `h_seq` holds the pre-fire
    membrane potential [T, ...] (used by the criticality pruner).
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, v_reset: Optional[float] = 0.0,
                 decay_input: bool = True, detach_reset: bool = False, surrogate: str = "sigmoid",
                 alpha: Optional[float] = None, *, backend: str = "auto", stateful: bool = False,
                 record_h: bool = False, step_mode: str = "m"):
        super().__init__()
        if step_mode not in ("m", "s"):
            raise ValueError(f"LIF: step_mode must be 'm' or 's', got {step_mode!r}")
        check_backend_name(backend, "LIF", dense=False)
        self.step_mode = step_mode
        stateful = stateful or step_mode == "s"
        self.decay_input, self.detach_reset = decay_input, detach_reset
        self.surrogate, self.alpha = surrogate, alpha
        self.backend, self.stateful, self.record_h = backend, stateful, record_h
        # Every argument checked here, in the constructor, with the messages of ss.functional.lif.
        tau, v_threshold, v_reset, _, _ = SF._lif_args(torch.zeros(1), None, tau, v_threshold, v_reset, surrogate,
                                                       alpha, decay_input, detach_reset)
        self.tau, self.v_threshold, self.v_reset = tau, v_threshold, v_reset
        self.v: Optional[torch.Tensor] = None
        self.h_seq: Optional[torch.Tensor] = None

    def reset(self):
        self.v = None
        self.h_seq = None

    @classmethod
    def from_spikingjelly(cls, node, *, backend: str = "auto") -> "LIF":
        """The LIF equal to a SpikingJelly LIFNode (same tau, threshold, reset, surrogate, step mode).
        Like SpikingJelly's node it keeps v across calls until reset()."""
        sg_name = _SJ_SURROGATES.get(type(node.surrogate_function).__name__)
        if sg_name is None:
            raise ValueError(f"LIF.from_spikingjelly: surrogate {type(node.surrogate_function).__name__} is not "
                             f"supported (supported: {sorted(_SJ_SURROGATES)})")
        return cls(tau=float(node.tau), v_threshold=float(node.v_threshold), v_reset=node.v_reset,
                   decay_input=bool(node.decay_input), detach_reset=bool(node.detach_reset), surrogate=sg_name,
                   alpha=float(node.surrogate_function.alpha), backend=backend, stateful=True,
                   step_mode=getattr(node, "step_mode", "s"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "s":
            return self._forward_seq(x.unsqueeze(0))[0]
        return self._forward_seq(x)

    def _forward_seq(self, x_seq: torch.Tensor) -> torch.Tensor:
        v0 = self.v if (self.stateful and self.v is not None and self.v.shape == x_seq.shape[1:]) else None
        s, v, h = SF.lif_with_h(x_seq, v0, tau=self.tau, v_threshold=self.v_threshold, v_reset=self.v_reset,
                                decay_input=self.decay_input, detach_reset=self.detach_reset,
                                surrogate=self.surrogate, alpha=self.alpha, backend=self.backend,
                                return_h=self.record_h)
        self.v = v.detach()
        self.h_seq = h
        return s

    def extra_repr(self):
        return (f"tau={self.tau}, v_threshold={self.v_threshold}, v_reset={self.v_reset}, "
                f"decay_input={self.decay_input}, detach_reset={self.detach_reset}, "
                f"surrogate={self.surrogate!r}, alpha={self.alpha}, backend={self.backend!r}, "
                f"step_mode={self.step_mode!r}")


# SpikingJelly surrogate class name -> snnsparse surrogate name (same formulas).
_SJ_SURROGATES = {"Sigmoid": "sigmoid", "ATan": "atan", "PiecewiseQuadratic": "piecewise_quadratic",
                  "SoftSign": "soft_sign", "Erf": "erf"}
