"""Inference-only conv / linear layers, made by ss.nn.optimize_for_inference (snnsparse.nn.optimize).

Each is built once from a layer whose BatchNorm (if any) is already folded in, and holds buffers
only (no Parameter: nothing here trains, and no optimizer can move a value behind a packing):
- PackedConv2d / PackedLinear: for a layer whose input is spikes (decided once, by the type of the
  op that produces its input). They keep ONLY the PackedWeight made at optimize time
  (snnsparse.ops.conv2d.pack / linear.pack: a snapshot of the masked, folded weight) and the bias;
  the dense weight and the mask are not kept. Non-binary input raises NonBinarySpikesError naming
  the layer: it is never rerun dense, so a wrong "spikes" decision cannot go unnoticed.
- DenseConv2d / DenseLinear: for analog input (pixels, averages, SEW ADD counts): plain F.conv2d /
  F.linear with the folded weight, pruned entries 0 (dense, because a dense kernel is what such
  input needs; they are the only inference layers that keep a dense weight). It is called
  `dense_weight`, not `weight`: with BatchNorm folded in it is not the original layer's weight, and
  code that reads `.weight` of the original layer should fail loudly rather than read other values.

Input layouts: conv layers take [N, C, H, W], time-major [T, B, C, H, W] (folded to [T*B, ...] as
SpikingJelly's multi-step wrappers do) or unbatched [C, H, W]; linear layers take [..., K], like
F.linear. A linear layer whose BatchNorm1d was folded remembers the rank it saw (`fold_rank`):
BatchNorm1d normalises dim 1, which is the linear's feature dim only at that rank, so another rank
is refused instead of silently computing something the original model did not.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import functional as SF
from ..ops import conv2d as _conv2d
from ..ops import cpp as _cpp
from ..ops import linear as _linear
from ..ops import pool as _pool
from ..ops.packed import ConvFormat, PackedWeight
from .graph import single_pixel_bins, single_pixel_gather

# Output-channel rows (format 4) serve only rows of <= 64 pixels (one 64-bit word per row, csrc/cpu/conv.cpp
# outrows_ok); a packing chosen from example_inputs of small images cannot run wider ones.
_OUTROWS_MAX_WIDTH = 64


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class InferenceLayer(nn.Module):
    """Common part: the layer's name in the model it came from (error messages) and why it runs the
    way it does (`why`, the report's reason)."""

    def __init__(self, name: str, why: str):
        super().__init__()
        self.name = name
        self.why = why

    def _label(self) -> str:
        return f"{self.name or '<model>'!r} ({type(self).__name__})"


class _FoldRankMixin:
    fold_rank: Optional[int]

    def _check_rank(self, x: torch.Tensor) -> None:
        if self.fold_rank is not None and x.dim() != self.fold_rank:
            raise ValueError(
                f"{self._label()}: a BatchNorm1d was folded into this linear layer for rank-{self.fold_rank} input "
                f"(the rank example_inputs gave it); BatchNorm1d normalises dim 1, which is this layer's "
                f"output features only at that rank, so a rank-{x.dim()} input {tuple(x.shape)} is refused. "
                f"Optimize the model with example_inputs of the layout it will run on.")


def _conv_input(x: torch.Tensor, label: str):
    """x as [N, C, H, W] and a function that puts an output back into x's layout."""
    if x.dim() == 4:
        return x, lambda y: y
    if x.dim() == 5:
        t, b = x.shape[:2]
        return x.flatten(0, 1), lambda y: y.reshape(t, b, *y.shape[1:])
    if x.dim() == 3:
        return x.unsqueeze(0), lambda y: y.squeeze(0)
    raise ValueError(f"{label}: input must be [N, C, H, W], [T, B, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")


class _PackedMixin:
    """Keeps the PackedWeight's tensors as buffers (they follow state_dict and count in memory); the
    PackedWeight is rebuilt from exactly those buffers on every access, so a state_dict loaded with
    assign=True or a moved module can never leave it pointing at other tensors. Its format, shape and
    groups are saved with the state (`_extra_state`) and a state of another packing is refused: two
    formats can have tensors of identical shapes (compressed rows per input or per output channel when
    Cin == Cout), and copying one into the other would compute something else without an error."""

    _packed_meta: PackedWeight  # the packing minus its tensors (tensors=()): shape, format, dtype for the forwards

    def _register_packed(self, packed: PackedWeight, bias: Optional[torch.Tensor], kind: str) -> None:
        if packed.kind != kind:
            raise ValueError(f"{type(self).__name__}: packed must be a {kind} PackedWeight, got {packed.kind}")
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._packed_meta = dataclasses.replace(packed, tensors=())
        self._n_packed = len(packed.tensors)
        for i, t in enumerate(packed.tensors):
            self.register_buffer(f"packed_{i}", t)

    @property
    def packed(self) -> PackedWeight:
        # Rebuilt only when a buffer is another tensor object than the ones the last PackedWeight holds
        # (dataclasses.replace was 5 of the 37 us a packed conv call cost on a tiny input). That test is
        # exact: the cached PackedWeight holds those tensors, so none of them can be freed and its id
        # reused; a buffer changed in place is the same tensor, and its new values are what is read.
        buffers = self._buffers
        tensors = tuple(buffers[f"packed_{i}"] for i in range(self._n_packed))
        cached = self.__dict__.get("_packed_cache")
        if cached is None or any(a is not b for a, b in zip(cached.tensors, tensors)):
            cached = dataclasses.replace(self._packed_meta, tensors=tensors)
            self.__dict__["_packed_cache"] = cached
        return cached

    _DTYPES = (torch.float32, torch.float64)

    def _packing_key(self) -> torch.Tensor:
        """[kind, format, groups, dtype, *shape] as an int64 tensor (every state_dict value stays a tensor)."""
        m = self._packed_meta
        return torch.tensor([0 if m.kind == "linear" else 1, int(m.format), m.groups, self._DTYPES.index(m.dtype),
                             *m.shape], dtype=torch.int64)

    def get_extra_state(self):
        return self._packing_key()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checked before any buffer is copied: a refused state must leave the layer as it was.
        self.set_extra_state(state_dict.get(prefix + "_extra_state"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_extra_state(self, state) -> None:
        if not (isinstance(state, torch.Tensor) and torch.equal(state, self._packing_key())):
            raise ValueError(f"{self._label()}: the state_dict holds a packing {state!r}, this layer is packed as "
                             f"{self._packing_key().tolist()} (kind, format, groups, dtype, shape); packed tensors "
                             f"of another format would be read as this one. Load the state into a model optimized "
                             f"the same way.")

    def _apply(self, fn, recurse=True):
        # The packed formats are CPU kernel layouts of one dtype: moving or casting them would
        # give tensors the kernels cannot read (or, cast, other values than the ones packed).
        probe = torch.zeros(1, dtype=self._packed_meta.dtype)
        out = fn(probe)
        if isinstance(out, torch.Tensor) and (out.device != probe.device or out.dtype != probe.dtype):
            raise RuntimeError(
                f"{self._label()}: packed for {probe.device} {probe.dtype}, cannot become {out.device} {out.dtype}; "
                f"move or cast the original model, then call optimize_for_inference again")
        return super()._apply(fn, recurse)

    def _event(self, fn, x, *args):
        """fn(x, *args) on the packed kernel; a non-binary x raises NonBinarySpikesError naming this layer."""
        try:
            # functional._run turns the kernel's binarity error into NonBinarySpikesError (one place).
            return SF._run(self.op, _cpp, fn, x, *args)
        except SF.NonBinarySpikesError as e:
            raise SF.NonBinarySpikesError(
                f"{self._label()}: optimize_for_inference packed this layer for spike input ({self.why}), "
                f"but this input is not binary ({e})") from None

    def nbytes(self) -> int:
        bias = getattr(self, "bias", None)
        return self.packed.nbytes() + (0 if bias is None else bias.numel() * bias.element_size())


class PackedConv2d(_PackedMixin, InferenceLayer):
    """Event-driven conv2d on a PackedWeight made once (see the module docstring)."""

    op = "spike_conv2d"

    def __init__(self, packed: PackedWeight, bias: Optional[torch.Tensor], stride, padding, dilation, *,
                 name: str = "", why: str = ""):
        super().__init__(name, why)
        self._register_packed(packed, bias, "conv2d")
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x4, restore = _conv_input(x, self._label())
        cout, _, kh, kw = self._packed_meta.shape
        ho, wo = _conv2d.output_size(x4.shape[2], x4.shape[3], (kh, kw), self.stride, self.padding, self.dilation)
        if self._packed_meta.format == ConvFormat.COMPRESSED_OUT_ROWS and max(x4.shape[3], wo) > _OUTROWS_MAX_WIDTH:
            raise ValueError(
                f"{self._label()}: packed as output-channel rows (format 4, chosen for the image width of "
                f"example_inputs), which serve rows of <= {_OUTROWS_MAX_WIDTH} pixels; got input width {x4.shape[3]} "
                f"(output {wo}). Optimize the model with example_inputs of the size it will run on.")
        if x4.shape[0] == 0:  # nothing to pack; the kernels' reshapes are not defined for it
            y = x4.new_zeros((0, cout, ho, wo), dtype=self._packed_meta.dtype)
        else:
            y, _ = self._event(_conv2d.forward_packed, x4, self.packed, self.bias, self.stride, self.padding,
                               self.dilation)
        return restore(y)

    def extra_repr(self) -> str:
        return (f"{list(self.packed.shape)}, format={self.packed.format.name}, density={self.packed.density:.4f}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.packed.groups}, bias={self.bias is not None}")


class PackedLinear(_FoldRankMixin, _PackedMixin, InferenceLayer):
    """Event-driven linear on a PackedWeight made once (see the module docstring)."""

    op = "spike_linear"

    def __init__(self, packed: PackedWeight, bias: Optional[torch.Tensor], *, fold_rank: Optional[int] = None,
                 name: str = "", why: str = ""):
        super().__init__(name, why)
        self._register_packed(packed, bias, "linear")
        self.fold_rank = fold_rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_rank(x)
        m, k = self._packed_meta.shape
        if x.dim() < 1 or x.shape[-1] != k:
            raise ValueError(f"{self._label()}: input must be [..., {k}], got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, k)
        if x2.shape[0] == 0:
            y = x2.new_zeros((0, m), dtype=self._packed_meta.dtype)
            y = y if self.bias is None else y + self.bias
        else:
            y, _ = self._event(_linear.forward_packed, x2, self.packed, self.bias)
        return y.reshape(*lead, m)

    def extra_repr(self) -> str:
        return (f"{list(self.packed.shape)}, format={self.packed.format.name}, density={self.packed.density:.4f}, "
                f"bias={self.bias is not None}, fold_rank={self.fold_rank}")


class DenseConv2d(InferenceLayer):
    """F.conv2d with a fixed (folded, pruned entries 0) weight, for analog input."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, padding, dilation, groups: int,
                 *, name: str = "", why: str = ""):
        super().__init__(name, why)
        self.register_buffer("dense_weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.stride, self.dilation, self.groups = _pair(stride), _pair(dilation), int(groups)
        self.padding = padding if isinstance(padding, str) else _pair(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x4, restore = _conv_input(x, self._label())
        y = F.conv2d(SF.as_float_input(x4, self.dense_weight.dtype), self.dense_weight, self.bias, self.stride, self.padding,
                     self.dilation, self.groups)
        return restore(y)

    def extra_repr(self) -> str:
        return (f"{list(self.dense_weight.shape)}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}")


class DenseLinear(_FoldRankMixin, InferenceLayer):
    """F.linear with a fixed (folded, pruned entries 0) weight, for analog input."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], *, fold_rank: Optional[int] = None,
                 name: str = "", why: str = ""):
        super().__init__(name, why)
        self.register_buffer("dense_weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.fold_rank = fold_rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_rank(x)
        return F.linear(SF.as_float_input(x, self.dense_weight.dtype), self.dense_weight, self.bias)

    def extra_repr(self) -> str:
        return f"{list(self.dense_weight.shape)}, bias={self.bias is not None}, fold_rank={self.fold_rank}"


PACKED_LAYERS: Sequence[type] = (PackedConv2d, PackedLinear)


def bit_planes(x: torch.Tensor, label: str):
    """[(weight 2^j, plane j)] of x, whose values must be small non-negative integers (SEW ADD's spike
    counts): x = sum_j 2^j * plane_j with binary planes, so an event-driven layer adds each weight once
    per plane it is set in. Anything else (a fraction, a negative value, NaN) raises: counts are
    decided by type, and a value that is not a count means that decision was wrong."""
    if x.numel() == 0:
        return [(1.0, x)]
    # On uint8 (int32 only for counts past 255): one conversion, a round trip that must give x back
    # (fractions, NaN, inf, negative and too large values do not) and a max, then a shift and a mask per
    # plane, already in the uint8 the packed kernels read. The float remainder / floor arithmetic this
    # replaced was 6.6x slower (counts 0..7 on [32, 384, 64], 2 threads: 2.1 vs 14.1 ms); uint8 instead of
    # int32 then a cast per plane: 2.7 -> ~1.5 ms of glue per sew_resnet18 ADD forward (profile).
    xi = x.to(torch.uint8)
    if not torch.equal(xi.to(x.dtype), x):
        xi = x.to(torch.int32)
        if not torch.equal(xi.to(x.dtype), x) or int(xi.min()) < 0:
            bad = ~(x >= 0) | (x != torch.floor(x)) | torch.isinf(x) | (x >= 2.0 ** 31)  # NaN fails x >= 0
            raise SF.NonBinarySpikesError(
                f"{label}: optimize_for_inference runs this layer on bit planes of spike counts (SEW ADD), but "
                f"the input holds {x[bad].flatten()[0].item()!r}, not a non-negative integer count")
    top = int(xi.max())
    if top <= 1 and xi.dtype == torch.uint8:
        return [(1.0, xi)]
    planes = []
    j = 0
    while (1 << j) <= top:  # one plane per bit of the largest count
        planes.append((float(1 << j), torch.bitwise_and(xi >> j if j else xi, 1).to(torch.uint8)))
        j += 1
    return planes


def counts_conv2d(x4: torch.Tensor, packed: PackedWeight, bias: Optional[torch.Tensor], stride, padding, dilation,
                  label: str) -> torch.Tensor:
    """conv2d of spike counts x4 [N, C, H, W] (SEW ADD: the sum of two or more spike tensors) on a packing.
    Packed as dense blocks (format 3), the counts kernel reads them as they are: a count v adds its weight
    row v times, in one pass (snnsparse.ops.conv2d.forward_counts_packed). Other formats, and counts that
    kernel refuses (above 15, or not counts at all: bit_planes then says which, naming `label`), split
    the input into binary bit planes and run the event kernel once per plane, out = sum_j 2^j
    conv(plane_j) + bias. Either way each input costs only its events; the sum is exact up to fp32
    summation order (so a neuron after it may flip where its membrane is within rounding of the
    threshold). The counts kernel instead of the planes on sew_resnet18 ADD (T4 B8 32x32, 5% masks, all
    format 3, same model interleaved, 2 threads, EPYC AVX2 host): 11.75 vs 13.95 ms a forward, batch 1
    5.18 vs 6.55 ms (bench/RESULTS.md). A refused call (a count above 15) is rerun as planes: the counts
    of SEW ADD stay far below that, so the wasted scan is not on the common path."""
    if packed.format == ConvFormat.DENSE_BLOCKS:
        try:
            return _conv2d.forward_counts_packed(x4, packed, bias, stride, padding, dilation)
        except ValueError as e:
            if "spike counts must be" not in str(e):
                raise
    out = None
    for scale, plane in bit_planes(x4, label):  # binary planes: the event kernel cannot refuse them
        y, _ = _conv2d.forward_packed(plane.contiguous(), packed, None, stride, padding, dilation)
        out = y if out is None else out.add_(y, alpha=scale)
    if bias is not None:
        out.add_(bias.view(1, -1, 1, 1))
    return out


class PackedPlanesConv2d(PackedConv2d):
    """A PackedConv2d for spike counts (SEW ADD): counts_conv2d on its packing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x4, restore = _conv_input(x, self._label())
        if x4.shape[0] == 0:
            return super().forward(x)
        return restore(counts_conv2d(x4, self.packed, self.bias, self.stride, self.padding, self.dilation,
                                     self._label()))


class SinglePixelPool(InferenceLayer):
    """An adaptive average pool that, at the sizes the model was optimized for, averages bins of one
    input element each (VGG's 7x7 pool of the 1x1 spike map of a 32x32 image, or a pool to the size it
    already has): its output holds only input values, so the layer after it gets spikes and runs packed.
    The output is gathered (index_select per pooled dim), not averaged: torch's adaptive average pool took
    4 ms per call for VGG's [32, 512, 1, 1] -> 7x7 (15% of the optimized model). Another input size is
    checked on every call: where a bin would average several elements (values that are no longer
    spikes) it is refused with the reason, never passed on to a packed layer.

    folded_sizes: the pool's replication was folded into the linear layer after it (flatten, then
    linear: optimize_for_inference sums the weight columns that read copies of one element,
    fold_replicated_columns); it then passes its input on unchanged, and only at exactly these input
    sizes, which the folded weights were built for."""

    def __init__(self, pool: nn.Module, dims: int, *, folded_sizes: Optional[Tuple[int, ...]] = None,
                 name: str = "", why: str = ""):
        super().__init__(name, why)
        self.pool = pool
        self.dims = dims
        self.folded_sizes = None if folded_sizes is None else tuple(folded_sizes)

    def _out_sizes(self, in_sizes):
        out = self.pool.output_size
        out = (out,) * self.dims if isinstance(out, int) or out is None else tuple(out)
        return tuple(n if o is None else int(o) for n, o in zip(in_sizes, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_sizes = tuple(x.shape[-self.dims:])
        if self.folded_sizes is not None:
            if in_sizes != self.folded_sizes:
                raise ValueError(
                    f"{self._label()}: optimize_for_inference folded this pool into the linear layer after it for "
                    f"input spatial size {self.folded_sizes} (the size of example_inputs); got {in_sizes}. Optimize "
                    f"the model with example_inputs of the size it will run on.")
            return x
        out_sizes = self._out_sizes(in_sizes)
        if not single_pixel_bins(in_sizes, out_sizes):
            raise ValueError(
                f"{self._label()}: optimize_for_inference kept spikes through this pool because at the sizes of "
                f"example_inputs each of its bins covers one input element; an input of spatial size {in_sizes} "
                f"(output {out_sizes}) averages several, and the packed layer after it takes "
                f"spikes only. Optimize the model with example_inputs of the size it will run on.")
        return single_pixel_gather(x, out_sizes)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, folded_sizes={self.folded_sizes}"


class InferenceMaxPool2d(InferenceLayer):
    """nn.MaxPool2d / SpikingJelly's layer.MaxPool2d (return_indices=False) on snnsparse::max_pool2d: the
    same values without the argmax indices torch's CPU kernel always computes (the stem max-pool of a
    spiking ResNet was 14% of its optimized time). Takes float, bool and uint8 spikes alike. Anything the
    kernel does not take (another device or dtype, an input that wants a gradient) runs torch's
    F.max_pool2d, which gives the same values. multi_step: SpikingJelly's multi-step wrapper, which folds
    [T, B, ...] into [T*B, ...] around the pool."""

    def __init__(self, pool: nn.Module, *, multi_step: bool = False, name: str = "", why: str = ""):
        super().__init__(name, why)
        self.kernel_size, self.stride = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
        self.padding, self.dilation = _pair(pool.padding), _pair(pool.dilation)
        self.ceil_mode, self.multi_step = bool(pool.ceil_mode), multi_step

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        args = (self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        fast = (x.device.type == "cpu" and x.dtype in _pool.DTYPES and x.dim() in (3, 4)
                and not (torch.is_grad_enabled() and x.requires_grad) and _cpp.unavailable_reason() is None)
        if not fast:
            return F.max_pool2d(x, *args[:4], ceil_mode=self.ceil_mode)
        x4 = x if x.dim() == 4 else x.unsqueeze(0)
        y = _pool.max_pool2d(x4, *args)
        return y if x.dim() == 4 else y.squeeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multi_step:
            return self._pool(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return self._pool(x)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}, multi_step={self.multi_step}")


# --------------------------------------------------------------------------------------------------
# Conv1d (spiking transformers' 1x1 projections: Spikformer's Q/K/V and MLP, QKFormer), on the conv2d
# kernels through the [.., C, 1, L] view of the input.
def _conv1d_rank(x: torch.Tensor, channels: int, label: str) -> None:
    if x.dim() not in (2, 3, 4) or x.shape[-2] != channels:
        raise ValueError(f"{label}: input must be [T, B, {channels}, L], [N, {channels}, L] or [{channels}, L], "
                         f"got shape {tuple(x.shape)}")


class PackedConv1d(_FoldRankMixin, PackedConv2d):
    """Event-driven conv1d: a PackedConv2d of the [Cout, Cin/g, 1, k] weight run on the [.., Cin, 1, L] view
    of the input (stride, padding, dilation on the width), output [.., Cout, L_out]. Kernel size 1 too:
    the conv2d kernels on the view were measured 4x faster than the linear kernels on the channels-last
    view with its two transposes ([32, 384, 64] spikes at rate 0.1 -> 1536 channels at density 0.05,
    packed, 2 threads: 8.0 ms (format 4) vs 32.0 ms (format 2); snnsparse.nn.layers.SpikeConv1d).
    fold_rank: a BatchNorm1d folded in holds for inputs of this rank only (as PackedLinear's)."""

    def __init__(self, packed: PackedWeight, bias: Optional[torch.Tensor], stride: int, padding: int, dilation: int,
                 *, fold_rank: Optional[int] = None, name: str = "", why: str = ""):
        super().__init__(packed, bias, (1, stride), (0, padding), (1, dilation), name=name, why=why)
        self.fold_rank = fold_rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_rank(x)
        _conv1d_rank(x, self._packed_meta.shape[1] * self._packed_meta.groups, self._label())
        return super().forward(x.unsqueeze(-2)).squeeze(-2)


class PackedPlanesConv1d(PackedConv1d, PackedPlanesConv2d):
    """A PackedConv1d for spike counts (the residual sums of Spikformer's blocks): one event pass per
    binary bit plane (PackedPlanesConv2d's forward on the view)."""


class DenseConv1d(_FoldRankMixin, InferenceLayer):
    """F.conv1d with a fixed (folded, pruned entries 0) weight, for analog input (and the Conv1d
    geometries not packed yet)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, padding, dilation, groups: int,
                 *, fold_rank: Optional[int] = None, name: str = "", why: str = ""):
        super().__init__(name, why)
        self.register_buffer("dense_weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, int(groups)
        self.fold_rank = fold_rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_rank(x)
        _conv1d_rank(x, self.dense_weight.shape[1] * self.groups, self._label())
        xf = SF.as_float_input(x, self.dense_weight.dtype)
        x3 = xf.flatten(0, 1) if x.dim() == 4 else xf
        y = F.conv1d(x3, self.dense_weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return y.reshape(*x.shape[:2], *y.shape[1:]) if x.dim() == 4 else y

    def extra_repr(self) -> str:
        return (f"{list(self.dense_weight.shape)}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}, "
                f"fold_rank={self.fold_rank}")
