"""SpikeLinear and SpikeConv2d.

They subclass nn.Linear / nn.Conv2d (same constructor, `weight` stays a plain Parameter) and add
`weight_mask`, a bool buffer of the weight's shape (True = keep).

Which path runs is decided by the module setting `input_kind`, never by trying a kernel:
- "spikes": the event-driven kernel of the chosen backend, always; a non-binary input raises
  NonBinarySpikesError naming the layer (never a silent dense rerun).
- "analog": dense torch (F.linear / F.conv2d) with the masked weight, always: the encoding layer
  that sees pixels. The energy counter charges its MACs.
- "auto" (the default): decided once, at the first forward with a nonzero input, from its values
  (snnsparse.functional.is_binary) and cached in the module (`input_decision`). An "auto" layer that
  decided "spikes" raises NonBinarySpikesError on a later non-binary input, exactly as "spikes" does;
  one that decided "analog" runs dense for every later input. Setting `input_kind` again clears the
  decision. torch.compile traces the decided path; an undecided "auto" layer cannot be traced
  into one graph (the decision depends on the values), so torch.compile(fullgraph=True) refuses it
  with a message saying to set input_kind or run one eager forward first (without fullgraph,
  dynamo runs that layer eagerly once, which makes the decision, and traces it after).
`last_input_binary` records which path the last forward ran (True: event kernel, False: dense
for analog input) so that energy counting charges SOPs or MACs. The setting and the decision are
saved in state_dict (`_extra_state`, a small uint8 tensor, so every state_dict value stays a
tensor); a state_dict from before input_kind existed still loads and keeps the module's setting.

`backend` is any snnsparse backend name, "auto", or (modules only) "dense": plain F.linear /
F.conv2d with the masked weight and no checks whatever input_kind says, for baselines.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import skip_init

from .. import backends
from .. import functional as SF
from ..ops.reference import masked_weight


check_backend_name = backends.check_usable  # noqa: E305  (one rule: the name, and that it runs here)


INPUT_KINDS = ("spikes", "analog", "auto")
# _extra_state layout: uint8 [format version, input_kind code, input_decision code]. Codes, not
# strings: every state_dict value stays a tensor (safetensors, `{k: v.to(dev)}` and
# LotteryTicket's rewind point, which clones every value, all rely on that).
_STATE_VERSION = 1
_KIND_CODES = {"auto": 0, "spikes": 1, "analog": 2}
_DECISION_CODES = {None: 0, "spikes": 1, "analog": 2}


def check_input_kind(kind, owner: str, name: str = "input_kind") -> str:
    """`kind` when it is one of INPUT_KINDS; else TypeError / ValueError naming `owner` and `name`."""
    if not isinstance(kind, str):
        raise TypeError(f"{owner}: {name} must be a str, one of {INPUT_KINDS}, got {type(kind).__name__}")
    if kind not in INPUT_KINDS:
        raise ValueError(f"{owner}: {name} must be one of {INPUT_KINDS} ('spikes': binary input, event-driven "
                         f"kernel; 'analog': pixels, dense torch; 'auto': decided at the first forward), "
                         f"got {kind!r}")
    return kind


class _SpikeMixin:
    backend: str
    dense_weight_grad: bool
    # Class-level defaults: a module pickled before input_kind existed (torch.save(model)) unpickles
    # without these attributes and behaves as "auto", undecided.
    _input_kind: str = "auto"
    _input_decision: Optional[str] = None

    def _init_spike(self, backend: str, input_kind: str = "auto"):
        check_backend_name(backend, type(self).__name__, dense=True)
        self.input_kind = input_kind  # validated by the property's setter
        self.register_buffer("weight_mask", torch.ones_like(self.weight, dtype=torch.bool))
        self.backend = backend
        # Grad R trains pruned synapses too: it sets this so backward returns the dense dL/dw.
        self.dense_weight_grad = False
        self.last_input_binary: Optional[bool] = None

    @property
    def input_kind(self) -> str:
        """"spikes", "analog" or "auto" (see the module docstring). Setting it clears the cached decision."""
        return self._input_kind

    @input_kind.setter
    def input_kind(self, kind: str) -> None:
        self._input_kind = check_input_kind(kind, type(self).__name__)
        self._input_decision = None

    @property
    def input_decision(self) -> Optional[str]:
        """The path this layer runs: input_kind when it is "spikes" or "analog"; for "auto", what the
        first forward decided ("spikes" or "analog"), None before it."""
        return self._input_kind if self._input_kind != "auto" else self._input_decision

    def _label(self) -> str:
        """The layer in error messages (a layer does not know its name in the model)."""
        return f"{type(self).__name__} with weight {list(self.weight.shape)}"

    def extra_repr(self) -> str:
        decided = f" (decided {self._input_decision!r})" if self._input_kind == "auto" and self._input_decision else ""
        density = "?" if self.weight_mask.is_meta else f"{self.density():.4g}"  # a meta tensor has no values
        return (f"{super().extra_repr()}, density={density}, backend={self.backend!r}, "
                f"input_kind={self._input_kind!r}{decided}")

    def _path(self, x) -> str:
        """"spikes" or "analog" for this input, deciding (once) for an "auto" layer."""
        decision = self.input_decision
        if decision is not None:
            return decision
        if torch.compiler.is_compiling():
            raise RuntimeError(
                f"{self._label()}: input_kind='auto' has not decided yet whether its input is spikes or analog, "
                f"and torch.compile cannot trace that data-dependent decision. Set input_kind='spikes' or "
                f"'analog' on the layer (convert(..., first_layer='analog') for the encoding layer), or run one "
                f"eager forward before compiling.")
        if not isinstance(x, torch.Tensor) or x.numel() == 0 or not bool(x.any()):
            # No values to decide from (empty, or all zero: the first step of a single-step model, whose
            # later inputs may be scaled spikes or pixels): both paths give the same result, nothing is
            # cached; the functional API checks the rest.
            return "spikes"
        self._input_decision = "spikes" if SF.is_binary(x) else "analog"
        return self._input_decision

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([_STATE_VERSION, _KIND_CODES[self._input_kind], _DECISION_CODES[self._input_decision]],
                            dtype=torch.uint8)

    def set_extra_state(self, state) -> None:
        kinds = {v: k for k, v in _KIND_CODES.items()}
        decisions = {v: k for k, v in _DECISION_CODES.items()}
        codes = (state.tolist() if isinstance(state, torch.Tensor) and state.dtype == torch.uint8
                 and state.shape == (3,) else None)
        if codes is None or codes[0] != _STATE_VERSION or codes[1] not in kinds or codes[2] not in decisions:
            shown = (f"{state.dtype} tensor {state.tolist()}" if isinstance(state, torch.Tensor)
                     else type(state).__name__)
            raise ValueError(f"{type(self).__name__}: _extra_state must be a uint8 tensor [{_STATE_VERSION}, "
                             f"input_kind code {_KIND_CODES}, decision code {_DECISION_CODES}], got {shown}")
        kind, decision = kinds[codes[1]], decisions[codes[2]]
        if kind == "auto" and decision is None and self._input_kind == "auto":
            # A checkpoint taken before the first forward (e.g. LotteryTicket's rewind point) does not
            # undo the decision this layer has made since, for the same setting.
            decision = self._input_decision
        self.input_kind = kind  # clears the decision
        if kind == "auto":
            self._input_decision = decision

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        mask_key = prefix + "weight_mask"
        if mask_key in state_dict:  # copy_ into the bool buffer would turn a score mask into all-True
            from ..pruning.masks import zero_one_mask  # lazy: snnsparse.pruning imports this module
            state_dict[mask_key] = zero_one_mask(state_dict[mask_key], self.weight.shape,
                                                 f"{mask_key!r} in the state_dict")
        elif prefix + "weight" in state_dict:
            # A plain checkpoint (nn.Linear / nn.Conv2d, or a model saved before convert) has no mask:
            # every synapse of that weight is kept, which is what it computed.
            state_dict[mask_key] = torch.ones(self.weight.shape, dtype=torch.bool)
        key = prefix + "_extra_state"
        present = key in state_dict
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if not present and key in missing_keys:
            # A checkpoint from before input_kind existed: it loads (strict too) and the layer keeps its setting.
            missing_keys.remove(key)

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
        """Run the path input_kind names: the event-driven kernel for spikes, dense torch for analog.

        Binarity is never checked per forward in a separate pass: a (x == 0 | x == 1).all() pass
        cost as much as the sparse kernel on a pruned VGG layer (bench/RESULTS.md, "end to end").
        "auto" pays it once, at its first forward; after that the kernels' own check (in the same
        pass as bit-packing) refuses non-binary spikes, and the error is re-raised naming the layer.
        backend="dense" (a module-only setting) always runs plain torch with the masked weight and
        no checks: the honest "same model, dense torch" baseline of the benchmarks."""
        if self.backend == "dense":
            self.last_input_binary = None  # not looked at; the energy counter checks x itself
            return dense(self._float_input(x))
        if self._path(x) == "analog":
            self.last_input_binary = False
            return dense(self._float_input(x))
        try:
            out = event(x)
        except SF.NonBinarySpikesError as e:
            how = ("input_kind='auto' decided at its first forward (binary input) that it sees spikes"
                   if self._input_kind == "auto" else "input_kind='spikes'")
            raise SF.NonBinarySpikesError(
                f"{self._label()}: {how}, but this input is not binary ({e}). For an encoding layer that sees "
                f"pixels, set input_kind='analog'.") from None
        self.last_input_binary = True
        return out

    def _init_conv(self, base, args, padding_mode, device, dtype, backend, input_kind) -> None:
        """SpikeConv1d / SpikeConv2d construction: zero padding only, base's (nn.Conv1d / nn.Conv2d) own
        init, then the geometry the kernels can run (unsupported_reason), refused here, not at forward."""
        name = type(self).__name__
        if padding_mode != "zeros":
            raise ValueError(f"{name}: {_PADDING_MODE_ONLY_ZEROS}, got {padding_mode!r}")
        base.__init__(self, *args, padding_mode, device=device, dtype=dtype)
        reason = self.unsupported_reason(self)
        if reason:
            raise ValueError(f"{name}: {reason}")
        self._init_spike(backend, input_kind)

    def _float_input(self, x):
        """bool / uint8 input (spikes, or uint8 pixels) in the weight's dtype for F.linear / F.conv2d,
        which refuse mixed dtypes; the event kernels take them as they are."""
        return SF.as_float_input(x, self.weight.dtype)

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

    @classmethod
    def _loaded(cls, module, mask, args_with_bias, backend: str, input_kind: str, copy: bool):
        """cls(*args_with_bias(has_bias)) holding `module`'s weight, bias and mask (_dense_state). Built on
        the meta device, then given uninitialised storage (torch.nn.utils.skip_init): every tensor is
        copied from `module` right after, so the constructor's random init was wasted work (0.8 s for
        VGG11's 4096x25088 classifier in optimize_for_inference). copy=False: the weight and bias are
        `module`'s own tensors (the uninitialised storage is never touched, so never paged in)."""
        copy = SF.check_bool(copy, "copy", where=f"{cls.__name__}.from_dense")
        weight, bias, mask = cls._dense_state(module, mask)
        new = skip_init(cls, *args_with_bias(bias is not None), device=weight.device, dtype=weight.dtype,
                        backend=backend, input_kind=input_kind)
        return new._load_dense(weight, bias, mask, copy)

    def _load_dense(self, weight, bias, mask, copy: bool = True):
        """This layer holding weight, bias and bool mask: copied in, or (copy=False) those very tensors."""
        with torch.no_grad():
            if not copy:
                self.weight.data = weight
                if bias is not None:
                    self.bias.data = bias
                self.weight_mask = mask
                return self
            self.weight.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias)
            self.weight_mask.copy_(mask)
        return self


_PADDING_MODE_ONLY_ZEROS = "padding_mode must be 'zeros' (the only padding an event-driven kernel can skip)"


class SpikeLinear(_SpikeMixin, nn.Linear):
    """nn.Linear with a weight mask and an event-driven kernel for binary spikes.

    Input [..., in_features] (e.g. [T, B, K]); output [..., out_features].
    input_kind: "spikes", "analog" or "auto" (default), see the module docstring.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 *, backend: str = "auto", input_kind: str = "auto"):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_spike(backend, input_kind)

    @classmethod
    def from_dense(cls, module: nn.Linear, mask: Optional[torch.Tensor] = None, *, backend: str = "auto",
                   input_kind: str = "auto", copy: bool = True):
        """A SpikeLinear with `module`'s weights (and its torch.nn.utils.prune mask, if any).
        copy=False: the new layer's weight and bias (and an explicit mask) are those tensors, shared (a change
        of one is a change of the other), not copies."""
        return cls._loaded(module, mask, lambda b: (module.in_features, module.out_features, b), backend, input_kind,
                           copy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._event_or_dense(
            x, lambda s: SF.spike_linear(s, self.weight, self.bias, mask=self.weight_mask, backend=self.backend,
                                         dense_weight_grad=self.dense_weight_grad),
            lambda a: F.linear(a, self._dense_weight(), self.bias))


class SpikeConv2d(_SpikeMixin, nn.Conv2d):
    """nn.Conv2d with a weight mask and an event-driven kernel for binary spikes.

    Input [T, B, Cin, H, W] (time-major) or [N, Cin, H, W]; output of the same rank.
    Only padding_mode="zeros" is supported (what an event-driven kernel can skip).
    input_kind: "spikes", "analog" or "auto" (default), see the module docstring.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 *, backend: str = "auto", input_kind: str = "auto"):
        self._init_conv(nn.Conv2d, (in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias),
                        padding_mode, device, dtype, backend, input_kind)

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
    def from_dense(cls, module: nn.Conv2d, mask: Optional[torch.Tensor] = None, *, backend: str = "auto",
                   input_kind: str = "auto", copy: bool = True):
        """A SpikeConv2d with `module`'s weights (and its torch.nn.utils.prune mask, if any);
        copy as SpikeLinear.from_dense."""
        return cls._loaded(module, mask, lambda b: (module.in_channels, module.out_channels, module.kernel_size,
                                                    module.stride, module.padding, module.dilation, module.groups, b,
                                                    module.padding_mode), backend, input_kind, copy)

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


class SpikeConv1d(_SpikeMixin, nn.Conv1d):
    """nn.Conv1d with a weight mask and an event-driven kernel for binary spikes (the 1x1 projections
    of Q, K, V and the MLPs of spiking transformers: Spikformer, QKFormer).

    Input [T, B, Cin, L] (time-major), [N, Cin, L] or unbatched [Cin, L]; output of the same rank.
    Every geometry runs the conv2d kernels on the [N, Cin, 1, L] view (a 1 x k kernel; stride, padding
    and dilation on the width), which computes exactly F.conv1d. Kernel size 1 too: the linear kernels
    on the channels-last view [N*L, Cin] were measured 1.5-4x slower than the conv2d kernels on the
    view, because of the two transposes (input and output) around them (CPU, 2 threads, spike rate 0.1:
    [32, 384, 64] -> 1536 channels at density 0.05: 49.6 vs 21.6 ms; -> 384: 5.8 vs 1.3 ms; -> 1152
    dense: 19.7 vs 7.4 ms; [8, 64, 256] -> 64 at 0.5: 0.30 vs 0.19 ms; machine load 4-7).
    Only padding_mode="zeros" is supported.
    input_kind: "spikes", "analog" or "auto" (default), see the module docstring.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 *, backend: str = "auto", input_kind: str = "auto"):
        self._init_conv(nn.Conv1d, (in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias),
                        padding_mode, device, dtype, backend, input_kind)

    @staticmethod
    def unsupported_reason(conv: nn.Conv1d) -> Optional[str]:
        """Why the event-driven kernels cannot run `conv`'s geometry (None when they can)."""
        if conv.padding_mode != "zeros":
            return f"{_PADDING_MODE_ONLY_ZEROS}, got {conv.padding_mode!r}"
        if conv.padding == "same" and conv.dilation[0] * (conv.kernel_size[0] - 1) % 2:
            return ("padding='same' with an even dilated kernel needs asymmetric padding, which the "
                    "event-driven kernels do not support; pad explicitly")
        return None

    @classmethod
    def from_dense(cls, module: nn.Conv1d, mask: Optional[torch.Tensor] = None, *, backend: str = "auto",
                   input_kind: str = "auto", copy: bool = True):
        """A SpikeConv1d with `module`'s weights (and its torch.nn.utils.prune mask, if any);
        copy as SpikeLinear.from_dense."""
        return cls._loaded(module, mask, lambda b: (module.in_channels, module.out_channels, module.kernel_size,
                                                    module.stride, module.padding, module.dilation, module.groups, b,
                                                    module.padding_mode), backend, input_kind, copy)

    def _explicit_padding(self) -> int:
        if isinstance(self.padding, str):
            if self.padding == "valid":
                return 0
            reason = self.unsupported_reason(self)  # the constructor checked; attributes may have changed since
            if reason:
                raise ValueError(f"SpikeConv1d: {reason}")
            return self.dilation[0] * (self.kernel_size[0] - 1) // 2
        return self.padding[0]

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3, 4) or x.shape[-2] != self.in_channels:
            shown = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self._label()}: input must be [T, B, {self.in_channels}, L], [N, {self.in_channels}, "
                             f"L] or [{self.in_channels}, L], got {shown}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        padding = self._explicit_padding()
        return self._event_or_dense(x, lambda s: self._event(s, padding), lambda a: self._dense_conv(a, padding))

    def _event(self, s: torch.Tensor, padding: int) -> torch.Tensor:
        unbatched = s.dim() == 2
        s4 = (s.unsqueeze(0) if unbatched else s).unsqueeze(-2)  # [.., Cin, 1, L]
        y = SF.spike_conv2d(s4, self.weight.unsqueeze(-2), self.bias, (1, self.stride[0]), (0, padding),
                            (1, self.dilation[0]), self.groups, mask=self.weight_mask.unsqueeze(-2),
                            backend=self.backend, dense_weight_grad=self.dense_weight_grad)
        y = y.squeeze(-2)
        return y.squeeze(0) if unbatched else y

    def _dense_conv(self, x, padding):
        w = self._dense_weight()
        if x.dim() == 4:
            t, b = x.shape[:2]
            y = F.conv1d(x.flatten(0, 1), w, self.bias, self.stride, padding, self.dilation, self.groups)
            return y.reshape(t, b, *y.shape[1:])
        return F.conv1d(x, w, self.bias, self.stride, padding, self.dilation, self.groups)
