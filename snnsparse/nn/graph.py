"""The model as a graph, for ss.nn.optimize_for_inference (snnsparse.nn.optimize).

- LeafTracer: torch.fx tracing whose leaves are the modules whose semantics snnsparse knows (conv,
  linear, BatchNorm, pooling, SpikingJelly's layer.* wrappers and neurons, whose step_mode control
  flow fx cannot trace, SeqToANNContainer, snnsparse's Spike* / LIF / SeqToANN). A submodule that fx
  cannot trace becomes a leaf too ("opaque"), so one untraceable block does not cost the graph of
  the whole model; trace() says which ones and why.
- Kinds: what the values of a node are, decided by type only (never by looking at values):
  SPIKES (every value 0 or 1: an event-driven kernel takes it), COUNTS (small non-negative
  integers: a SEW ADD of spikes) or ANALOG (anything else: the model input, BN outputs, averages).
  The output of a neuron known to emit binary spikes is SPIKES; max-pool, flatten / reshape /
  indexing, eval-mode dropout keep the kind; a product of spikes (SEW AND / IAND: x * (1 - y)) is
  SPIKES, a sum of spikes (SEW ADD) COUNTS; anything else is ANALOG. Conservative by design: an
  unknown op makes ANALOG, which only costs speed (its consumer runs dense), never correctness.
"""
from __future__ import annotations

import enum
import importlib
import operator
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

import torch
import torch.fx as fx
import torch.nn as nn


class Level(enum.IntEnum):
    SPIKES = 0
    COUNTS = 1
    ANALOG = 2


@dataclass(frozen=True)
class Kind:
    level: Level
    source: str  # where the values come from, in words, for the report ("output of neuron 'sn1'")


def analog(source: str) -> Kind:
    return Kind(Level.ANALOG, source)


def join(kinds: Iterable[Kind], source: str) -> Kind:
    """The kind of a value that may be any of `kinds` (e.g. one module called at several places)."""
    kinds = list(kinds)
    if not kinds:
        return analog(source)
    worst = max(k.level for k in kinds)
    if len({k.source for k in kinds}) == 1:
        return Kind(worst, kinds[0].source)
    return Kind(worst, source)


# --------------------------------------------------------------------------------------------------
# SpikingJelly, looked up only when the model uses it (importing it costs time and it is optional).
class _SJ(NamedTuple):
    base: object
    layer: object
    neuron: object


def spikingjelly() -> Optional[_SJ]:
    if "spikingjelly.activation_based" not in sys.modules:
        return None
    try:
        return _SJ(*(importlib.import_module(f"spikingjelly.activation_based.{m}")
                     for m in ("base", "layer", "neuron")))
    except ImportError:  # pragma: no cover - a partial install
        return None


def _sj_types(sj: Optional[_SJ], where: str, names: Iterable[str]) -> Tuple[type, ...]:
    if sj is None:
        return ()
    mod = getattr(sj, where)
    return tuple(t for t in (getattr(mod, n, None) for n in names) if isinstance(t, type))


def _snnsparse_types():
    # Imported here: snnsparse.models imports snnsparse.nn (a cycle at import time).
    from ..models import SeqToANN
    from .inference import InferenceLayer
    from .layers import _SpikeMixin
    from .lif import FusedNeuron  # LIF, IF, ParametricLIF
    return _SpikeMixin, FusedNeuron, SeqToANN, InferenceLayer


# --------------------------------------------------------------------------------------------------
# Module roles (exact classes: a subclass may change the forward in any way).
_MAXPOOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
             nn.AdaptiveMaxPool3d)
# Modules whose output holds only values of their input (so spikes stay spikes); dropout is the
# identity in eval mode, which optimize_for_inference requires.
_TORCH_KEEP_VALUES = _MAXPOOLS + (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                                  nn.Dropout3d)
SJ_SPIKING_NEURONS = ("LIFNode", "IFNode", "ParametricLIFNode")


def neuron_class(module: nn.Module) -> Optional[str]:
    """"lif" (an snnsparse fused neuron: LIF, IF, ParametricLIF), the class name of a SpikingJelly neuron
    (BaseNode subclass), or None."""
    _, FusedNeuron, _, _ = _snnsparse_types()
    if isinstance(module, FusedNeuron):
        return "lif"
    sj = spikingjelly()
    base_node = _sj_types(sj, "neuron", ("BaseNode",))
    if base_node and isinstance(module, base_node):
        return type(module).__name__
    return None


def emits_spikes(module: nn.Module) -> bool:
    """True when the module's output is known to be binary: snnsparse LIF, and SpikingJelly's LIFNode,
    IFNode, ParametricLIFNode (exact classes) whose surrogate function is in spiking mode (with
    spiking=False it outputs the smooth primitive function, not spikes)."""
    kind = neuron_class(module)
    if kind == "lif":
        return True
    if kind is None or type(module) not in _sj_types(spikingjelly(), "neuron", SJ_SPIKING_NEURONS):
        return False
    return bool(getattr(getattr(module, "surrogate_function", None), "spiking", False))


def keeps_values(module: nn.Module) -> bool:
    """True when the module's output holds only values of its input (max-pool, flatten, identity,
    eval-mode dropout; SpikingJelly's wrappers of them)."""
    from .inference import InferenceMaxPool2d, SinglePixelPool  # lazy: inference imports this module

    t = type(module)
    if t in (InferenceMaxPool2d, SinglePixelPool):  # the optimizer's own (a container optimized in place)
        return True
    sj = spikingjelly()
    if t in _TORCH_KEEP_VALUES or t in _sj_types(sj, "layer", ("MaxPool1d", "MaxPool2d", "MaxPool3d", "Flatten",
                                                                "Dropout", "Dropout2d")):
        return not getattr(module, "return_indices", False)  # a tuple (values, indices) otherwise
    return False


class BNInfo(NamedTuple):
    bn: nn.modules.batchnorm._BatchNorm   # the BatchNorm that normalises
    dims: int                             # 1 (BatchNorm1d) or 2 (BatchNorm2d)
    flattens: bool                        # the wrapper folds [T, B, ...] into [T*B, ...] first


def bn_of(module: nn.Module) -> Optional[BNInfo]:
    """The BatchNorm a module applies, when that is all it does: nn.BatchNorm1d / 2d, SpikingJelly's
    layer.BatchNorm1d / 2d, or a SeqToANNContainer / snnsparse SeqToANN holding one such plain BN."""
    t = type(module)
    if t is nn.BatchNorm2d:
        return BNInfo(module, 2, False)
    if t is nn.BatchNorm1d:
        return BNInfo(module, 1, False)
    sj = spikingjelly()
    sj_bn = dict(zip(("BatchNorm1d", "BatchNorm2d"), _sj_types(sj, "layer", ("BatchNorm1d", "BatchNorm2d"))))
    for dims, name in ((1, "BatchNorm1d"), (2, "BatchNorm2d")):
        if name in sj_bn and t is sj_bn[name]:
            return BNInfo(module, dims, getattr(module, "step_mode", "s") == "m")
    items = chain_items(module)
    if items is not None and len(items) == 1:
        inner = bn_of(items[0].module)
        if inner is not None and not inner.flattens:
            return inner._replace(flattens=True)
    return None


class ChainItem(NamedTuple):
    suffix: str          # qualified name inside the container ("0", "module.1")
    parent: nn.Module    # the module holding it (setattr(parent, key, new) replaces it)
    key: str
    module: nn.Module


def chain_items(module: nn.Module) -> Optional[List[ChainItem]]:
    """The modules a time-flattening container applies in order, for SpikingJelly's SeqToANNContainer
    and snnsparse's SeqToANN ([T, B, ...] -> [T*B, ...] -> children -> [T, B, ...]); nested plain
    nn.Sequential are expanded. None for any other module."""
    _, _, SeqToANN, _ = _snnsparse_types()
    seq_to_ann = _sj_types(spikingjelly(), "layer", ("SeqToANNContainer",))
    if type(module) in seq_to_ann:
        return _expand(module, "")
    if type(module) is SeqToANN:
        inner = module.module
        if type(inner) is nn.Sequential:
            return _expand(inner, "module.")
        return [ChainItem("module", module, "module", inner)]
    return None


def expand_sequential(seq: nn.Sequential) -> List[ChainItem]:
    """The items of an nn.Sequential in order (nested plain nn.Sequential expanded)."""
    return _expand(seq, "")


def _expand(seq: nn.Sequential, prefix: str) -> List[ChainItem]:
    out = []
    for key, child in seq._modules.items():
        if child is None:
            continue
        if type(child) is nn.Sequential:
            out += _expand(child, f"{prefix}{key}.")
        else:
            out.append(ChainItem(f"{prefix}{key}", seq, key, child))
    return out


def is_conv_or_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear))


def is_leaf(module: nn.Module) -> bool:
    """Modules the graph keeps as one node: torch.nn's own (as fx does), every conv / linear /
    BatchNorm (subclasses too: convert's rules decide what they are), SpikingJelly's step-mode
    modules (layer.* wrappers, neurons, containers: their step_mode branches cannot be traced),
    snnsparse's modules."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
        return True
    if isinstance(module, _snnsparse_types()):
        return True
    sj = spikingjelly()
    if sj is not None and isinstance(module, (sj.base.StepModule, sj.base.MemoryModule)):
        return True
    return False


def byte_passthrough(module: nn.Module) -> bool:
    """Modules that pass bool / uint8 spikes on unchanged in value and dtype (exact classes): flatten,
    identity, eval-mode dropout (SpikingJelly's wrappers of them) and the optimizer's max-pool."""
    from .inference import InferenceMaxPool2d  # lazy: inference imports this module

    t = type(module)
    if t in (InferenceMaxPool2d, nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d):
        return True
    return t in _sj_types(spikingjelly(), "layer", ("Flatten", "Dropout", "Dropout2d"))


def max_pool2d_steps(module: nn.Module) -> Optional[str]:
    """"s" for nn.MaxPool2d and SpikingJelly's single-step layer.MaxPool2d, "m" for its multi-step one
    (exact classes, no return_indices): the pools InferenceMaxPool2d replaces; else None."""
    if getattr(module, "return_indices", True):
        return None
    if type(module) is nn.MaxPool2d:
        return "s"
    if type(module) in _sj_types(spikingjelly(), "layer", ("MaxPool2d",)):
        mode = getattr(module, "step_mode", None)
        return mode if mode in ("s", "m") else None
    return None


_ADAPTIVE_AVG_DIMS = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}


def adaptive_avg_dims(module: nn.Module) -> int:
    """The number of pooled dims of an adaptive average pool (torch's, or SpikingJelly's layer wrapper of
    it, exact classes), else 0."""
    t = type(module)
    if t in _ADAPTIVE_AVG_DIMS:
        return _ADAPTIVE_AVG_DIMS[t]
    for name, dims in (("AdaptiveAvgPool1d", 1), ("AdaptiveAvgPool2d", 2), ("AdaptiveAvgPool3d", 3)):
        if t in _sj_types(spikingjelly(), "layer", (name,)):
            return dims
    return 0


def single_pixel_bins(in_sizes: Sequence[int], out_sizes: Sequence[int]) -> bool:
    """True when every bin of an adaptive pool from in_sizes to out_sizes covers exactly one input
    element (torch's bins: [floor(i*n/o), ceil((i+1)*n/o))): the output then holds only input values,
    e.g. VGG's 7x7 average pool of a 1x1 spike map, or a pool to the size it already has."""
    if len(in_sizes) != len(out_sizes):
        return False
    for n, o in zip(in_sizes, out_sizes):
        if n < 1 or o < 1:
            return False
        if any(-((-(i + 1) * n) // o) - (i * n) // o != 1 for i in range(o)):
            return False
    return True


def single_pixel_gather(x: torch.Tensor, out_sizes: Sequence[int]) -> torch.Tensor:
    """What an adaptive average pool to out_sizes computes when its bins cover one element each
    (single_pixel_bins; the caller checks): per pooled (trailing) dim, bin i is the one element
    floor(i*n/o), gathered with index_select, exactly (no averaging)."""
    dims = len(out_sizes)
    for d, o in enumerate(out_sizes):
        dim = x.dim() - dims + d
        n = x.shape[dim]
        if n != o:
            x = x.index_select(dim, torch.tensor([(i * n) // o for i in range(o)], device=x.device))
    return x


def is_flatten(node: fx.Node, mods) -> bool:
    """A node that flattens its first argument (torch.flatten, Tensor.flatten, nn.Flatten and SpikingJelly's
    layer.Flatten): a row-major reshape, so which dims it merges is read off the recorded shapes."""
    if node.op == "call_function":
        return node.target is torch.flatten
    if node.op == "call_method":
        return node.target == "flatten"
    if node.op == "call_module":
        t = type(mods[node])
        return t is nn.Flatten or t in _sj_types(spikingjelly(), "layer", ("Flatten",))
    return False


def module_kind(module: nn.Module, name: str, x: Kind, keeps: Set[int] = frozenset()) -> Kind:
    """The kind of a leaf module's output given the kind of its input. `keeps`: ids of modules known to
    keep their input's values at the sizes the model runs (adaptive pools of one-element bins)."""
    if emits_spikes(module):
        return Kind(Level.SPIKES, f"output of neuron {name!r}")
    if keeps_values(module) or id(module) in keeps:
        return x
    items = chain_items(module)
    if items is not None:
        for item in items:
            x = module_kind(item.module, f"{name}.{item.suffix}" if name else item.suffix, x, keeps)
        return x
    return analog(f"output of {name!r} ({type(module).__name__})")


# --------------------------------------------------------------------------------------------------
# Kinds of functions and methods.
_SAME_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose,
                   torch.movedim, torch.narrow, torch.chunk, torch.split, torch.unbind, torch.t, torch.clone,
                   torch.detach, operator.getitem}
_SAME_METHODS = {"flatten", "view", "reshape", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
                 "unflatten", "clone", "detach", "narrow", "chunk", "split", "unbind", "t", "expand", "expand_as",
                 "view_as", "reshape_as", "movedim", "repeat"}
_JOIN_FUNCTIONS = {torch.cat, torch.stack, torch.concat, torch.concatenate}
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}


def _op_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _is_one(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == 1


def _one_minus_of(node: fx.Node):
    """s when node computes 1 - s (fx records `1.0 - s` as sub(1.0, s); torch.rsub(s, 1), s.rsub(1)), else None."""
    args, target = node.args, node.target
    if len(args) != 2 or node.kwargs:
        return None
    if node.op == "call_function" and target in (operator.sub, torch.sub) and _is_one(args[0]):
        return args[1]
    if ((node.op == "call_function" and target is torch.rsub) or (node.op == "call_method" and target == "rsub")) \
            and _is_one(args[1]):
        return args[0]
    return None


def op_kind(node: fx.Node, kinds: Dict[fx.Node, Kind]) -> Kind:
    """The kind of a call_function / call_method node from the kinds of its arguments."""
    target, args = node.target, node.args
    here = f"{node.name} ({_op_name(node)})"

    def kind_of(a) -> Optional[Kind]:
        return kinds.get(a) if isinstance(a, fx.Node) else None

    s = _one_minus_of(node)
    if s is not None:
        ks = kind_of(s)
        if ks is not None and ks.level == Level.SPIKES:  # 1 - s of 0/1 values: SEW IAND's "not"
            return Kind(Level.SPIKES, f"1 - spikes ({here})")
        return analog(f"output of {here}")
    first = kind_of(args[0]) if args else None
    if node.op == "call_function" and target in _JOIN_FUNCTIONS:
        parts = args[0] if args and isinstance(args[0], (list, tuple)) else ()
        ks = [kind_of(a) for a in parts]
        if ks and all(k is not None for k in ks):
            return join(ks, f"concatenation {here}")
        return analog(f"output of {here}")
    if first is None:
        return analog(f"output of {here}")
    if (node.op == "call_function" and target in _SAME_FUNCTIONS) or \
            (node.op == "call_method" and target in _SAME_METHODS):
        return first
    second = kind_of(args[1]) if len(args) == 2 and not node.kwargs else None
    if second is not None and max(first.level, second.level) <= Level.COUNTS:
        if target in _ADD:
            return Kind(Level.COUNTS, f"SEW ADD of spikes ({here})")
        if target in _MUL:  # spikes * spikes: SEW AND / IAND, still 0 or 1
            level = max(first.level, second.level)
            return Kind(level, f"SEW AND/IAND of spikes ({here})" if level == Level.SPIKES
                        else f"product of spike counts ({here})")
    return analog(f"output of {here}")


_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
                      operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
                      operator.imatmul}


def mutates_input(node: fx.Node, module: Optional[nn.Module] = None) -> bool:
    """True when the node writes into its first argument (an in-place method such as add_, operator.iadd,
    a module with inplace=True): every user of that argument may then see the new values."""
    if node.op == "call_method":
        return isinstance(node.target, str) and node.target.endswith("_") and not node.target.startswith("_")
    if node.op == "call_function":
        return node.target in _INPLACE_OPERATORS
    if node.op == "call_module" and module is not None:
        return getattr(module, "inplace", False) is True
    return False


# --------------------------------------------------------------------------------------------------
# Tracing.
class _Untraceable(Exception):
    def __init__(self, qualname: str, error: BaseException):
        super().__init__(qualname)
        self.qualname, self.error = qualname, error


class LeafTracer(fx.Tracer):
    """twin: optional function module -> a traceable forward for it, or None (snnsparse.nn.transformers:
    SpikingJelly's transformer modules, whose own forwards fx cannot trace); used for modules that are
    not leaves."""

    def __init__(self, opaque: Iterable[str] = (), twin: Optional[Callable] = None):
        super().__init__()
        self.opaque = set(opaque)
        self.twin = twin

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.opaque or is_leaf(m) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        if self.twin is not None and not kwargs:
            try:
                leaf = self.is_leaf_module(m, self.path_of_module(m))
            except NameError:
                leaf = True
            twin = None if leaf else self.twin(m)
            forward = forward if twin is None else twin
        try:
            return super().call_module(m, forward, args, kwargs)
        except _Untraceable:
            raise  # an inner module failed: it is the one to make a leaf
        except Exception as e:
            try:
                qualname = self.path_of_module(m)
            except NameError:  # not a registered submodule: nothing to make a leaf of
                raise e from None
            raise _Untraceable(qualname, e) from e


def error_text(e: BaseException) -> str:
    text = str(e).strip().split("\n")[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Traced(NamedTuple):
    graph: Optional[fx.Graph]   # None: the module's own forward cannot be traced (error says why)
    opaque: Dict[str, str]      # submodule name -> why fx could not trace it (it is a leaf in graph)
    error: str = ""


class _Shell(nn.Module):
    """`root` with a twin forward (one positional input), for tracing only: it shares root's submodules,
    parameters and buffers (the same dicts), so the graph's targets are root's own names."""

    def __init__(self, root: nn.Module, forward: Callable):
        super().__init__()
        self._modules, self._parameters, self._buffers = root._modules, root._parameters, root._buffers
        self._twin_forward = forward

    def forward(self, x):
        return self._twin_forward(x)


def trace(root: nn.Module, twin: Optional[Callable] = None) -> Traced:
    """Trace `root`; a submodule whose forward fx cannot trace becomes a leaf and tracing restarts.
    twin: see LeafTracer (also used for `root` itself)."""
    opaque: Dict[str, str] = {}
    root_twin = twin(root) if twin is not None else None
    target = root if root_twin is None else _Shell(root, root_twin)
    for _ in range(sum(1 for _ in root.modules()) + 1):
        try:
            return Traced(LeafTracer(opaque, twin).trace(target), opaque)
        except _Untraceable as u:
            if u.qualname in opaque:  # pragma: no cover - a leaf cannot fail
                return Traced(None, opaque, error_text(u.error))
            opaque[u.qualname] = error_text(u.error)
        except Exception as e:  # the root's own forward
            return Traced(None, opaque, error_text(e))
    return Traced(None, opaque, "too many untraceable submodules")  # pragma: no cover
