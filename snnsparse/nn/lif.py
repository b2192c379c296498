"""Multi-step LIF neuron module (SpikingJelly LIFNode, step_mode="m")."""
from typing import Optional

import torch
import torch.nn as nn

from .. import functional as SF


class LIF(nn.Module):
    """Multi-step LIF: input [T, ...] -> spikes [T, ...] (same parameters as ss.functional.lif).

    Stateless across calls by default (each call starts from v_reset), which is what a
    time-major network wants; stateful=True carries v from one call to the next until reset().
    After a call, `v` holds V[T-1] (detached); with record_h=True, `h_seq` holds the pre-fire
    membrane potential [T, ...] (used by the criticality pruner).
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, v_reset: Optional[float] = 0.0,
                 decay_input: bool = True, detach_reset: bool = False, surrogate: str = "sigmoid",
                 alpha: Optional[float] = None, *, backend: str = "auto", stateful: bool = False,
                 record_h: bool = False):
        super().__init__()
        self.tau, self.v_threshold, self.v_reset = float(tau), float(v_threshold), v_reset
        self.decay_input, self.detach_reset = decay_input, detach_reset
        self.surrogate, self.alpha = surrogate, alpha
        self.backend, self.stateful, self.record_h = backend, stateful, record_h
        SF._lif_args(torch.zeros(1), None, self.tau, self.v_threshold, v_reset, surrogate, alpha)
        self.v: Optional[torch.Tensor] = None
        self.h_seq: Optional[torch.Tensor] = None

    def reset(self):
        self.v = None
        self.h_seq = None

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
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
                f"surrogate={self.surrogate!r}, alpha={self.alpha}, backend={self.backend!r}")
