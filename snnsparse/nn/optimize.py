"""ss.nn.optimize_for_inference(model, example_inputs): an inference-only copy of a spiking model
that gives the same outputs and does less work (DESIGN.md section 8). This is the first, pure-Python
version: it uses the kernels that exist (snnsparse.ops packed conv / linear, the fused LIF).

What it does, in order:
1. Refuses, before any work, a model that is not an nn.Module (TypeError), one in training mode
   (ValueError: BatchNorm folding needs running statistics) and example_inputs the model cannot run
   (ValueError naming example_inputs and the model's own error). That one forward runs on a copy (the
   caller's model and its neuron states are never touched) and records every layer's input and
   output shapes, which decide what shape-dependent choices need (linear-BN1d folding, conv packing).
2. Works on a graph (snnsparse.nn.graph: torch.fx, with neurons and containers as leaves); a module
   whose forward fx cannot trace is walked child by child instead, each child taking analog input
   (the report says so). SpikingJelly's spiking transformers (Spikformer, SDT, QKFormer, MaxFormer and
   their attention modules), whose forwards check ranks with Python ifs, are traced through exact-class
   twins of their forwards (snnsparse.nn.transformers). Every BatchNorm whose input is exactly one
   conv / linear output (used by nothing else) is folded into it, in residual branches and downsample
   paths too, and inside SeqToANNContainer(conv, BN). The arithmetic is snnsparse.nn.fuse's.
3. Every conv / linear becomes an inference layer (snnsparse.nn.inference), chosen ONCE, by the type
   of the op that produces its input (snnsparse.nn.graph kinds): spikes -> PackedConv2d /
   PackedLinear (Conv1d: PackedConv1d, the conv2d kernels on the [N, C, 1, L] view; spike counts:
   bit planes), which keep only a PackedWeight made here and the bias; anything else -> dense
   torch with the folded, masked weight. Which classes have a known forward (and so can be
   replaced) are snnsparse.nn.convert's rules.
   An adaptive average pool whose bins cover one element each (a replication: VGG's 7x7 pool of the
   1x1 map of a 32x32 image) read only through a flatten by a linear layer is folded into that linear
   (the weight columns that read copies of one element summed, snnsparse.nn.fuse), so the linear reads
   512 inputs instead of 25088; the pool then passes its input on, at exactly the folded size.
4. SpikingJelly LIFNode / IFNode / ParametricLIFNode -> ss.nn.LIF / IF / ParametricLIF (convert's mapping
   and blockers, from_spikingjelly): one fused kernel over T. A multi-step one called once per forward
   is stateless per call (SpikingJelly's results with functional.reset_net between calls); one called
   more often keeps v between calls, as SpikingJelly does.
5. Anything it cannot do exactly stays the original module; `model.report()` has one row per layer:
   name, original type, action, packing format and density, and why.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import warnings
import statistics
import time
from collections import defaultdict
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from ..functional import NonBinarySpikesError, check_bool, is_binary
from ..ops import conv2d as _conv2d
from ..ops import cpp as _cpp
from ..ops import linear as _linear
from ..ops.packed import ConvFormat
from ..ops.reference import masked_weight
from . import graph as G
from . import transformers as _transformers
# convert's rules of which classes have a known forward (and so can be replaced), and its hook check.
from .convert import _decide, _foreign_hooks, sj_neuron_class
from .fuse import fold_bn, fold_replicated_columns
from .inference import (PACKED_LAYERS, DenseConv1d, DenseConv2d, DenseLinear, InferenceMaxPool2d, PackedConv1d,
                        PackedConv2d, PackedLinear, PackedPlanesConv1d, PackedPlanesConv2d, SinglePixelPool,
                        bit_planes, counts_conv2d)
from .layers import SpikeConv1d, SpikeConv2d
from .lif import FusedNeuron

WHERE = "optimize_for_inference"
ACTIONS = ("packed-event", "dense-analog", "bn-folded", "neuron-fused", "kept-values", "folded", "left")
_PACKABLE_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------------
# The report.
class LayerRecord(NamedTuple):
    name: str                        # module path in the original model ("" for the model itself)
    original: str                    # its class
    action: str                      # one of ACTIONS
    format: str = ""                 # packed-event: the PackedWeight format; dense-analog: "dense"
    density: Optional[float] = None  # fraction of kept synapses (conv / linear)
    reason: str = ""


class OptimizeReport:
    """What optimize_for_inference did: `rows` (one LayerRecord per layer, in execution order) and
    `notes` (model-level remarks, e.g. a module fx could not trace). str() gives a table."""

    def __init__(self):
        self.rows: List[LayerRecord] = []
        self.notes: List[str] = []
        self.self_check_max_abs_diff: Optional[float] = None  # optimized vs original on example_inputs

    def __iter__(self) -> Iterator[LayerRecord]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> LayerRecord:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no layer {name!r} in the report; layers: {[r.name for r in self.rows]}")

    def actions(self) -> Dict[str, str]:
        """{layer name: action}."""
        return {r.name: r.action for r in self.rows}

    def counts(self) -> Dict[str, int]:
        """{action: number of layers}."""
        out = {a: 0 for a in ACTIONS}
        for r in self.rows:
            out[r.action] += 1
        return out

    def __str__(self) -> str:
        head = ("layer", "original", "action", "format", "density", "why")
        cells = [head] + [(r.name or "<model>", r.original, r.action, r.format or "-",
                           "-" if r.density is None else f"{r.density:.3f}", r.reason) for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
        lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) + "  " + c[-1] for c in cells]
        summary = ", ".join(f"{n} {a}" for a, n in self.counts().items() if n)
        lines.append(f"({len(self.rows)} layers: {summary})")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"OptimizeReport({len(self.rows)} layers: {self.counts()})"


# --------------------------------------------------------------------------------------------------
# The returned module.
class OptimizedModel(nn.Module):
    """What optimize_for_inference returns: the optimized model (`.model`, an fx GraphModule or the
    original module with optimized children), run without autograd. Inference-only: .train() raises;
    its packed layers cannot be moved to another device or dtype (optimize the moved model instead).
    report() says per layer what was done and why."""

    def __init__(self, model: nn.Module, report: OptimizeReport):
        super().__init__()
        self.model = model
        self._report = report
        super().train(False)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.model(*args, **kwargs)

    def report(self) -> OptimizeReport:
        return self._report

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"{WHERE}: the optimized model is inference-only (BatchNorm folded, weights packed); "
                               f"train the original model and optimize it again")
        return super().train(False)

    def _apply(self, fn, recurse=True):
        # Refuse before anything moves: a half-moved model (dense layers moved, packed ones not) would be worse.
        packed = [m for m in self.modules() if isinstance(m, PACKED_LAYERS)]
        probe = torch.zeros(1, dtype=packed[0].packed.dtype) if packed else None
        out = fn(probe) if packed else None
        if packed and isinstance(out, torch.Tensor) and (out.device != probe.device or out.dtype != probe.dtype):
            raise RuntimeError(f"{WHERE}: the optimized model holds weights packed for the CPU kernels in one dtype; "
                               f"move or cast the original model ({out.device}, {out.dtype}), then optimize it again")
        return super()._apply(fn, recurse)


# --------------------------------------------------------------------------------------------------
# Checks and the example run.
def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{WHERE}: model must be a torch.nn.Module, got {type(model).__name__}")
    training = [n or "<model>" for n, m in model.named_modules() if m.training]
    if training:
        more = f" and {len(training) - 5} more" if len(training) > 5 else ""
        shown = ", ".join(repr(n) for n in training[:5]) + more
        raise ValueError(f"{WHERE}: the model is in training mode ({shown}); call model.eval() first: BatchNorm "
                         f"folding needs the running statistics (a training-mode BatchNorm normalises with batch "
                         f"statistics) and dropout must be off")


def _as_inputs(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(f"{WHERE}: example_inputs must be a Tensor or a tuple / list of the model's positional "
                    f"arguments, got {type(example_inputs).__name__}")


def _describe(inputs: tuple) -> str:
    return ", ".join(f"Tensor{list(a.shape)} {a.dtype}" if isinstance(a, torch.Tensor) else type(a).__name__
                     for a in inputs)


def _reset_states(model: nn.Module) -> None:
    """Reset every neuron state (snnsparse fused neurons, SpikingJelly memory modules): the optimized model
    starts fresh, and the example run leaves nothing behind."""
    sj = G.spikingjelly()
    memory = (FusedNeuron,) + ((sj.base.MemoryModule,) if sj is not None else ())
    for m in model.modules():
        if isinstance(m, memory):
            m.reset()


class _Calls(NamedTuple):
    module: nn.Module                 # kept alive so that its id() is not reused while optimizing
    shapes: List[Tuple[tuple, Optional[tuple]]]  # per call: (input shapes, output shape)
    first_input: List[torch.Tensor]   # conv/linear only: its first call's input, to time the packings on


class _CallsByModule(dict):
    output = None


def _example_run(model: nn.Module, inputs: tuple) -> Dict[int, _Calls]:
    calls: Dict[int, _Calls] = _CallsByModule()

    def record(module, args, out):
        ins = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
        entry = calls.setdefault(id(module), _Calls(module, [], []))
        entry.shapes.append((ins, tuple(out.shape) if isinstance(out, torch.Tensor) else None))
        if (G.is_conv_or_linear(module) and not entry.first_input and args
                and isinstance(args[0], torch.Tensor)):
            entry.first_input.append(args[0].detach().clone())

    handles = [m.register_forward_hook(record) for m in model.modules()]
    _reset_states(model)
    try:
        with torch.no_grad():
            calls.output = model(*inputs)  # kept for the self-check of the optimized model
    except Exception as e:
        raise ValueError(f"{WHERE}: the model cannot run example_inputs ({_describe(inputs)}): {G.error_text(e)}. "
                         f"Pass inputs the model takes (e.g. [T, B, C, H, W] for a multi-step SpikingJelly "
                         f"model, [B, C, H, W] per step for a single-step one)") from e
    finally:
        for h in handles:
            h.remove()
        _reset_states(model)
    return calls


# Runs per candidate format when timing: one warm-up, then the median of this many.
_TIMING_RUNS = 3
# Every format is first screened on a quarter of the example frames (every 4th): a warm-up run, then one timed run
# (a first run can be several times slower than the next, so it is never what a format is judged by).
# Only the formats within this factor of the fastest screening time are then timed on all frames
# (a warm-up, then _TIMING_RUNS runs, median). The slow formats' full runs were most of optimize's time:
# spikformer_cifar10 6.9 s, 5.6 s of it timing (output-channel rows at 2-21 ms against 8-181 ms for the
# others on its 1x1 projections and patch-embedding convs); VGG11 0.81 s of timing.
_SCREEN_MARGIN = 3.0
_SCREEN_FRACTION = 4


def _fastest_packing(pack, run, formats, x):
    """(PackedWeight, note): the packing whose kernel ran fastest on x, the layer's own input on
    example_inputs (its spike rate and geometry), measured, not guessed: the best format depends on
    the spike rate, the density and the image size together (format 4, output-channel rows, is 1.2x
    faster than dense blocks at 128@32x32 but 2-8x slower at 8x8 and below, measured at rate and
    density 0.05; bench/RESULTS.md). Without x, the kernels' own density rule (format 0) decides."""
    if x is None:
        return pack(0), "format by the density rule (no binary example input to time)"
    # Every _SCREEN_FRACTION-th frame ([N, C, H, W] / [N, K], frames T-major: t * B + b), so that every time
    # step is in it: the first quarter would be the first time step alone, whose spikes are far fewer
    # (membranes start at rest), and screening on it picked formats 1.3x slower for plif CIFAR10Net.
    screen = x[::_SCREEN_FRACTION].contiguous()
    packs, screen_times = [], []
    for fmt in formats:
        try:
            p = pack(fmt)
        except (RuntimeError, ValueError):  # a format this build / geometry cannot serve
            continue
        run(p, screen)
        t0 = time.perf_counter()
        run(p, screen)
        packs.append(p)
        screen_times.append(time.perf_counter() - t0)
    if not packs:
        raise RuntimeError(f"no packing format among {tuple(formats)} could be built for this layer")
    times, screened = {}, {}
    for p, t_screen in zip(packs, screen_times):
        if t_screen > _SCREEN_MARGIN * min(screen_times):
            screened[p.format.name] = t_screen  # its timed screening run, on the quarter of the frames
            continue
        run(p, x)  # warm-up on all frames
        ts = []
        for _ in range(_TIMING_RUNS):
            t0 = time.perf_counter()
            run(p, x)
            ts.append(time.perf_counter() - t0)
        times[p.format.name] = statistics.median(ts)
    best = min((p for p in packs if p.format.name in times), key=lambda p: times[p.format.name])

    def listed(d):
        return ", ".join(f"{k} {1e3 * v:.2f} ms" for k, v in sorted(d.items(), key=lambda kv: kv[1]))
    note = "format timed on example_inputs: " + listed(times)
    if screened:
        note += f" (screened out, timed on {screen.shape[0]} of {x.shape[0]} frames: {listed(screened)})"
    return best, note


class _Shared(NamedTuple):
    """The original model's tensors that the working copy shares (see _copy)."""
    tensors: Dict[int, torch.Tensor]   # id -> tensor: the original's parameters, prune masks, prune's weight
    versions: Dict[int, int]           # id -> its in-place version counter when the copy was made


def _copy(model: nn.Module) -> Tuple[nn.Module, _Shared]:
    """copy.deepcopy(model) whose parameters (and torch.nn.utils.prune's float 0/1 masks) are the
    original's own tensors, not copies: optimize_for_inference reads them (folds and packings are new
    tensors; nothing here writes one in place) and builds new layers from them, so copying them first
    was wasted memory traffic (VGG11's 4096x25088 classifier weight and its mask: 1.5 s of a 6.8 s
    optimize on 2 threads). Whatever of them the result still holds is cloned by _unshare before it is
    returned, so the result and the caller's model never share memory. The one place the model's own
    code runs, the example forward, is checked not to have written a shared tensor (_check_unwritten).

    Also for a model pruned with torch.nn.utils.prune: its `weight` attribute is weight_orig * mask
    computed with autograd (not a leaf), which deepcopy refuses. That tensor is derived (the prune hook
    recomputes it before every forward, by assignment), so the copy takes it detached, sharing its values."""
    from ..pruning.masks import _prune_hooks  # lazy: snnsparse.pruning imports snnsparse.nn
    memo: Dict[int, object] = {}
    shared: Dict[int, torch.Tensor] = {}
    for m in model.modules():
        for value in vars(m).values():
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.grad_fn is not None:
                memo[id(value)] = shared[id(value)] = value.detach()
        tensors = [p for p in m._parameters.values() if p is not None]
        tensors += [m._buffers[f"{n}_mask"] for n in _prune_hooks(m) if m._buffers.get(f"{n}_mask") is not None]
        for t in tensors:
            memo[id(t)] = shared[id(t)] = t
    work = copy.deepcopy(model, memo)
    return work, _Shared(shared, {i: t._version for i, t in shared.items()})


def _check_unwritten(shared: _Shared) -> None:
    """Refuse a model whose example forward wrote a tensor the working copy shares with the original."""
    for i, t in shared.tensors.items():
        if t._version != shared.versions[i]:
            raise RuntimeError(
                f"{WHERE}: the model's forward on example_inputs wrote one of its parameters (or pruning masks) in "
                f"place (shape {tuple(t.shape)}), in eval mode under torch.no_grad(); its outputs then depend on how "
                f"often it ran, which no inference copy can reproduce. Remove that write from the forward.")


def _storage_ptr(t: torch.Tensor) -> Optional[int]:
    """Where t's memory starts (None: no memory of its own to share, or not a strided tensor: a sparse or
    nested tensor has no single storage, and the shared ones are parameters and masks)."""
    if t.layout != torch.strided or t.device.type == "meta" or not t.untyped_storage().nbytes():
        return None
    return t.untyped_storage().data_ptr()


def _unshare(body: nn.Module, shared: _Shared) -> None:
    """Clone every tensor of `body` that lies in the storage of one of the original's shared tensors
    (a layer left as it is, a bias taken over as it is), keeping ties: a tensor held twice is cloned once."""
    storages = {_storage_ptr(t) for t in shared.tensors.values()} - {None}
    clones: Dict[int, torch.Tensor] = {}

    def fresh(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in clones:
            c = t.detach().clone()
            clones[id(t)] = nn.Parameter(c, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else c
        return clones[id(t)]

    def is_shared(t) -> bool:
        return isinstance(t, torch.Tensor) and _storage_ptr(t) in storages

    for m in body.modules():
        for table in (m._parameters, m._buffers):
            for k, t in table.items():
                if is_shared(t):
                    table[k] = fresh(t)
        for k, v in list(vars(m).items()):
            if is_shared(v):
                m.__dict__[k] = fresh(v)


def _type_name(module: nn.Module) -> str:
    info = G.bn_of(module)
    if info is not None and info.bn is not module:
        return f"{type(module).__name__}({type(info.bn).__name__})"
    return type(module).__name__


def _join_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _conv_run(geometry, counts: bool, name: str):
    """run(packing, x) for _fastest_packing of a conv layer: as the layer will run, so spike counts are
    timed on the counts kernel (format 3) or per bit plane (the others)."""
    if counts:
        return lambda p, xx: counts_conv2d(xx, p, None, *geometry, name)
    return lambda p, xx: _conv2d.forward_packed(xx, p, None, *geometry)


def _counts_how(packed) -> str:
    return "the counts kernel, one pass" if packed.format == ConvFormat.DENSE_BLOCKS else "one event pass per bit plane"


@dataclasses.dataclass
class _PoolFold:
    """A replicating pool (adaptive average pool of one-element bins) read only by a flatten read only by a
    linear layer: the linear reads x[..., index] of the pool's flattened input x, so it can read x itself
    with its weight columns of copies summed (fold_replicated_columns)."""
    pool_name: str
    index: torch.Tensor          # [K] long: the pool-input feature each of the linear's K inputs reads
    inverse: torch.Tensor        # [in_features] long: one position k of each pool-input feature in index
    in_features: int             # the folded linear's input features (the pool input, flattened)
    in_sizes: Tuple[int, ...]    # the pooled sizes of the pool's input the fold was built for
    applied: bool = False        # the linear was built on the folded weights


# --------------------------------------------------------------------------------------------------
class _Optimizer:
    def __init__(self, calls: Dict[int, _Calls], packed: bool = True):
        self.calls = calls
        self.packed = packed  # False: every conv / linear dense torch (the baseline with the same folds and neurons)
        self.report = OptimizeReport()
        self.bn_outcome: Dict[int, Tuple[str, str]] = {}  # id(BatchNorm) -> (action, reason), set by its conv
        # Adaptive average pools whose bins held one element each in every call of the example run
        # (their output is their input's values: spikes stay spikes).
        self.single_pixel = {key for key, c in calls.items() if self._single_pixel_pool(c)}
        self.pool_folds: Dict[int, _PoolFold] = {}  # id(linear) -> the replicating pool folded into it

    @staticmethod
    def _single_pixel_pool(c: _Calls) -> bool:
        dims = G.adaptive_avg_dims(c.module)
        return bool(dims) and bool(c.shapes) and all(
            ins and out is not None and G.single_pixel_bins(ins[0][-dims:], out[-dims:]) for ins, out in c.shapes)

    def max_pool(self, module: nn.Module, name: str) -> nn.Module:
        why = ("max-pool without the argmax indices torch's CPU kernel computes (snnsparse::max_pool2d; same "
               "values, spikes stay spikes)")
        self.row(name, module, "kept-values", reason=why)
        return InferenceMaxPool2d(module, multi_step=G.max_pool2d_steps(module) == "m", name=name, why=why)

    def single_pixel_pool(self, module: nn.Module, name: str) -> nn.Module:
        why = ("each bin of this adaptive average pool covers one input element at the sizes of example_inputs: "
               "its output is its input's values (spikes stay spikes); checked on every call")
        self.row(name, module, "kept-values", reason=why)
        return SinglePixelPool(module, G.adaptive_avg_dims(module), name=name, why=why)

    def folded_pool(self, module: nn.Module, name: str, fold: _PoolFold, linear_name: str) -> nn.Module:
        why = (f"each bin covers one input element at the sizes of example_inputs: a replication, folded into "
               f"{linear_name!r} (its weight columns that read copies of one element summed: "
               f"{fold.index.numel()} -> {fold.in_features} inputs); passes its input on, only at spatial size "
               f"{fold.in_sizes}")
        self.row(name, module, "folded", reason=why)
        return SinglePixelPool(module, G.adaptive_avg_dims(module), folded_sizes=fold.in_sizes, name=name, why=why)

    def find_pool_folds(self, g: fx.Graph, mods, sites, reads_into) -> Dict[fx.Node, Tuple[fx.Node, _PoolFold]]:
        """{pool node: (linear node, fold)} for every replicating pool whose output only a flatten reads, whose
        output only a linear layer reads, each run once. VGG at 32x32: the 7x7 pool of the 1x1 map made the
        first classifier layer read 25088 inputs (4096x25088 weights) for 512 values."""
        folds = {}
        for node in g.nodes:
            if node.op != "call_module" or id(mods[node]) not in self.single_pixel or len(node.users) != 1:
                continue
            flat = next(iter(node.users))
            if not G.is_flatten(flat, mods) or flat.args[0] is not node or len(flat.users) != 1:
                continue
            lin_node = next(iter(flat.users))
            if lin_node.op != "call_module" or not isinstance(mods[lin_node], nn.Linear):
                continue
            pool, lin = mods[node], mods[lin_node]
            ok = all(len(n.args) == 1 and not n.kwargs and not reads_into(n.target) for n in (node, lin_node))
            ok = ok and all(len(sites[id(m)]) == 1 and self.runs(m) == 1 for m in (pool, lin))
            ok = ok and (flat.op != "call_module" or len(sites[id(mods[flat])]) == 1)
            fold = self._pool_fold(pool, lin, _join_name("", node.target)) if ok else None
            if fold is not None:
                folds[node] = (lin_node, fold)
        return folds

    def _pool_fold(self, pool: nn.Module, lin: nn.Linear, pool_name: str) -> Optional[_PoolFold]:
        """The fold when the recorded shapes show flatten merging exactly the channel and pooled dims into
        the linear's input features, and every pool-input element is read (else None: not folded)."""
        dims = G.adaptive_avg_dims(pool)
        (ins, out), = self.calls[id(pool)].shapes
        (lin_ins, _), = self.calls[id(lin)].shapes
        if not ins or out is None or not lin_ins or len(out) < dims + 1 or len(ins[0]) != len(out):
            return None
        lead, inner = out[:-(dims + 1)], out[-(dims + 1):]
        in_sizes = tuple(ins[0][-dims:])
        if tuple(lin_ins[0]) != tuple(lead) + (math.prod(inner),) or ins[0][:-dims] != out[:-dims]:
            return None
        in_features = inner[0] * math.prod(in_sizes)
        if in_features >= lin.in_features:
            return None  # nothing replicated (a pool to the size it has): no gain
        index = G.single_pixel_gather(torch.arange(in_features).view(inner[0], *in_sizes), inner[1:]).reshape(-1)
        if int(torch.bincount(index, minlength=in_features).min()) < 1:
            return None
        inverse = torch.empty(in_features, dtype=torch.long)
        inverse[index] = torch.arange(index.numel())
        return _PoolFold(pool_name, index, inverse, in_features, in_sizes)

    def twin(self, module: nn.Module):
        """A traceable forward for a SpikingJelly transformer module fx cannot trace (snnsparse.nn.transformers)."""
        calls = self.calls.get(id(module))
        return _transformers.twin_forward(module, [ins for ins, _ in calls.shapes] if calls else None)

    def runs(self, module: nn.Module) -> int:
        """How many times the module ran in the example forward."""
        calls = self.calls.get(id(module))
        return 0 if calls is None else len(calls.shapes)

    def row(self, name, module, action, fmt="", density=None, reason=""):
        self.report.rows.append(LayerRecord(name, _type_name(module), action, fmt, density, reason))

    # -- entry: a module with unknown input -------------------------------------------------------
    def optimize(self, module: nn.Module, name: str) -> nn.Module:
        """`module` optimized (a new module, or `module` changed in place)."""
        if G.is_leaf(module) or G.chain_items(module) is not None:
            return self.leaf(module, name, G.analog(f"the input of {name or '<model>'!r}, not traced"))
        traced = G.trace(module, self.twin)
        if traced.graph is None:
            self.report.notes.append(
                f"fx could not trace {name or '<model>'!r} ({type(module).__name__}: {traced.error}); its children "
                f"were optimized one by one, each taking its input as analog (no BatchNorm folded across them)")
            self.children(module, name)
            return module
        return self.graph(module, traced, name)

    def children(self, module: nn.Module, name: str) -> None:
        # A module that declares its forward a pipeline of its children (snnsparse_pipeline: each one's
        # output is the next one's input, e.g. ss.models.SpikingCNN) passes kinds from one to the next.
        pipeline = getattr(type(module), "snnsparse_pipeline", ())
        x = G.analog(f"the input of {name or '<model>'!r} (not traced)")
        for key in pipeline:
            child, cname = module._modules[key], _join_name(name, key)
            if type(child) is nn.Sequential:
                x = self.chain(child, cname, x, items=G.expand_sequential(child), keep_positions=True)
            else:
                new = self.optimize(child, cname)
                if new is not child:
                    setattr(module, key, new)
                x = G.analog(f"output of {cname!r} ({type(child).__name__})")
        for key, child in list(module._modules.items()):
            if key in pipeline:
                continue
            if type(child) is nn.Sequential:
                # The untraced parent may index it (features[i], len, slices): it stays an nn.Sequential,
                # its items optimized in order, in place (snnsparse.models.SpikingCNN does exactly that).
                cname = _join_name(name, key)
                self.chain(child, cname, G.analog(f"the input of {cname!r} (its parent is not traced)"),
                           items=G.expand_sequential(child), keep_positions=True)
            elif child is not None:
                new = self.optimize(child, _join_name(name, key))
                if new is not child:
                    setattr(module, key, new)

    def leaf(self, module: nn.Module, name: str, x: G.Kind) -> nn.Module:
        """One leaf module, not followed by anything we know of (no BatchNorm fold)."""
        if G.chain_items(module) is not None:
            self.chain(module, name, x)
            return module
        if G.is_conv_or_linear(module):
            new, _ = self.layer(module, name, x)
            return module if new is None else new
        if G.neuron_class(module) is not None:
            new = self.neuron(module, name)
            return module if new is None else new
        self.other(module, name)
        return module

    # -- one fx graph ----------------------------------------------------------------------------
    def graph(self, root: nn.Module, traced: G.Traced, prefix: str) -> fx.GraphModule:
        g = traced.graph
        mods: Dict[fx.Node, nn.Module] = {}
        sites: Dict[int, List[fx.Node]] = defaultdict(list)
        for node in g.nodes:
            if node.op == "call_module":
                mods[node] = root.get_submodule(node.target)
                sites[id(mods[node])].append(node)
        # A module whose tensors the forward reads directly (get_attr) must keep them: never replaced.
        read_directly = {n.target.rpartition(".")[0] for n in g.nodes if n.op == "get_attr"}

        def reads_into(target: str) -> bool:  # its own tensors or those of a module inside it
            return any(r == target or r.startswith(target + ".") for r in read_directly)

        kinds = self.kinds(g, mods, traced, prefix)

        def x_of(node: fx.Node) -> G.Kind:
            a = node.args[0] if node.args else None
            if isinstance(a, fx.Node) and a in kinds:
                return kinds[a]
            return G.analog(f"no tensor input ({node.name})")

        replace: Dict[int, nn.Module] = {}  # id(module) -> its replacement
        folded: Dict[fx.Node, fx.Node] = {}  # BatchNorm node -> the conv / linear node it was folded into
        pool_folds = self.find_pool_folds(g, mods, sites, reads_into)
        for lin_node, fold in pool_folds.values():
            fold.pool_name = _join_name(prefix, fold.pool_name)
            self.pool_folds[id(mods[lin_node])] = fold
        pool_rows: Dict[fx.Node, int] = {}  # a folded pool's place in the report (decided after its linear)
        done = set()
        for node in list(g.nodes):
            if node.op != "call_module" or id(mods[node]) in done:
                continue
            m, name = mods[node], _join_name(prefix, node.target)
            done.add(id(m))
            if node in pool_folds:
                pool_rows[node] = len(self.report.rows)
                continue
            # A module called at several places is decided once, for the least binary of its inputs.
            x = G.join([x_of(n) for n in sites[id(m)]], f"it is called at {len(sites[id(m)])} places")
            if node.target in traced.opaque:
                self.row(name, m, "left", reason=f"fx could not trace it ({traced.opaque[node.target]}); it runs as "
                                                 f"it is, its children were optimized one by one (inputs analog)")
                self.children(m, name)
                continue
            replaceable = G.is_conv_or_linear(m) or G.neuron_class(m) is not None or G.bn_of(m) is not None
            replaceable = replaceable or G.chain_items(m) is not None
            replaceable = replaceable or G.max_pool2d_steps(m) is not None or id(m) in self.single_pixel
            if replaceable and reads_into(node.target):
                self.row(name, m, "left", reason="the model's forward reads its tensors directly (kept as they are)")
                continue
            if replaceable and any(len(n.args) != 1 or n.kwargs for n in sites[id(m)]):
                self.row(name, m, "left", reason="it is called with other arguments than one positional input")
                continue
            if G.is_conv_or_linear(m):
                bn, bn_node, blocker = self.bn_after(node, mods, sites, reads_into)
                new, did_fold = self.layer(m, name, x, bn, blocker)
                if new is not None:
                    replace[id(m)] = new
                if did_fold:
                    folded[bn_node] = node
                continue
            if G.bn_of(m) is not None:
                self.bn_row(name, m)
                continue
            if G.neuron_class(m) is not None:
                # once per forward: one call site AND it ran once (a parent may loop over a traced block)
                new = self.neuron(m, name, one_call=len(sites[id(m)]) == 1 and self.runs(m) == 1)
                if new is not None:
                    replace[id(m)] = new
                continue
            if G.chain_items(m) is not None:
                self.chain(m, name, x)
                continue
            if id(m) in self.single_pixel:
                replace[id(m)] = self.single_pixel_pool(m, name)
                continue
            if G.max_pool2d_steps(m) is not None:
                replace[id(m)] = self.max_pool(m, name)
                continue
            self.other(m, name)

        for node, (lin_node, fold) in sorted(pool_folds.items(), key=lambda kv: -pool_rows[kv[0]]):
            m, name = mods[node], _join_name(prefix, node.target)
            self.pool_folds.pop(id(mods[lin_node]), None)
            if fold.applied:
                replace[id(m)] = self.folded_pool(m, name, fold, _join_name(prefix, lin_node.target))
            else:  # the linear was left as it is: the pool replicates, as before
                replace[id(m)] = self.single_pixel_pool(m, name)
            self.report.rows.insert(pool_rows[node], self.report.rows.pop())

        self.byte_spikes_in_graph(g, mods, sites, replace, prefix)
        for node, m in mods.items():  # every call site (a module may be called under several names)
            if id(m) in replace:
                root.set_submodule(node.target, replace[id(m)])
        for bn_node, conv_node in folded.items():
            bn_node.replace_all_uses_with(conv_node)
            g.erase_node(bn_node)
        g.lint()
        return fx.GraphModule(root, g, class_name=type(root).__name__)

    # -- spikes as bytes between layers ---------------------------------------------------------------
    # A fused neuron whose every reader takes bool / uint8 spikes (the packed and dense inference layers,
    # through flatten / identity / dropout / the optimizer's max-pool) writes its spikes as uint8: a quarter
    # of the stores of float32, and the event kernels scan a quarter of the bytes. Any other reader (a
    # residual add, the model's output, a function call, a module we do not know) keeps float spikes.
    _BYTE_READERS = (PackedConv2d, PackedLinear, DenseConv2d, DenseLinear)

    def _bytes_to(self, module: Optional[nn.Module]) -> Optional[bool]:
        """True: reads bytes; None: passes them on (ask its readers; None is a folded BatchNorm removed
        from its container); False: neither."""
        if module is None:
            return None
        if type(module) in self._BYTE_READERS:
            return True
        return None if G.byte_passthrough(module) else False

    def _byte_neuron(self, new: nn.Module, name: str) -> None:
        new.spike_dtype = torch.uint8
        self.report.rows[:] = [r._replace(reason=r.reason + "; spikes written as uint8 (every reader takes bytes)")
                               if r.name == name and r.action == "neuron-fused" else r for r in self.report.rows]

    def byte_spikes_in_graph(self, g: fx.Graph, mods, sites, replace, prefix: str) -> None:
        def readers_take_bytes(node: fx.Node) -> bool:
            if not node.users:
                return False
            for user in node.users:
                if user.op != "call_module" or len(sites[id(mods[user])]) != 1:
                    return False
                m = replace.get(id(mods[user]), mods[user])
                ok = self._bytes_to(m)
                if ok is False or (ok is None and not readers_take_bytes(user)):
                    return False
            return True

        for node, m in mods.items():
            new = replace.get(id(m), m)  # an ss.nn neuron of the model stays (in the optimized copy)
            if (isinstance(new, FusedNeuron) and len(sites[id(m)]) == 1 and self.runs(m) == 1
                    and readers_take_bytes(node)):
                self._byte_neuron(new, _join_name(prefix, node.target))

    def byte_spikes_in_chain(self, items, name: str) -> None:
        """The same for the items of a container (readers: the items after the neuron, in order)."""
        current = [it.parent._modules.get(it.key) for it in items]
        for i, it in enumerate(items):
            new = current[i]
            if not isinstance(new, FusedNeuron) or self.runs(it.module) != 1:
                continue
            j = i + 1
            while j < len(items) and self._bytes_to(current[j]) is None:
                j += 1
            if j < len(items) and self._bytes_to(current[j]) is True:
                self._byte_neuron(new, _join_name(name, it.suffix))

    def kinds(self, g: fx.Graph, mods, traced: G.Traced, prefix: str) -> Dict[fx.Node, G.Kind]:
        """The kind of every node. A node written in place (add_, inplace=True modules) makes its whole
        alias family (views, reshapes, identities of it) analog: which users see the new values is not
        worth tracking, and analog only costs speed."""
        forced: Dict[fx.Node, G.Kind] = {}
        for _ in range(2):
            kinds: Dict[fx.Node, G.Kind] = {}
            for node in g.nodes:
                if node.op == "placeholder":
                    kinds[node] = G.analog("the model input" if not prefix else f"the input of {prefix!r}")
                elif node.op == "get_attr":
                    kinds[node] = G.analog(f"tensor {node.target!r}")
                elif node.op == "call_module":
                    name = _join_name(prefix, node.target)
                    a = node.args[0] if node.args else None
                    x = kinds.get(a) if isinstance(a, fx.Node) else None
                    if node.target in traced.opaque or x is None:
                        kinds[node] = G.analog(f"output of {name!r} ({type(mods[node]).__name__})")
                    else:
                        kinds[node] = G.module_kind(mods[node], name, x, self.single_pixel)
                elif node.op in ("call_function", "call_method"):
                    kinds[node] = G.op_kind(node, kinds)
                if node in forced:
                    kinds[node] = forced[node]
            written = [n for n in g.nodes
                       if G.mutates_input(n, mods.get(n)) and n.args and isinstance(n.args[0], fx.Node)]
            new_forced = {}
            for n in written:
                for a in self.alias_family(n.args[0], mods):
                    new_forced[a] = G.analog(f"{a.name}, written in place by {n.name}")
            if set(new_forced) <= set(forced):
                return kinds
            forced.update(new_forced)
        return kinds

    @staticmethod
    def alias_family(start: fx.Node, mods) -> List[fx.Node]:
        def view_like(n: fx.Node) -> bool:
            if n.op == "call_function":
                return n.target in G._SAME_FUNCTIONS or n.target in G._INPLACE_OPERATORS
            if n.op == "call_method":
                return n.target in G._SAME_METHODS or G.mutates_input(n)
            return n.op == "call_module" and (G.keeps_values(mods[n]) or G.mutates_input(n, mods[n]))

        seen, todo = {start}, [start]
        while todo:
            n = todo.pop()
            near = [u for u in n.users if view_like(u) and u.args and u.args[0] is n]
            if view_like(n) and n.args and isinstance(n.args[0], fx.Node):
                near.append(n.args[0])
            for m in near:
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return list(seen)

    def bn_after(self, node: fx.Node, mods, sites, reads_into):
        """(BNInfo, its node, why it cannot be folded or None) for the BatchNorm that alone uses this
        conv / linear node's output; (None, None, None) when there is none."""
        users = list(node.users)
        if len(users) != 1:
            return None, None, None
        u = users[0]
        if u.op != "call_module" or not u.args or u.args[0] is not node:
            return None, None, None
        info = G.bn_of(mods[u])
        if info is None:
            return None, None, None
        blocker = None
        if len(sites[id(mods[node])]) > 1:
            blocker = "its conv / linear is called at several places"
        elif len(sites[id(mods[u])]) > 1:
            blocker = "it is called at several places"
        elif len(u.args) != 1 or u.kwargs:
            blocker = "it is called with more arguments than its input"
        elif reads_into(u.target):
            blocker = "the model's forward reads its tensors directly"
        return info, u, blocker

    def bn_row(self, name: str, module: nn.Module) -> None:
        info = G.bn_of(module)
        action, reason = self.bn_outcome.pop(id(info.bn), (
            "left", "not folded: its input is not the output of a conv / linear layer used by nothing else"))
        self.row(name, module, action, reason=reason)

    # -- a time-flattening container (SeqToANNContainer, SeqToANN): its children in order ------------
    def chain(self, container: nn.Module, name: str, x: G.Kind, items=None, keep_positions: bool = False) -> G.Kind:
        """keep_positions: a folded BatchNorm becomes nn.Identity instead of being removed, so a parent
        that indexes the container (features[i], len(features)) sees the same positions."""
        items = G.chain_items(container) if items is None else items
        i = 0
        while i < len(items):
            it = items[i]
            cname, m = _join_name(name, it.suffix), it.module
            nxt = items[i + 1] if i + 1 < len(items) else None
            if G.is_conv_or_linear(m):
                info = G.bn_of(nxt.module) if nxt is not None else None
                if info is not None and info.flattens and not keep_positions:
                    info = None  # a time-flattening wrapper inside one: not a pattern models use
                blocker = None
                if info is not None and max(self.runs(m), self.runs(info.bn)) > 1:
                    blocker = "it or the layer before it runs more than once per forward (shared)"
                new, did_fold = self.layer(m, cname, x, info, blocker)
                if new is not None:
                    setattr(it.parent, it.key, new)
                if info is not None:
                    self.bn_row(_join_name(name, nxt.suffix), nxt.module)
                    if did_fold and keep_positions:
                        setattr(nxt.parent, nxt.key, nn.Identity())
                    elif did_fold:
                        del nxt.parent._modules[nxt.key]  # by key: the other children keep their names
                    i += 1
                x = G.analog(f"output of {cname!r} ({type(m).__name__})")
            else:
                if G.bn_of(m) is not None:
                    self.bn_row(cname, m)
                elif G.neuron_class(m) is not None:
                    new = self.neuron(m, cname)
                    if new is not None:
                        setattr(it.parent, it.key, new)
                elif G.chain_items(m) is not None:
                    self.chain(m, cname, x)
                elif G.max_pool2d_steps(m) is not None:
                    setattr(it.parent, it.key, self.max_pool(m, cname))
                elif G.keeps_values(m):  # flatten, identity, ...: runs as it is, spikes stay spikes
                    self.other(m, cname)
                elif id(m) in self.single_pixel:
                    setattr(it.parent, it.key, self.single_pixel_pool(m, cname))
                elif not G.is_leaf(m):  # a block of its own: optimized as a model whose input is analog
                    new = self.optimize(m, cname)
                    if new is not m:
                        setattr(it.parent, it.key, new)
                else:
                    self.other(m, cname)
                x = G.module_kind(m, cname, x, self.single_pixel)
            i += 1
        self.byte_spikes_in_chain(items, name)
        return x

    # -- conv / linear ---------------------------------------------------------------------------
    def layer(self, module: nn.Module, name: str, x: G.Kind, bn: Optional[G.BNInfo] = None,
              bn_blocker: Optional[str] = None) -> Tuple[Optional[nn.Module], bool]:
        """The inference layer replacing one conv / linear (None: left as it is) and whether `bn` (the
        BatchNorm that alone uses its output, if any) was folded into it."""
        spike, why = self.spike_twin(module, name)
        if spike is None:
            self.row(name, module, "left", reason=why)
            if bn is not None:
                self.bn_outcome[id(bn.bn)] = ("left", f"not folded: the layer before it, {name!r}, is left unchanged")
            return None, False
        weight, bias, mask = spike.weight.detach(), spike.bias, spike.weight_mask
        folded, fold_rank = False, None
        if bn is not None:
            blocker = bn_blocker or self.fold_blocker(module, spike, bn)
            if blocker is None:
                weight, bias, fold_rank = self.fold(spike, bn, self.calls[id(module)].shapes)
                folded = True
                self.bn_outcome[id(bn.bn)] = ("bn-folded", f"folded into {name!r} (its running statistics)")
            else:
                self.bn_outcome[id(bn.bn)] = ("left", f"not folded: {blocker}")
        pool = self.pool_folds.get(id(module))
        if pool is not None:
            weight, mask = fold_replicated_columns(weight, mask, pool.index, pool.in_features)
            pool.applied = True
        new = self.inference_layer(module, spike, name, x, weight, bias, mask, fold_rank)
        if pool is not None:
            note = (f"; the replication of {pool.pool_name!r} folded in (weight columns of copies summed: "
                    f"{pool.index.numel()} -> {pool.in_features} inputs)")
            new.why += note
            self.report.rows[-1] = self.report.rows[-1]._replace(reason=self.report.rows[-1].reason + note)
        return new, folded

    def spike_twin(self, module: nn.Module, name: str):
        """(SpikeConv2d / SpikeLinear with the module's weights and mask, "") or (None, why not), by
        convert's rules: only classes whose forward is known, no hooks the new layer would drop,
        geometry the kernels take."""
        hooks = _foreign_hooks(module)
        if hooks:
            return None, f"it has hooks the optimized layer would drop: {', '.join(hooks)}"
        if id(module) not in self.calls:
            return None, "it did not run on example_inputs, so its input shapes are unknown"
        if not all(ins for ins, _ in self.calls[id(module)].shapes):
            return None, "it is called without a positional tensor input (the inference layers take one)"
        try:
            # copy=False: the twin reads the module's weight, it is never changed (_unshare clones what stays)
            decision = _decide(module, name, None, "auto", copy=False)
        except (ValueError, TypeError) as e:
            return None, str(e)
        if decision.record is None or decision.record.action == "left":
            return None, decision.record.reason if decision.record is not None else "not a layer convert knows"
        return (module if decision.new is None else decision.new), ""

    def fold_blocker(self, module: nn.Module, spike: nn.Module, bn: G.BNInfo) -> Optional[str]:
        b = bn.bn
        hooks = _foreign_hooks(b)
        if hooks:
            return f"it has hooks folding would drop: {', '.join(hooks)}"
        if not b.track_running_stats or b.running_mean is None or b.running_var is None:
            return "it has no running statistics (track_running_stats=False: it normalises every batch by itself)"
        out = spike.weight.shape[0]
        if b.num_features != out:
            return f"it normalises {b.num_features} channels, the layer before it has {out}"
        if b.running_mean.device != spike.weight.device:
            return f"it is on {b.running_mean.device}, the layer before it on {spike.weight.device}"
        if isinstance(spike, SpikeConv2d):
            return None if bn.dims == 2 else f"a BatchNorm{bn.dims}d after a conv2d"
        if isinstance(spike, SpikeConv1d):
            return self.conv1d_fold_blocker(module, bn)
        if bn.dims != 1:
            return f"a BatchNorm{bn.dims}d after a linear layer"
        ranks = {len(out_shape) for _, out_shape in self.calls[id(module)].shapes if out_shape is not None}
        seen = {r - (1 if bn.flattens else 0) for r in ranks}
        if seen != {2}:
            return (f"BatchNorm1d normalises dim 1 of what it sees (rank {sorted(seen)} here), which is not the "
                    f"linear layer's output features")
        return None

    @staticmethod
    def fold(spike: nn.Module, bn: G.BNInfo, shapes):
        """(weight, bias, fold_rank) with `bn` folded in, as new tensors (snnsparse.nn.fuse.fold_bn): the
        layer itself is not changed, so a weight it shares (tied weights) keeps its values."""
        weight, bias = fold_bn(spike.weight.detach(), None if spike.bias is None else spike.bias.detach(), bn.bn)
        if isinstance(spike, SpikeConv2d):
            return weight, bias, None
        return weight, bias, next(len(o) for _, o in shapes if o is not None)

    def pack_blocker(self, weight: torch.Tensor) -> Optional[str]:
        if not self.packed:
            return "packed=False was asked for"
        reason = _cpp.unavailable_reason()
        if reason:
            return f"the C++ extension is not available ({reason})"
        if weight.device.type != "cpu":
            return (f"packed weights are for the CPU kernels (weights on {weight.device}); the per-layer GPU kernels "
                    f"are not used here yet")
        if weight.dtype not in _PACKABLE_DTYPES:
            return f"the packed kernels take float32 / float64 weights, not {weight.dtype}"
        return None

    def _timing_input(self, module, channels: int, conv: bool, planes: bool = False) -> Optional[torch.Tensor]:
        """The layer's input on example_inputs, flattened as its kernel takes it ([N, C, H, W] / [N, K]).
        None when it was not recorded or is not binary (for `planes`: not spike counts); then the kernels'
        own rule picks the format."""
        recorded = self.calls[id(module)].first_input
        if not recorded:
            return None
        x = recorded[0]
        pool = self.pool_folds.get(id(module))
        if pool is not None:  # the linear now reads the pool's input: one copy of each element
            x = x[..., pool.inverse]
        try:
            x = x.reshape(-1, channels, *x.shape[-2:]) if conv else x.reshape(-1, channels)
        except RuntimeError:
            return None
        return self._binary_example(x, planes)

    @staticmethod
    def _binary_example(x: torch.Tensor, planes: bool) -> Optional[torch.Tensor]:
        """x contiguous, when it is binary (for `planes`: spike counts) of a packable dtype."""
        if x.dtype not in _PACKABLE_DTYPES:
            return None
        if planes:
            try:
                bit_planes(x, "")
            except NonBinarySpikesError:
                return None
            return x.contiguous()
        return x.contiguous() if is_binary(x) else None

    def inference_layer(self, module, spike, name, x: G.Kind, weight, bias, mask, fold_rank):
        if isinstance(spike, SpikeConv1d):
            return self.conv1d_layer(module, spike, name, x, weight, bias, mask, fold_rank)
        is_conv = isinstance(spike, SpikeConv2d)
        shapes = self.calls[id(module)].shapes
        planes = x.level == G.Level.COUNTS and is_conv  # SEW ADD counts: the event kernel once per bit plane
        if x.level == G.Level.SPIKES or planes:
            blocker = self.pack_blocker(weight)
            if blocker is None:
                try:
                    if is_conv:
                        # Widths from example_inputs: output-channel rows (format 4) only serve rows <= 64 pixels.
                        in_w = max(ins[0][-1] for ins, _ in shapes)
                        out_w = max(o[-1] for _, o in shapes if o is not None)
                        geometry = (spike.stride, spike._explicit_padding(), spike.dilation)
                        packed, timing = _fastest_packing(
                            lambda fmt: _conv2d.pack(weight, mask, spike.groups, fmt, stride=spike.stride,
                                                     in_width=in_w, out_width=out_w),
                            _conv_run(geometry, planes, name),
                            (1, 2, 3, 4) if spike.groups == 1 else (1, 2, 4),
                            self._timing_input(module, weight.shape[1] * spike.groups, conv=True, planes=planes))
                    else:
                        packed, timing = _fastest_packing(
                            lambda fmt: _linear.pack(weight, mask, fmt), lambda p, xx: _linear.forward_packed(xx, p),
                            (1, 2), self._timing_input(module, weight.shape[1], conv=False))
                except (RuntimeError, ValueError, TypeError) as e:
                    blocker = f"packing failed ({G.error_text(e)})"
            if blocker is None:
                why = f"input is spikes: {x.source}; {timing}"
                if planes:
                    why = f"multi-level input (SEW ADD counts, {x.source}): {_counts_how(packed)}; {timing}"
                    new = PackedPlanesConv2d(packed, bias, spike.stride, spike._explicit_padding(), spike.dilation,
                                             name=name, why=why)
                elif is_conv:
                    new = PackedConv2d(packed, bias, spike.stride, spike._explicit_padding(), spike.dilation,
                                       name=name, why=why)
                else:
                    new = PackedLinear(packed, bias, fold_rank=fold_rank, name=name, why=why)
                self.row(name, module, "packed-event", packed.format.name, packed.density, why)
                return new
            why = f"input is spikes ({x.source}), but {blocker}: dense torch"
        elif x.level == G.Level.COUNTS:
            why = f"multi-level input (SEW ADD): bit planes not built yet ({x.source})"
        else:
            why = f"input is not spikes: {x.source}"
        dense = masked_weight(weight, mask)
        if is_conv:
            new = DenseConv2d(dense, bias, spike.stride, spike.padding, spike.dilation, spike.groups, name=name,
                              why=why)
        else:
            new = DenseLinear(dense, bias, fold_rank=fold_rank, name=name, why=why)
        self.row(name, module, "dense-analog", "dense", spike.density(), why)
        return new

    # -- Conv1d (spiking transformers' 1x1 projections) ---------------------------------------------
    def conv1d_fold_blocker(self, module: nn.Module, bn: G.BNInfo) -> Optional[str]:
        """BatchNorm1d normalises dim 1 of a rank-3 input, which is the Conv1d's output channels only when
        the conv output it sees is [N, C, L] (a [C, L] unbatched output would be read as [N, features])."""
        if bn.dims != 1:
            return f"a BatchNorm{bn.dims}d after a conv1d"
        ranks = {len(o) - (1 if bn.flattens else 0) for _, o in self.calls[id(module)].shapes if o is not None}
        if ranks != {3}:
            return (f"BatchNorm1d normalises dim 1 of what it sees (rank {sorted(ranks)} here), which is the conv1d's "
                    f"output channels only for [N, C, L]")
        return None

    def conv1d_layer(self, module, spike: SpikeConv1d, name, x: G.Kind, weight, bias, mask, fold_rank):
        """A Conv1d on spikes (or spike counts: bit planes) -> PackedConv1d / PackedPlanesConv1d, the conv2d
        kernels on the [N, C, 1, L] view; analog input -> DenseConv1d (F.conv1d, folded weight)."""
        planes = x.level == G.Level.COUNTS
        padding = spike._explicit_padding()
        if x.level in (G.Level.SPIKES, G.Level.COUNTS):
            blocker = self.pack_blocker(weight)
            if blocker is None:
                shapes = self.calls[id(module)].shapes
                in_w = max(ins[0][-1] for ins, _ in shapes)
                out_w = max(o[-1] for _, o in shapes if o is not None)
                geometry = ((1, spike.stride[0]), (0, padding), (1, spike.dilation[0]))
                w4, m4 = weight.unsqueeze(-2), mask.unsqueeze(-2)
                try:
                    packed, timing = _fastest_packing(
                        lambda fmt: _conv2d.pack(w4, m4, spike.groups, fmt, stride=geometry[0], in_width=in_w,
                                                 out_width=out_w),
                        _conv_run(geometry, planes, name),
                        (1, 2, 3, 4) if spike.groups == 1 else (1, 2, 4),
                        self._conv1d_timing_input(module, weight.shape[1] * spike.groups, planes))
                except (RuntimeError, ValueError, TypeError) as e:
                    blocker = f"packing failed ({G.error_text(e)})"
            if blocker is None:
                what = (f"multi-level input (spike counts, {x.source}): {_counts_how(packed)}" if planes
                        else f"input is spikes: {x.source}")
                why = f"{what}; conv1d on the conv2d kernels ([N, C, 1, L] view); {timing}"
                cls = PackedPlanesConv1d if planes else PackedConv1d
                new = cls(packed, bias, spike.stride[0], padding, spike.dilation[0], fold_rank=fold_rank, name=name,
                          why=why)
                self.row(name, module, "packed-event", packed.format.name, packed.density, why)
                return new
            why = f"input is {'spike counts' if planes else 'spikes'} ({x.source}), but {blocker}: dense torch"
        else:
            why = f"input is not spikes: {x.source}"
        new = DenseConv1d(masked_weight(weight, mask), bias, spike.stride, padding, spike.dilation, spike.groups,
                          fold_rank=fold_rank, name=name, why=why)
        self.row(name, module, "dense-analog", "dense", spike.density(), why)
        return new

    def _conv1d_timing_input(self, module, channels: int, planes: bool) -> Optional[torch.Tensor]:
        """The conv1d's recorded input as the conv2d kernel reads it ([N, Cin, 1, L]); None when not binary
        (for `planes`: not spike counts)."""
        recorded = self.calls[id(module)].first_input
        if not recorded or recorded[0].dim() < 2 or recorded[0].shape[-2] != channels:
            return None
        return self._binary_example(recorded[0].reshape(-1, channels, 1, recorded[0].shape[-1]), planes)

    # -- neurons and the rest ----------------------------------------------------------------------
    def neuron(self, module: nn.Module, name: str, one_call: bool = False) -> Optional[nn.Module]:
        """The fused snnsparse neuron replacing a SpikingJelly LIFNode / IFNode / ParametricLIFNode (None: the
        module stays). one_call: the module is called exactly once per forward (one call site in a traced
        graph), so a multi-step neuron may be stateless per call; otherwise it keeps v between calls as
        SpikingJelly does (a node called twice in one forward carries v from the first call into the second)."""
        kind = G.neuron_class(module)
        if kind == "lif":
            self.row(name, module, "neuron-fused",
                     reason=f"already ss.nn.{type(module).__name__} (one fused kernel over T)")
            return None
        if sj_neuron_class(module) is None:
            why = (f"no fused kernel for SpikingJelly's {kind}; its output is "
                   f"{'spikes' if G.emits_spikes(module) else 'taken as analog (not known to be binary)'}")
            self.row(name, module, "left", reason=why)
            return None
        blocker = None
        try:  # convert's rules (hooks, store_v_seq, precision, non-spiking surrogate, surrogate support)
            decision = _decide(module, name, None, "auto")
            new = decision.new
            if new is None:
                blocker = decision.record.reason
        except (ValueError, TypeError) as e:
            blocker = str(e)
        if blocker is not None:
            self.row(name, module, "left", reason=blocker)
            return None
        if new.step_mode == "m" and one_call:
            new.stateful = False
            how = "multi-step: stateless per call, as SpikingJelly with functional.reset_net between calls"
        elif new.step_mode == "m":
            how = ("multi-step, called more than once per forward or outside a traced graph: keeps v between calls "
                   "until reset(), as SpikingJelly")
        else:
            how = "single-step: keeps v between calls until reset(), as SpikingJelly"
        self.row(name, module, "neuron-fused", reason=f"SpikingJelly {type(module).__name__} -> "
                                                      f"ss.nn.{type(new).__name__}, one fused kernel over T ({how})")
        return new

    def other(self, module: nn.Module, name: str) -> None:
        if G.bn_of(module) is not None:
            self.bn_row(name, module)
        elif G.keeps_values(module):
            self.row(name, module, "left", reason="runs as it is (keeps its input's values: spikes stay spikes)")
        else:
            self.row(name, module, "left", reason="runs as it is: no inference version (its output is taken as analog)")


# --------------------------------------------------------------------------------------------------
def optimize_for_inference(model: nn.Module, example_inputs, *, packed: bool = True) -> OptimizedModel:
    """An inference-only copy of `model` that gives the same outputs and does less work.

    model: an nn.Module in eval mode (SpikingJelly models in either step mode, snnsparse models,
    plain torch). It is not changed. example_inputs: a Tensor or a tuple of the model's positional
    arguments, run once (on a copy) to check them and to learn the layers' shapes; the optimized
    model's shape-dependent choices (conv packing formats, BatchNorm1d folding) hold for inputs of
    that layout, and it refuses others with a clear error rather than compute something else.

    Returns an OptimizedModel: call it like the model (no autograd); `.report()` says per layer what
    was done and why (str() prints a table). Identical results to `model`, except spike flips where a
    membrane potential is within fp32 rounding of the threshold (BatchNorm folding changes the order
    of the arithmetic). Multi-step LIF neurons called once per forward are stateless per call
    (SpikingJelly's behaviour with functional.reset_net between calls); single-step ones, and any
    called more than once per forward, keep their state until reset() (functional.reset_net), as
    SpikingJelly's do. The step mode of every layer is fixed at this call.

    packed=False: everything else the same (BatchNorm folded, fused neurons, pools), but every conv /
    linear runs dense torch on its folded, masked weight: what the event kernels are measured against
    (bench/e2e_zoo.py), and a form for devices the packed kernels do not serve.
    """
    _check_model(model)
    packed = check_bool(packed, "packed", where=WHERE)
    inputs = _as_inputs(example_inputs)
    work, shared = _copy(model)  # the caller's model (and its neuron states) stay as they are
    calls = _example_run(work, inputs)
    _check_unwritten(shared)
    optimizer = _Optimizer(calls, packed)
    body = optimizer.optimize(work, "")
    _unshare(body, shared)
    for p in body.parameters():  # what is left of the original modules: no autograd either
        p.requires_grad_(False)
    result = OptimizedModel(body, optimizer.report)
    _reset_states(result)
    _self_check(result, optimizer.report, inputs, calls.output)
    return result


def _self_check(result: "OptimizedModel", report: OptimizeReport, inputs: tuple, expected) -> None:
    """Run the optimized model once on example_inputs and compare with the original's output there.
    A difference beyond fp32 rounding is not silent: a RuntimeWarning says how large it is (a spike that
    flips where a membrane sits within rounding of its threshold can move an output by more, so it is
    reported, not refused), and the report keeps the number (`.report().self_check_max_abs_diff`)."""
    if not isinstance(expected, torch.Tensor):
        return
    with torch.no_grad():
        got = result(*inputs)
    _reset_states(result)
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        raise RuntimeError(f"{WHERE}: internal error: the optimized model's output on example_inputs has shape "
                           f"{getattr(got, 'shape', type(got).__name__)}, the original's {tuple(expected.shape)}")
    diff = float((got.double() - expected.double()).abs().max()) if got.numel() else 0.0
    report.self_check_max_abs_diff = diff
    scale = float(expected.double().abs().max()) if expected.numel() else 0.0
    if not diff <= 1e-4 * max(1.0, scale):  # NaN fails too
        msg = (f"{WHERE}: on example_inputs the optimized model differs from the original by up to {diff:.3g} "
               f"(outputs up to {scale:.3g}); beyond fp32 rounding: spikes flipped at a threshold, or a bug. "
               f"Compare them on your data before deploying.")
        report.notes.append(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
