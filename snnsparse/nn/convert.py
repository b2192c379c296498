"""convert(): swap nn.Linear / nn.Conv1d / nn.Conv2d (and SpikingJelly's layer.Linear / layer.Conv1d /
layer.Conv2d, in step mode "m" or "s") for SpikeLinear / SpikeConv1d / SpikeConv2d in place, keeping
weights, biases and masks; snnTorch's Leaky / Synaptic become ss.nn.Leaky / ss.nn.Synaptic (snnTorch's
own update, bit-exact; inhibition and state_quant are left, with the reason); Norse's LIF neurons are
left, with the reason
(snnsparse/nn/norse.py); SpikingJelly's neuron.LIFNode becomes ss.nn.LIF with identical parameters,
IFNode ss.nn.IF and ParametricLIFNode ss.nn.ParametricLIF (its w copied); a neuron that cannot be mapped
exactly is left (lif_blocker says why). Containers (SpikingJelly's SeqToANNContainer, nn.Sequential, ...)
are kept; their children are converted. The Spike* layers take
[T, B, ...] and flat input alike, so step modes need no wrapper.

Each converted layer gets input_kind "auto" (it decides at its first forward whether its input is
spikes or pixels, see snnsparse.nn.layers) unless the caller says otherwise: `first_layer="analog"`
makes the first Linear / Conv2d in registration order the dense encoding layer, and
`input_kinds={module name: kind}` sets any converted or kept Spike* layer. The kind of every
Spike* layer is recorded in the report.

Only classes whose forward is known to be plain F.linear / F.conv2d are swapped, matched by exact
class: a subclass may change the forward in any way (SpikingJelly's WSConv2d / WSLinear standardise
the weight on every call), and swapping it would silently change the model's outputs. Such layers,
and layers with hooks or geometry a Spike* layer would not keep, are left as they are, recorded in
`model.snnsparse_convert_report` and named in a ConvertWarning.
"""
import copy
import warnings
from typing import Dict, List, Mapping, NamedTuple, Optional

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .layers import SpikeConv1d, SpikeConv2d, SpikeLinear, _SpikeMixin, check_backend_name, check_input_kind
from .leaky import Leaky, is_snntorch, snntorch_blocker
from .lif import IF, LIF, ParametricLIF
from .synaptic import Synaptic

REPORT_ATTR = "snnsparse_convert_report"

# SpikingJelly's layer.Linear / layer.Conv2d (SpikingJelly 2.0 keeps them in layer/stateless_wrapper.py,
# 0.0.0.0.14 in layer.py). Their forward is nn.Linear's (Linear does not override it) or nn.Conv2d's
# applied per frame in step mode "m" (Conv2d: seq_to_ann_forward over [T*N, ...]), which is what the
# Spike* layers compute on [T, N, ...]. tests/test_convert_spikingjelly.py checks both step modes.
_SJ_LAYER_MODULES = ("spikingjelly.activation_based.layer", "spikingjelly.activation_based.layer.stateless_wrapper")
_SJ_PLAIN = {"Linear": (nn.Linear, SpikeLinear), "Conv1d": (nn.Conv1d, SpikeConv1d), "Conv2d": (nn.Conv2d, SpikeConv2d)}
_TORCH_PLAIN = {nn.Linear: SpikeLinear, nn.Conv1d: SpikeConv1d, nn.Conv2d: SpikeConv2d}
# The layers convert knows (exact classes above; subclasses are left and reported).
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


class ConvertWarning(UserWarning):
    """convert() left layers unchanged (the message names them and says why)."""


class ConvertRecord(NamedTuple):
    """What convert() did with one layer; a list of them is stored as model.snnsparse_convert_report."""
    name: str       # module path in the model ("" for the model itself)
    original: str   # class name of the module convert found
    action: str     # "converted", "kept" (already a Spike* layer) or "left" (unchanged, see reason)
    result: str     # class name of the module in the model now
    reason: str = ""  # "left": why; Spike* layers: where a non-default input_kind came from
    input_kind: str = ""  # Spike* layers: their input_kind now ("spikes", "analog", "auto"); else ""


class _Decision(NamedTuple):
    new: Optional[nn.Module]   # the replacement (None: the module stays)
    record: Optional[ConvertRecord]
    descend: bool              # convert the module's children too (containers and unknown modules)


# SpikingJelly neuron class name -> the fused snnsparse neuron that computes it exactly.
SJ_NEURONS = {"LIFNode": LIF, "IFNode": IF, "ParametricLIFNode": ParametricLIF}


def sj_neuron_class(module: nn.Module):
    """The snnsparse neuron class for exactly SpikingJelly's LIFNode / IFNode / ParametricLIFNode (not a
    subclass: it may change the dynamics), else None."""
    cls = type(module)
    if not cls.__module__.startswith("spikingjelly."):
        return None
    return SJ_NEURONS.get(cls.__name__)


def _is_spikingjelly_lif(module: nn.Module) -> bool:
    return sj_neuron_class(module) is not None


def _plain_spike_class(module: nn.Module):
    """The Spike* class for a module whose forward is known to be plain linear / conv2d, else None."""
    cls = type(module)
    if cls in _TORCH_PLAIN:
        return _TORCH_PLAIN[cls]
    if cls.__module__ in _SJ_LAYER_MODULES and cls.__qualname__ in _SJ_PLAIN:
        base, spike = _SJ_PLAIN[cls.__qualname__]
        if issubclass(cls, base):
            return spike
    return None


def _hook_name(hook) -> str:
    tensor = getattr(hook, "_tensor_name", None)  # torch.nn.utils.prune methods say what they prune
    name = getattr(hook, "__qualname__", type(hook).__name__)
    return f"{name} (torch.nn.utils.prune on {tensor!r})" if tensor else name


def _foreign_hooks(module: nn.Module) -> List[str]:
    """Hooks on `module` that a fresh Spike* / LIF module would not carry. torch.nn.utils.prune's
    hook on "weight" is not one: its mask becomes the Spike* layer's weight_mask."""
    from ..pruning.masks import _prune_hooks

    weight_prune = _prune_hooks(module).get("weight")
    found = [f"forward pre-hook {_hook_name(h)}" for h in module._forward_pre_hooks.values() if h is not weight_prune]
    for kind, hooks in (("forward hook", module._forward_hooks), ("backward hook", module._backward_hooks),
                        ("backward pre-hook", module._backward_pre_hooks)):
        found += [f"{kind} {_hook_name(h)}" for h in hooks.values()]
    return found


def _unknown_reason(module: nn.Module) -> str:
    cls = type(module)
    base = next(f"nn.{t.__name__}" for t in _LAYER_TYPES if isinstance(module, t))
    if parametrize.is_parametrized(module):
        return (f"its weight is parametrized (torch.nn.utils.parametrize: {sorted(module.parametrizations)}), "
                f"recomputed on every forward")
    return (f"{cls.__module__}.{cls.__qualname__} subclasses {base}, but convert swaps only layers whose forward is "
            f"known to be plain linear / conv1d / conv2d (exactly nn.Linear, nn.Conv1d, nn.Conv2d, SpikingJelly's "
            f"layer.Linear / layer.Conv1d / layer.Conv2d); its forward may compute something else")


def _left(name: str, module: nn.Module, reason: str) -> _Decision:
    cls = type(module).__name__
    return _Decision(None, ConvertRecord(name, cls, "left", cls, reason), False)


def lif_blocker(module: nn.Module) -> Optional[str]:
    """Why a SpikingJelly LIFNode / IFNode / ParametricLIFNode cannot become its fused snnsparse neuron
    exactly (None when it can): the fused neuron emits binary spikes, keeps no v_seq and no precision
    profile, and starts from v_reset (0 for a soft reset) after reset()."""
    if getattr(module, "store_v_seq", False):
        return "store_v_seq=True: the fused neuron does not record v_seq"
    if getattr(module, "_neuron_precision", None) is not None:
        return "it has a neuron precision setting (functional.set_neuron_precision) the fused neuron does not follow"
    if not getattr(getattr(module, "surrogate_function", None), "spiking", True):
        return "its surrogate function is not in spiking mode: its output is the smooth function, not spikes"
    start = 0.0 if module.v_reset is None else module.v_reset
    reset_value = getattr(module, "_memories_rv", {}).get("v", start)
    if not (isinstance(reset_value, float) and reset_value == start):
        return (f"its membrane resets to {reset_value!r} (set_reset_value), not to v_reset "
                f"({module.v_reset!r}; 0 for a soft reset) as the fused neuron does")
    v = getattr(module, "v", start)
    if not isinstance(v, torch.Tensor) and v != start:
        return f"its membrane potential is {v!r}, not its reset value {start!r}"
    if type(module).__name__ == "ParametricLIFNode":
        w = getattr(module, "w", None)
        if not (isinstance(w, torch.Tensor) and w.is_floating_point() and w.dim() == 0):
            return (f"its w is not a 0-dim floating tensor ({type(w).__name__}"
                    f"{'' if not isinstance(w, torch.Tensor) else f' {w.dtype} {tuple(w.shape)}'})")
    return None


neuron_blocker = lif_blocker


def _neuron_converter(module: nn.Module):
    """(reason it cannot be converted or None, builder of the snnsparse neuron) for a neuron of another
    library that convert knows (snnTorch Leaky / Synaptic, Norse LIFCell / LIF), else None."""
    for ours in (Leaky, Synaptic):
        if is_snntorch(module, ours.__name__):
            return snntorch_blocker(module), lambda: ours.from_snntorch(module)
    from .norse import is_norse_lif, norse_converter
    if is_norse_lif(module):
        return norse_converter(module)
    return None


def _decide(module: nn.Module, name: str, mask: Optional[torch.Tensor], backend: str, *,
            copy: bool = True) -> _Decision:
    """What to do with one module (builds the replacement, so that every error is raised before
    convert changes anything). copy=False: a new conv / linear shares the module's weight and bias
    (Spike*.from_dense)."""
    cls = type(module).__name__
    if isinstance(module, _SpikeMixin):  # already an snnsparse layer: nothing to swap, the mask is set later
        return _Decision(None, ConvertRecord(name, cls, "kept", cls), False)
    spike_cls = _plain_spike_class(module)
    is_lif = _is_spikingjelly_lif(module)
    neuron = _neuron_converter(module)
    if spike_cls is None and not is_lif and neuron is None:
        if isinstance(module, _LAYER_TYPES):
            return _left(name, module, _unknown_reason(module))
        return _Decision(None, None, True)
    hooks = _foreign_hooks(module)
    if hooks:
        return _left(name, module, f"it has hooks the converted layer would drop: {', '.join(hooks)}")
    if spike_cls in (SpikeConv1d, SpikeConv2d):
        reason = spike_cls.unsupported_reason(module)
        if reason:
            return _left(name, module, reason)
    if neuron is not None:
        blocker, build = neuron
        if blocker:
            return _left(name, module, blocker)
        new = build()
    elif is_lif:
        blocker = lif_blocker(module)
        if blocker:
            return _left(name, module, blocker)
        new = sj_neuron_class(module).from_spikingjelly(module, backend="auto" if backend == "dense" else backend)
    else:
        new = spike_cls.from_dense(module, mask, backend=backend, copy=copy)
    return _Decision(new, ConvertRecord(name, cls, "converted", type(new).__name__), False)


_FIRST_LAYER = ("analog", "auto")


def _check_first_layer(first_layer) -> str:
    if not isinstance(first_layer, str) or first_layer not in _FIRST_LAYER:
        raise (ValueError if isinstance(first_layer, str) else TypeError)(
            f"convert: first_layer must be one of {_FIRST_LAYER} ('analog': the first Linear / Conv2d, in "
            f"registration order, is the encoding layer and runs dense; 'auto': it decides at its first "
            f"forward like every other layer), got {first_layer!r}")
    return first_layer


def _input_kinds_by_module(model: nn.Module, input_kinds) -> Dict[int, tuple]:
    """{id(module): (name, module, kind)} for convert's input_kinds argument (names and kinds checked)."""
    if input_kinds is None:
        return {}
    if not isinstance(input_kinds, Mapping):
        raise TypeError(f"convert: input_kinds must be a dict {{module name: 'spikes' | 'analog' | 'auto'}}, "
                        f"got {type(input_kinds).__name__}")
    found: Dict[int, tuple] = {}
    for name, kind in input_kinds.items():
        if not isinstance(name, str):
            raise TypeError(f"convert: input_kinds must be keyed by module name (str, e.g. 'features.0'), "
                            f"got key {name!r}")
        check_input_kind(kind, "convert", f"input_kinds[{name!r}]")
        try:
            module = model.get_submodule(name)
        except AttributeError:
            hint = (f"; keys are module names, not parameter names: {name.rsplit('.', 1)[0]!r}"
                    if name.endswith((".weight", ".bias")) or name in ("weight", "bias") else "")
            raise ValueError(f"convert: input_kinds names {name!r}, which is not a module of the model{hint}") from None
        if id(module) in found and found[id(module)][2] != kind:
            raise ValueError(f"convert: input_kinds {found[id(module)][0]!r} and {name!r} name the same layer "
                             f"with different kinds ({found[id(module)][2]!r}, {kind!r})")
        found[id(module)] = (name, module, kind)
    return found


def convert(model: nn.Module, masks: Optional[Mapping[str, torch.Tensor]] = None, *, backend: str = "auto",
            inplace: bool = True, input_kinds: Optional[Mapping[str, str]] = None,
            first_layer: str = "auto") -> nn.Module:
    """Replace every nn.Linear / nn.Conv1d / nn.Conv2d (and SpikingJelly layer.Linear / Conv1d / Conv2d /
    LIFNode / IFNode / ParametricLIFNode) in `model` by its snnsparse twin.

    masks: optional {parameter name ("features.0.weight") -> bool tensor of exactly the weight's
    shape}; a module pruned with torch.nn.utils.prune keeps its mask (checked to be exactly 0/1).
    backend: for the new layers; one of snnsparse.backends.NAMES, "auto" or "dense" ("dense" applies
    to the Spike* layers; neurons get "auto").
    first_layer: "auto" (default: the first layer decides at its first forward, as every other
    layer) or "analog": the first Linear / Conv2d in module registration order gets input_kind
    "analog" (the encoding layer that sees pixels: dense torch, never an event kernel, MACs counted;
    no value check at its first forward). If convert leaves that layer unchanged it runs as plain
    torch anyway, and no other layer is set. torch.compile(fullgraph=True) before any eager forward
    needs every Spike* layer set (input_kinds), since an "auto" layer decides from its first input.
    input_kinds: optional {module name ("features.0") -> "spikes" | "analog" | "auto"} for converted
    or already-Spike* layers; all others converted get "auto" (see snnsparse.nn.layers). A name that
    first_layer="analog" also sets must say "analog".
    Returns the model (a deep copy if inplace=False; the new module if `model` itself is a layer).
    The returned model's `snnsparse_convert_report` lists a ConvertRecord per layer; layers left
    unchanged are also named in a ConvertWarning. Nothing is changed when an error is raised.
    """
    from ..pruning.masks import check_masks, module_of

    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        # DDP holds the original Parameters for its gradient all-reduce; new layers would silently
        # stop being synchronised.
        raise TypeError("convert: model is wrapped in DistributedDataParallel; convert model.module, then wrap it")
    if masks is None:
        masks = {}
    if not isinstance(masks, Mapping):
        raise TypeError(f"convert: masks must be a dict {{parameter name: bool tensor}}, got {type(masks).__name__}")
    check_backend_name(backend, "convert", dense=True)
    _check_first_layer(first_layer)
    if not inplace:
        model = copy.deepcopy(model)
    check_masks(model, masks)
    kinds_by_module = _input_kinds_by_module(model, input_kinds)
    # Masks by module identity, so that a layer reachable under two names is found by either.
    by_module: Dict[int, tuple] = {}
    for key, mask in masks.items():
        owner = module_of(model, key)
        if id(owner) in by_module:
            raise ValueError(f"convert: masks {by_module[id(owner)][0]!r} and {key!r} name the same weight")
        by_module[id(owner)] = (key, mask)

    decisions: Dict[int, _Decision] = {}
    records: List[tuple] = []  # (original module, ConvertRecord) in registration order
    layers: List[nn.Module] = []  # Linear / Conv2d layers (converted, kept or left) in registration order
    swaps = []  # (parent, attribute, new module); parent None for the model itself

    def visit(parent, attr, name, module):
        decision = decisions.get(id(module))
        if decision is None:  # a module shared by several parents is decided (and replaced) once
            key, mask = by_module.get(id(module), (None, None))
            try:
                decision = _decide(module, name, mask, backend)
            except (ValueError, TypeError) as e:
                where = f"convert: layer {name or '<model>'!r} ({type(module).__name__})"
                if type(e) not in (ValueError, TypeError):  # subclasses may need other constructor arguments
                    if hasattr(e, "add_note"):  # Python >= 3.11
                        e.add_note(where)
                    raise
                raise type(e)(f"{where}: {e}") from e
            decisions[id(module)] = decision
            if decision.record is not None:
                records.append((module, decision.record))
            if isinstance(module, _LAYER_TYPES):
                layers.append(module)
            if decision.descend:
                for child_attr, child in list(module._modules.items()):
                    if child is not None:
                        visit(module, child_attr, f"{name}.{child_attr}" if name else child_attr, child)
        if decision.new is not None:
            swaps.append((parent, attr, decision.new))

    visit(None, None, "", model)

    for key, mask in by_module.values():
        decision = decisions.get(id(module_of(model, key)))
        action = decision.record.action if decision is not None and decision.record is not None else None
        if action == "left":
            raise ValueError(f"convert: a mask was given for {key!r}, but convert leaves that layer unchanged "
                             f"({decision.record.reason}); apply its mask with ss.pruning.apply_masks "
                             f"(torch.nn.utils.prune) instead")
        if action not in ("converted", "kept"):
            raise ValueError(f"convert: mask {key!r} does not name the weight of a Linear / Conv2d layer")

    # input_kind of each Spike* layer: {id(original module): (kind, where it came from)}
    kinds: Dict[int, tuple] = {}
    if first_layer == "analog" and layers and decisions[id(layers[0])].record.action != "left":
        kinds[id(layers[0])] = ("analog", "input_kind 'analog' from first_layer='analog'")
    for name, module, kind in kinds_by_module.values():
        decision = decisions.get(id(module))
        record = decision.record if decision is not None else None
        if record is None or not isinstance(module, _LAYER_TYPES):
            raise ValueError(f"convert: input_kinds names {name!r} ({type(module).__name__}), which is not a "
                             f"Linear / Conv2d layer")
        if record.action == "left":
            raise ValueError(f"convert: input_kinds names {name!r}, but convert leaves that layer unchanged "
                             f"({record.reason}); it runs as plain torch")
        if id(module) in kinds and kinds[id(module)][0] != kind:
            raise ValueError(f"convert: input_kinds[{name!r}] = {kind!r}, but first_layer='analog' makes that "
                             f"layer (the first Linear / Conv2d) 'analog'; pass first_layer='auto' or make them agree")
        kinds[id(module)] = (kind, f"input_kind {kind!r} from input_kinds[{name!r}]")

    # Nothing has been changed up to here; from here on nothing can fail.
    for key, mask in by_module.values():
        owner = module_of(model, key)
        if isinstance(owner, _SpikeMixin):
            owner.set_mask(mask, name=key)
    report: List[ConvertRecord] = []
    for module, record in records:
        new = decisions[id(module)].new
        layer = module if new is None else new
        if isinstance(layer, _SpikeMixin):
            kind, why = kinds.get(id(module), (None, ""))
            if kind is not None and kind != layer.input_kind:  # assigning clears an "auto" decision: only on change
                layer.input_kind = kind
            record = record._replace(input_kind=layer.input_kind, reason=why)
        report.append(record)
    for parent, attr, new in swaps:
        if parent is None:
            model = new
        else:
            setattr(parent, attr, new)

    setattr(model, REPORT_ATTR, report)
    left = [r for r in report if r.action == "left"]
    if left:
        listed = "; ".join(f"{r.name or '<model>'!r} ({r.original}): {r.reason}" for r in left)
        warnings.warn(f"ss.nn.convert left {len(left)} layer(s) unchanged; they run as before, without snnsparse "
                      f"kernels: {listed}", ConvertWarning, stacklevel=2)
    return model
