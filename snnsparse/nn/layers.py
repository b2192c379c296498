"""SpikeLinear and SpikeConv2d.

They subclass nn.Linear / nn.Conv2d (same constructor, `weight` stays a plain Parameter) and add
`weight_mask`, a bool buffer of the weight's shape (True = keep). Binary input runs the
event-driven kernel of the chosen backend; non-binary input (the encoding layer sees pixels)
runs dense torch with the mask applied, and `last_input_binary` records which path ran so that
energy counting can charge MACs instead of SOPs. `backend` is any snnsparse backend name, "auto",
or (modules only) "dense": plain F.linear / F.conv2d with the masked weight, for baselines.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import backends
from .. import functional as SF
from ..ops.reference import masked_weight


def check_backend_name(backend, owner: str, *, dense: bool) -> str:
    """Refuse a backend name that no call could ever accept, when the module is built rather than at
    its first forward. Valid: snnsparse.backends.NAMES, "auto", and (dense=True: Spike* layers and
    convert) "dense". A known backend that is not available here is not refused: whether it is needs
    importing it (triton takes seconds), and a model may be built here to run elsewhere; its first
    forward raises BackendUnavailable with the reason."""
    valid = tuple(backends.NAMES) + ("auto",) + (("dense",) if dense else ())
    if not isinstance(backend, str):
        raise TypeError(f"{owner}: backend must be a str, one of {valid}, got {type(backend).__name__}")
    if backend not in valid:
        hint = ("; 'dense' is a SpikeLinear/SpikeConv2d setting (plain torch for those layers), a LIF always "
                "runs a kernel backend" if backend == "dense" else "")
        raise ValueError(f"{owner}: backend must be one of {valid}, got {backend!r}{hint}")
    return backend


class _SpikeMixin:
    backend: str
    dense_weight_grad: bool

    def _init_spike(self, backend: str):
        check_backend_name(backend, type(self).__name__, dense=True)
        self.register_buffer("weight_mask", torch.ones_like(self.weight, dtype=torch.bool))
        self.backend = backend
        # Grad R trains pruned synapses too: it sets this so backward returns the dense dL/dw.
        self.dense_weight_grad = False
        self.last_input_binary: Optional[bool] = None

    def set_mask(self, mask: torch.Tensor, *, name: Optional[str] = None) -> None:
        """Copy `mask` (a bool tensor of exactly the weight's shape) into weight_mask. `name` (the
        weight's parameter name in its model) is only used in error messages."""
        from ..pruning.masks import check_mask  # lazy: snnsparse.pruning imports this module

        check_mask(mask, self.weight.shape, f"mask for {name!r}" if name else f"{type(self).__name__}.set_mask: mask")
        with torch.no_grad():
            self.weight_mask.copy_(mask.to(torch.bool))

    def density(self) -> float:
        """Fraction of kept synapses."""
        return float(self.weight_mask.float().mean()) if self.weight_mask.numel() else 0.0

    def _event_or_dense(self, x: torch.Tensor, event, dense):
        """Run the event-driven kernel; fall back to dense torch when x is not binary.

        Binarity is not checked in a separate pass: the kernels (or the functional layer) refuse
        non-binary spikes with NonBinarySpikesError (a ValueError), which a pixel input triggers
        within its first values.
        A separate (x == 0 | x == 1).all() pass cost as much as the sparse kernel on a pruned
        VGG layer (see bench/RESULTS.md, "end to end").
        backend="dense" (a module-only setting) always runs plain torch with the masked weight and
        no checks: the honest "same model, dense torch" baseline of the benchmarks."""
        if self.backend == "dense":
            self.last_input_binary = None  # not looked at; the energy counter checks x itself
            return dense(x)
        try:
            out = event(x)
            self.last_input_binary = True
            return out
        except SF.NonBinarySpikesError:
            pass
        self.last_input_binary = False
        return dense(x)

    def _dense_weight(self):
        return masked_weight(self.weight, self.weight_mask, self.dense_weight_grad)

    @classmethod
    def _dense_state(cls, module, mask):
        """weight, bias and bool mask of a plain module, also one pruned with torch.nn.utils.prune
        (its 0/1 float mask is checked, then made bool). An explicit `mask` replaces the prune mask."""
        from ..pruning.masks import check_mask, torch_prune_mask  # lazy: snnsparse.pruning imports this module

        prune_mask = torch_prune_mask(module)
        weight = module.weight if prune_mask is None else module.weight_orig
        if mask is not None:
            check_mask(mask, weight.shape, f"{cls.__name__}.from_dense: mask")
        elif prune_mask is not None:
            mask = prune_mask
        else:
            mask = torch.ones_like(weight, dtype=torch.bool)
        return weight.detach(), None if module.bias is None else module.bias.detach(), mask

    def _load_dense(self, weight, bias, mask):
        with torch.no_grad():
            self.weight.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias)
            self.weight_mask.copy_(mask)
        return self


_PADDING_MODE_ONLY_ZEROS = "padding_mode must be 'zeros' (the only padding an event-driven kernel can skip)"


class SpikeLinear(_SpikeMixin, nn.Linear):
    """nn.Linear with a weight mask and an event-driven kernel for binary spikes.

    Input [..., in_features] (e.g. [T, B, K]); output [..., out_features].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 *, backend: str = "auto"):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_spike(backend)

    @classmethod
    def from_dense(cls, module: nn.Linear, mask: Optional[torch.Tensor] = None, *, backend: str = "auto"):
        """A SpikeLinear with `module`'s weights (and its torch.nn.utils.prune mask, if any)."""
        weight, bias, mask = cls._dense_state(module, mask)
        new = cls(module.in_features, module.out_features, bias is not None, device=weight.device,
                  dtype=weight.dtype, backend=backend)
        return new._load_dense(weight, bias, mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._event_or_dense(
            x, lambda s: SF.spike_linear(s, self.weight, self.bias, mask=self.weight_mask, backend=self.backend,
                                         dense_weight_grad=self.dense_weight_grad),
            lambda a: F.linear(a, self._dense_weight(), self.bias))


class SpikeConv2d(_SpikeMixin, nn.Conv2d):
    """nn.Conv2d with a weight mask and an event-driven kernel for binary spikes.

    Input [T, B, Cin, H, W] (time-major) or [N, Cin, H, W]; output of the same rank.
    Only padding_mode="zeros" is supported (what an event-driven kernel can skip).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 *, backend: str = "auto"):
        if padding_mode != "zeros":
            raise ValueError(f"SpikeConv2d: {_PADDING_MODE_ONLY_ZEROS}, got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        reason = self.unsupported_reason(self)
        if reason:
            raise ValueError(f"SpikeConv2d: {reason}")
        self._init_spike(backend)

    @staticmethod
    def unsupported_reason(conv: nn.Conv2d) -> Optional[str]:
        """Why the event-driven kernels cannot run `conv`'s geometry (None when they can). The
        constructor refuses such a layer, convert() leaves it as it is."""
        if conv.padding_mode != "zeros":
            return f"{_PADDING_MODE_ONLY_ZEROS}, got {conv.padding_mode!r}"
        if conv.padding == "same":
            if any(d * (k - 1) % 2 for d, k in zip(conv.dilation, conv.kernel_size)):
                return ("padding='same' with an even dilated kernel needs asymmetric padding, which the "
                        "event-driven kernels do not support; pad explicitly")
        return None

    @classmethod
    def from_dense(cls, module: nn.Conv2d, mask: Optional[torch.Tensor] = None, *, backend: str = "auto"):
        """A SpikeConv2d with `module`'s weights (and its torch.nn.utils.prune mask, if any)."""
        weight, bias, mask = cls._dense_state(module, mask)
        new = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                  module.dilation, module.groups, bias is not None, module.padding_mode,
                  device=weight.device, dtype=weight.dtype, backend=backend)
        return new._load_dense(weight, bias, mask)

    def _explicit_padding(self):
        if isinstance(self.padding, str):
            if self.padding == "valid":
                return (0, 0)
            reason = self.unsupported_reason(self)  # the constructor checked; attributes may have changed since
            if reason:
                raise ValueError(f"SpikeConv2d: {reason}")
            return tuple(d * (k - 1) // 2 for d, k in zip(self.dilation, self.kernel_size))
        return self.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self._explicit_padding()
        return self._event_or_dense(
            x, lambda s: SF.spike_conv2d(s, self.weight, self.bias, self.stride, padding, self.dilation, self.groups,
                                         mask=self.weight_mask, backend=self.backend,
                                         dense_weight_grad=self.dense_weight_grad),
            lambda a: self._dense_conv(a, padding))

    def _dense_conv(self, x, padding):
        if x.dim() == 5:
            t, b = x.shape[:2]
            y = F.conv2d(x.flatten(0, 1), self._dense_weight(), self.bias, self.stride, padding, self.dilation,
                         self.groups)
            return y.reshape(t, b, *y.shape[1:])
        return F.conv2d(x, self._dense_weight(), self.bias, self.stride, padding, self.dilation, self.groups)
