"""ss.energy.count(): per-layer SOP / SynOps / MAC counts and energy, from forward hooks.

Counted layers: every nn.Linear and nn.Conv2d, which covers
  * snnsparse's SpikeLinear / SpikeConv2d (mask = their `weight_mask`; `last_input_binary` says
    whether the event-driven path or the dense path ran),
  * plain nn.Linear / nn.Conv2d fed with spikes (mask = torch.nn.utils.prune's `weight_mask` if the
    module has one, else weight != 0),
  * SpikingJelly's layer.Linear / layer.Conv2d (subclasses of the torch layers; step_mode "m" takes
    [T, B, ...]) and layers inside SeqToANNContainer (they see the flattened [T*B, ...]).
A forward hook sees each call's input. Binary input (0/1 values, any dtype) is counted as
synaptic operations; any other input (the encoding layer sees pixels) as MACs with the mask applied.

The three spike counts follow three published conventions (see CONVENTIONS in report.py):

  sop_dense  firing rate x T x dense MACs. syops-counter (Chen et al., github.com/iCGY96/syops-counter,
             ops.py: ACs = rate x (kernel MACs) for a spiking input) and the Spikformer line of
             papers (SOP = fr x T x FLOPs). A rate-times-geometry estimate: it charges padded taps
             and pruned synapses. (syops-counter also adds the bias additions; we leave bias out
             here so that the three counts measure the same synapses.)
  synops     exact synaptic operations with dense weights, SpikingJelly 2.0
             op_counter.SynOpCounter: sum(conv2d(s, ones_like(w))) / sum(s @ ones^T) -- a spike
             whose tap falls on padding, or that the stride skips, costs nothing.
  sop        exact operations with the mask applied: sum over fired inputs of the kept outgoing
             synapses, sum(conv2d(s, mask)) / sum(s @ mask^T). This is what snnsparse's
             event-driven kernels execute; tests check it against their return_count=True count.

Energy = E_AC x sop + E_MAC x mac (Horowitz, ISSCC 2014; presets in constants.py).

All counts are linear in the spikes, so a layer's counts are computed from the per-position
spike counts summed over frames (one small conv per call, in float64: exact integers).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .constants import EnergyConstants, constants as _constants
from .report import Counts, LayerCounts, Report

Inputs = Union[torch.Tensor, Tuple[Any, ...], List[Any], Dict[str, Any]]


def _is_spikingjelly(module: nn.Module) -> bool:
    return any(c.__module__.startswith("spikingjelly.") for c in type(module).__mro__)


def _is_snnsparse_spike_layer(module: nn.Module) -> bool:
    from ..nn import SpikeConv2d, SpikeLinear
    return isinstance(module, (SpikeConv2d, SpikeLinear))


def _is_neuron(module: nn.Module) -> bool:
    """An snnsparse fused neuron (LIF, IF, ParametricLIF) or a SpikingJelly neuron (a MemoryModule with a
    step_mode)."""
    from ..nn import FusedNeuron
    if isinstance(module, FusedNeuron):
        return True
    return _is_spikingjelly(module) and hasattr(module, "step_mode") and any(
        c.__name__ == "MemoryModule" for c in type(module).__mro__)


def layer_mask(module: nn.Module) -> Tuple[torch.Tensor, str]:
    """(bool mask of the weight's shape, where it came from) for a Linear / Conv2d module."""
    weight = module.weight
    m = getattr(module, "weight_mask", None)
    if isinstance(m, torch.Tensor) and m.shape == weight.shape:
        if m.dtype == torch.bool:
            return m, "mask: weight_mask buffer"
        return m != 0, "mask: torch.nn.utils.prune weight_mask"
    return weight != 0, "mask: weight != 0 (no weight_mask)"


def _to_binary_flag(module: nn.Module, x: torch.Tensor) -> bool:
    from ..functional import is_binary
    if _is_snnsparse_spike_layer(module) and isinstance(getattr(module, "last_input_binary", None), bool):
        return module.last_input_binary
    return is_binary(x)


class _Layer:
    """Running sums of one counted module."""

    def __init__(self, name: str, module: nn.Module):
        self.name, self.module = name, module
        self.kind = type(module).__name__
        self.calls = self.frames = 0
        self.nnz = self.numel_binary = 0
        self.sop = self.synops = self.mac = 0
        self.sop_dense = 0.0
        self.dense_macs = 0
        self.binary_calls = self.analog_calls = 0
        self.notes: List[str] = []
        # per call: (frames, dense MACs per frame, masked MACs per frame, T of a T-major input or None)
        self.call_geometry: List[Tuple[int, int, int, Optional[int]]] = []
        self.density = 1.0

    def note(self, text: str):
        if text not in self.notes:
            self.notes.append(text)


def _time_major(module: nn.Module, x: torch.Tensor) -> Optional[int]:
    """T when this call's input is time-major [T, B, ...], else None."""
    if getattr(module, "step_mode", None) == "m" and x.dim() >= 2:
        return int(x.shape[0])
    if isinstance(module, nn.Conv2d) and x.dim() == 5:
        return int(x.shape[0])
    return None


def _layer_mask_noted(acc: _Layer, module: nn.Module) -> torch.Tensor:
    """The layer's mask; notes where it came from and the weight density."""
    mask, src = layer_mask(module)
    acc.note(src)
    acc.density = float(mask.float().mean()) if mask.numel() else 0.0
    return mask


def _record_call(acc: _Layer, module, x, binary: bool, frames: int, dense_per_frame: int,
                 masked_per_frame: int) -> bool:
    """Book one call's geometry and dense MACs; analog input is charged as MACs (mask applied).
    Returns True when the input is binary and its SOPs remain to be counted."""
    acc.call_geometry.append((frames, dense_per_frame, masked_per_frame, _time_major(module, x)))
    acc.frames += frames
    acc.dense_macs += frames * dense_per_frame
    if not binary:
        acc.analog_calls += 1
        acc.mac += frames * masked_per_frame
        acc.note("analog input: counted as MACs (mask applied)")
        return False
    acc.binary_calls += 1
    return True


def _conv_call(acc: _Layer, module: nn.Conv2d, x: torch.Tensor, out: torch.Tensor, binary: bool):
    cout, cin_g, kh, kw = module.weight.shape
    mask = _layer_mask_noted(acc, module)
    ho, wo = int(out.shape[-2]), int(out.shape[-1])
    c, h, w = (int(s) for s in x.shape[-3:])
    frames = int(x.numel() // max(c * h * w, 1)) if x.dim() > 3 else 1
    dense_per_frame = cout * ho * wo * cin_g * kh * kw
    if not _record_call(acc, module, x, binary, frames, dense_per_frame, int(mask.sum()) * ho * wo):
        return
    with torch.no_grad():
        fired = x.detach().reshape(-1, c, h, w).sum(0, dtype=torch.float64)[None]  # [1, C, H, W]
        nnz = int(fired.sum().round())
        padding = module.padding
        if isinstance(padding, str) or module.padding_mode != "zeros":
            # 'same' (possibly asymmetric) or reflect/circular padding: pad the counts explicitly,
            # as the layer pads its input (padding is linear, so padding the sum is exact).
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            fired = F.pad(fired, module._reversed_padding_repeated_twice, mode=mode)
            padding = (0, 0)
        args = (None, module.stride, padding, module.dilation, module.groups)
        kept = F.conv2d(fired, mask.to(torch.float64), *args)
        full = F.conv2d(fired, torch.ones(mask.shape, dtype=torch.float64, device=fired.device), *args)
        acc.sop += int(kept.sum().round())
        acc.synops += int(full.sum().round())
    acc.nnz += nnz
    acc.numel_binary += x.numel()
    acc.sop_dense += nnz * dense_per_frame / (c * h * w)


def _linear_call(acc: _Layer, module: nn.Linear, x: torch.Tensor, binary: bool):
    m_out, k = module.weight.shape
    mask = _layer_mask_noted(acc, module)
    frames = int(x.numel() // k) if k else 0
    if not _record_call(acc, module, x, binary, frames, m_out * k, int(mask.sum())):
        return
    if k == 0 or x.numel() == 0:
        return
    with torch.no_grad():
        fired = x.detach().reshape(-1, k).sum(0, dtype=torch.float64)  # [K]: spikes per input neuron
        nnz = int(fired.sum().round())
        acc.sop += int((fired @ mask.to(torch.float64).sum(0)).round())   # kept fan-out per input
    acc.synops += nnz * m_out
    acc.nnz += nnz
    acc.numel_binary += x.numel()
    acc.sop_dense += float(nnz * m_out)   # rate x frames x M*K = nnz x M


def _first_input(args, kwargs) -> Optional[torch.Tensor]:
    if args:
        x = args[0]
    else:
        x = next((kwargs[k] for k in ("input", "x", "x_seq") if k in kwargs), None)
    return x if isinstance(x, torch.Tensor) else None


def _call(model: nn.Module, inputs: Inputs):
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def _resettable(module: nn.Module) -> bool:
    from ..nn import FusedNeuron
    return (isinstance(module, FusedNeuron) or _is_neuron(module)) and callable(getattr(module, "reset", None))


def count(model: nn.Module, inputs: Inputs, *, preset: Union[str, EnergyConstants] = "fp32",
          e_ac: Optional[float] = None, e_mac: Optional[float] = None, timesteps: Optional[int] = None,
          batch_size: Optional[int] = None, ann: str = "dense", backend: Optional[str] = None,
          eval_mode: bool = True, reset_states: bool = True) -> Report:
    """Run `model` once on `inputs` and count every Linear / Conv2d layer's operations and energy.

    inputs: a tensor (time-major [T, B, ...] or flat), or a tuple/list of positional arguments, or
        a dict of keyword arguments.
    preset: "fp32" (AC 0.9 pJ, MAC 4.6 pJ), "fp16" (0.4 / 1.5), "int8" (0.03 / 0.23), all from
        Horowitz (ISSCC 2014), or an EnergyConstants; e_ac / e_mac (pJ) override the preset.
    timesteps: T for the ANN equivalent; None infers it from time-major inputs of layers and
        neurons (or the number of calls of single-step SpikingJelly neurons), else 1.
    batch_size: samples in `inputs` (for per-sample numbers); None infers B from [T, B, ...] inputs.
    ann: "dense" (ANN equivalent = the unpruned layers) or "masked" (the same pruned weights).
    backend: run snnsparse layers on this backend (default: whatever is in force).
    eval_mode: count in eval() mode (BN uses running stats), restoring each module's mode after.
    reset_states: reset snnsparse LIF and SpikingJelly neuron states before and after the run.

    Returns a Report: report.layers[name] -> LayerCounts (sop_dense, synops, sop, mac, energy_pj,
    firing_rate, weight_density, ...), report.total, report.ann_energy_pj, report.energy_ratio
    (= energy_pj / ann_energy_pj). Counts are for all of `inputs` (every time step and sample).
    The conventions and their sources are in report.conventions and this module's docstring.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"energy.count: model must be a torch.nn.Module, got {type(model).__name__}")
    if ann not in ("dense", "masked"):
        raise ValueError(f"energy.count: ann must be 'dense' or 'masked', got {ann!r}")
    if timesteps is not None and (not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1):
        raise ValueError(f"energy.count: timesteps must be a positive int or None, got {timesteps!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"energy.count: batch_size must be a positive int or None, got {batch_size!r}")
    k = _constants(preset, e_ac=e_ac, e_mac=e_mac)

    root = type(model).__name__
    layers: Dict[nn.Module, _Layer] = {}
    order: List[_Layer] = []
    t_seen: List[int] = []
    b_seen: List[int] = []
    neuron_calls: Dict[nn.Module, int] = {}
    skipped: Dict[str, str] = {}
    handles = []

    def layer_hook(module, args, kwargs, out):
        x = _first_input(args, kwargs)
        if x is None:
            return
        acc = layers[module]
        if acc.calls == 0:
            order.append(acc)
        acc.calls += 1
        binary = _to_binary_flag(module, x)
        tm = _time_major(module, x)
        if tm is not None:
            t_seen.append(tm)
            b_seen.append(int(x.shape[1]))
        if isinstance(module, nn.Conv2d):
            _conv_call(acc, module, x, out, binary)
        else:
            _linear_call(acc, module, x, binary)

    def neuron_hook(module, args, kwargs, out):
        x = _first_input(args, kwargs)
        if x is None:
            return
        if getattr(module, "step_mode", "m") == "s":
            neuron_calls[module] = neuron_calls.get(module, 0) + 1
        elif x.dim() >= 2:
            t_seen.append(int(x.shape[0]))
            b_seen.append(int(x.shape[1]))

    for name, module in model.named_modules():
        label = name or root
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            layers[module] = _Layer(label, module)
            handles.append(module.register_forward_hook(layer_hook, with_kwargs=True))
        elif _is_neuron(module):
            handles.append(module.register_forward_hook(neuron_hook, with_kwargs=True))
        elif any(True for _ in module.parameters(recurse=False)):
            skipped[label] = type(module).__name__

    modes = {m: m.training for m in model.modules()}
    resettable = [m for m in model.modules() if _resettable(m)] if reset_states else []
    try:
        if eval_mode:
            model.eval()
        for m in resettable:
            m.reset()
        ctx = contextlib.nullcontext()
        if backend is not None:
            from .. import backends
            ctx = backends.use(backend)
        with torch.no_grad(), ctx:
            _call(model, inputs)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
        for m in resettable:
            m.reset()

    notes: List[str] = []
    t_seen += list(neuron_calls.values())
    if timesteps is not None:
        T = timesteps
        notes.append(f"T = {T} (given)")
    elif t_seen:
        T = max(t_seen)
        notes.append(f"T = {T} (inferred from time-major inputs / single-step neuron calls)")
    else:
        T = 1
        notes.append("T = 1: no time-major input or neuron found; pass timesteps= for the ANN equivalent")
    batch = max(b_seen) if b_seen else None
    if batch_size is not None:
        batch = batch_size
    not_run = [acc.name for acc in layers.values() if acc.calls == 0]
    if not_run:
        notes.append("layers that did not run (not counted): " + ", ".join(not_run))

    out_layers: Dict[str, LayerCounts] = {}
    total = Counts()
    ann_total = 0.0
    for acc in order:
        ann_mac = 0.0
        for frames, dense_pf, masked_pf, t_call in acc.call_geometry:
            per_frame = dense_pf if ann == "dense" else masked_pf
            if t_call is not None:
                ann_frames = frames / t_call
            elif T > 1 and acc.calls == 1 and batch is not None and frames == batch:
                ann_frames = frames   # computed once per sample (e.g. a static encoding conv before repeat)
                acc.note("input not repeated over T: the ANN equivalent runs it once per sample, as the SNN")
            else:
                ann_frames = frames / T
            ann_mac += ann_frames * per_frame
        energy = k.energy_pj(acc.sop, acc.mac)
        ann_e = k.e_mac * ann_mac
        if acc.binary_calls and acc.analog_calls:
            kind = "mixed"
        elif acc.analog_calls:
            kind = "analog"
        else:
            kind = "spikes"
        rate = acc.nnz / acc.numel_binary if acc.numel_binary else None
        if _is_snnsparse_spike_layer(acc.module):
            acc.note("path: event-driven kernel" if acc.binary_calls else "path: dense (non-binary input)")
        lc = LayerCounts(sop_dense=acc.sop_dense, synops=acc.synops, sop=acc.sop, mac=acc.mac,
                         energy_pj=energy, name=acc.name, kind=acc.kind, firing_rate=rate,
                         weight_density=acc.density, input=kind, calls=acc.calls, frames=acc.frames,
                         dense_macs=acc.dense_macs, ann_mac=ann_mac, ann_energy_pj=ann_e, notes=list(acc.notes))
        out_layers[acc.name] = lc
        total.sop_dense += lc.sop_dense
        total.synops += lc.synops
        total.sop += lc.sop
        total.mac += lc.mac
        total.energy_pj += lc.energy_pj
        ann_total += ann_e
    ratio = total.energy_pj / ann_total if ann_total > 0 else float("nan")
    if ann == "masked":
        notes.append("ANN equivalent uses the masked (pruned) weights")
    return Report(layers=out_layers, total=total, ann_energy_pj=ann_total, energy_ratio=ratio, constants=k,
                  timesteps=T, batch_size=batch, skipped=skipped, notes=notes)


__all__ = ["count", "layer_mask"]
