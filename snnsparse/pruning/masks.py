"""Mask helpers shared by every pruner.

A mask is a bool tensor of a weight's shape (True = keep), addressed by the parameter's name in
the model ("features.0.weight"), exactly as `model.named_parameters()` spells it. Pruners compute
scores and masks; `apply_masks` is the one place that writes them into a model:
- Spike* modules (ss.nn.SpikeLinear / SpikeConv2d): into their `weight_mask` buffer, which the
  event-driven kernels skip;
- any other module: through torch.nn.utils.prune.custom_from_mask (or by updating the mask of a
  module that torch's prune utilities already manage).
Names may carry the "module." prefix of a DistributedDataParallel / DataParallel wrapper.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

Masks = Dict[str, torch.Tensor]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper (else the model)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def strip_prefix(name: str) -> str:
    """A parameter name without the "module." prefix(es) of DDP / DataParallel wrappers."""
    while name.startswith("module."):
        name = name[len("module."):]
    return name


def _weight_of(module: nn.Module) -> torch.Tensor:
    """The stored weight tensor (weight_orig under torch prune, the original under parametrize)."""
    if hasattr(module, "weight_orig"):
        return module.weight_orig
    params = getattr(module, "parametrizations", None)
    if params is not None and "weight" in params:
        return params["weight"].original
    return module.weight


def _has_weight(module: nn.Module) -> bool:
    """True if the module stores a weight (without evaluating a parametrization)."""
    return (isinstance(module._parameters.get("weight"), torch.Tensor) or hasattr(module, "weight_orig")
            or parametrize.is_parametrized(module, "weight"))


def prunable_weights(model: nn.Module, exclude: Iterable[str] = ()) -> "OrderedDict[str, torch.Tensor]":
    """{name: stored weight} of every conv and linear layer (BN, biases and embeddings excluded),
    in module registration order. `exclude` lists parameter names to leave out."""
    model = unwrap(model)
    exclude = {strip_prefix(e) for e in exclude}
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for mod_name, m in model.named_modules():
        if isinstance(m, (nn.Linear, _ConvNd)):
            out[f"{mod_name}.weight" if mod_name else "weight"] = _weight_of(m)
    unknown = exclude - set(out)
    if unknown:
        raise ValueError(f"unknown parameter names in exclude: {sorted(unknown)}; prunable weights are "
                         f"{list(out)}")
    for name in exclude:
        del out[name]
    return out


def module_of(model: nn.Module, name: str) -> nn.Module:
    """The module that owns the weight called `name`; ValueError for an unknown name."""
    model = unwrap(model)
    name = strip_prefix(name)
    mod_name, _, attr = name.rpartition(".")
    if attr != "weight":
        raise ValueError(f"unknown parameter name {name!r}: masks address weights ('<module>.weight')")
    try:
        module = model.get_submodule(mod_name) if mod_name else model
    except AttributeError:
        module = None
    if module is None or not _has_weight(module):
        known = list(prunable_weights(model))
        raise ValueError(f"unknown parameter name {name!r}; prunable weights are {known}")
    return module


def check_mask(mask, shape, what: str) -> None:
    """Raise unless `mask` is a bool tensor of exactly `shape` (the weight's). `what` names the mask
    in the message ("mask for 'features.0.weight'"). The one mask check of apply_masks, convert and
    the Spike* layers' set_mask / from_dense.

    Only bool is accepted, by design: a float mask (scores, 0.3, NaN) cast to bool reads as "keep"
    almost everywhere, and a [K] mask would broadcast over the rows of an [M, K] weight; both would
    prune nothing and say nothing. Exact 0/1 masks of other dtypes must be converted by the caller
    (mask.bool()), who knows they are 0/1; torch.nn.utils.prune's own buffers go through
    torch_prune_mask, which checks that."""
    shape = tuple(shape)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{what} must be a bool tensor of the weight's shape {shape} (True = keep), got "
                        f"{type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{what} must be a bool tensor (True = keep), got dtype {mask.dtype}; non-bool masks are "
                        f"refused because scores or fractions would read as all-True (nothing pruned): pass "
                        f"`scores > threshold`, or `mask.bool()` for a mask that holds exactly 0 and 1")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{what} has shape {tuple(mask.shape)}, but the weight has {shape}; a mask must have "
                         f"exactly the weight's shape (it is never broadcast)")


def _prune_hooks(module: nn.Module):
    """The torch.nn.utils.prune methods in `module`'s forward pre-hooks, by the tensor they prune."""
    return {h._tensor_name: h for h in module._forward_pre_hooks.values()
            if isinstance(h, torch_prune.BasePruningMethod)}


def torch_prune_mask(module: nn.Module, what: str = "weight_mask") -> "torch.Tensor | None":
    """The bool mask of `module`'s weight when torch.nn.utils.prune manages it (None otherwise).

    torch keeps that mask as a float 0/1 buffer `weight_mask`; it is converted to bool only after
    checking that every entry is exactly 0 or 1 (a buffer edited by hand to hold scores or NaN
    would otherwise become all-True). `what` names the buffer in the error."""
    if "weight" not in _prune_hooks(module):
        return None
    return zero_one_mask(module.weight_mask, module.weight_orig.shape, f"{what} (torch.nn.utils.prune)")


def zero_one_mask(mask: torch.Tensor, shape, what: str) -> torch.Tensor:
    """A stored mask (a bool tensor, or torch.nn.utils.prune's float 0/1 buffer) as bool, after checking
    its shape and that every entry is exactly 0 or 1 (scores or NaN cast to bool would read as "keep").
    For masks that come out of storage; a mask passed to an API must be bool (check_mask)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{what} has shape {tuple(mask.shape)}, but the weight has {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    # Nonzero (NaN too) and exactly-one must be the same set: two passes that also give the result,
    # against four (!= 0, != 1, &, any) and a cast (VGG11's 4096x25088 mask: 313 -> 150 ms, 2 threads).
    keep, one = mask.to(torch.bool), mask == 1
    if not torch.equal(keep, one):
        bad = keep != one
        raise ValueError(f"{what} must hold only 0 and 1, found {mask[bad].flatten()[0].item()!r}")
    return keep


def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError/TypeError unless every mask is a bool tensor of its (known) weight's shape."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict name -> bool tensor, got {type(masks).__name__}")
    for name, mask in masks.items():
        if not isinstance(name, str):
            raise TypeError(f"masks must be keyed by parameter name (str, e.g. 'features.0.weight'), got key "
                            f"{name!r} of type {type(name).__name__}")
        check_mask(mask, _weight_of(module_of(model, name)).shape, f"mask for {name!r}")


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], *, zero_weights: bool = True) -> nn.Module:
    """Write `masks` ({weight name: bool tensor}) into `model`; returns the model.

    Spike* modules get the mask in `weight_mask` (the kernels skip pruned synapses). Other modules
    are pruned with torch.nn.utils.prune.custom_from_mask (their existing prune mask is replaced).
    zero_weights=True also zeroes the stored pruned weights (LTH, criticality and Grad R keep
    pruned weights at 0); MultiPrizeTicket passes False because its weights are frozen.
    """
    from ..nn.layers import _SpikeMixin

    check_masks(model, masks)
    for name, mask in masks.items():
        module = module_of(model, name)
        weight = _weight_of(module)
        mask = mask.to(weight.device)
        if isinstance(module, _SpikeMixin):
            module.set_mask(mask)
        elif hasattr(module, "weight_orig") and isinstance(getattr(module, "weight_mask", None), torch.Tensor):
            module.weight_mask.copy_(mask.to(module.weight_mask.dtype))
            # torch prune recomputes `weight` in a forward pre-hook; refresh it now as well.
            setattr(module, "weight", module.weight_orig * module.weight_mask)
        else:
            torch_prune.custom_from_mask(module, "weight", mask)
        if zero_weights:
            weight.mul_(mask.to(weight.dtype))
    return model


@torch.no_grad()
def zero_pruned_(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """W *= M in place for every named weight (after an optimizer step whose momentum or weight
    decay could move pruned weights away from 0)."""
    for n, w in weights.items():
        w.mul_(masks[n].to(w.dtype))


def get_masks(model: nn.Module) -> Masks:
    """{weight name: bool mask} read back from the model (Spike* weight_mask or torch prune masks);
    layers without a mask are reported as all True."""
    from ..nn.layers import _SpikeMixin

    out: Masks = {}
    for name, weight in prunable_weights(model).items():
        module = module_of(model, name)
        if isinstance(module, _SpikeMixin):
            mask = module.weight_mask
        else:
            mask = torch_prune_mask(module, repr(f"{name}_mask"))
        out[name] = (mask.to(torch.bool).clone() if mask is not None
                     else torch.ones_like(weight, dtype=torch.bool))
    return out


def masks_from_weights(model: nn.Module, exclude: Iterable[str] = ()) -> Masks:
    """{weight name: weight != 0} for every conv + linear layer (e.g. after Grad R, whose pruned
    synapses are exactly 0)."""
    return {n: w.detach() != 0 for n, w in prunable_weights(model, exclude).items()}


def density(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of kept entries over all masks (connectivity)."""
    total = sum(m.numel() for m in masks.values())
    return float(sum(int(m.sum()) for m in masks.values())) / total if total else 0.0


def sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of pruned entries over all masks (1 - density)."""
    return 1.0 - density(masks) if masks else 0.0


def check_fraction(value, name: str, *, allow_one: bool = False) -> float:
    """A sparsity-like number in [0, 1) ([0, 1] with allow_one); TypeError / ValueError otherwise."""
    from ..functional import check_real
    return check_real(value, name, lo=0, hi=1, hi_open=not allow_one)


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of exactly the k largest entries of `scores` (ties broken by torch.topk)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    k = max(0, min(int(k), scores.numel()))
    if k:
        mask[torch.topk(scores.flatten(), k, sorted=False).indices] = True
    return mask.view_as(scores)


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of `values` (k >= 1, flattened)."""
    return torch.topk(values.flatten(), k, sorted=True).values[-1]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def broadcast_masks(masks: Masks, src: int = 0) -> Masks:
    """Under torch.distributed, overwrite every rank's masks with rank `src`'s (in place, by name
    order); a no-op otherwise. Pruners call it after each mask change so all ranks agree."""
    if not is_distributed():
        return masks
    for name in sorted(masks):
        buf = masks[name].to(torch.uint8)
        dist.broadcast(buf, src)
        masks[name] = buf.to(torch.bool)
    return masks


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over ranks under torch.distributed (in place); `t` unchanged otherwise."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


class GradMaskHooks:
    """Tensor hooks that multiply each managed weight's gradient by its current mask (pruned
    gradients are zeroed). The hooks read `masks[name]` at call time, so updating the dict is
    enough. remove() detaches them."""

    def __init__(self, params: Mapping[str, torch.Tensor], masks: Masks):
        self.masks = masks
        self.handles = []
        for name, p in params.items():
            if p.requires_grad:
                self.handles.append(p.register_hook(self._hook(name)))

    def _hook(self, name):
        def hook(grad):
            m = self.masks.get(name)
            return grad if m is None else grad * m.to(grad.dtype)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


def masks_state(masks: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in masks.items()}


def load_masks_state(params: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> Masks:
    unknown = set(state) - set(params)
    if unknown:
        raise ValueError(f"state has masks for unknown parameter names {sorted(unknown)}")
    out = {}
    for k, v in state.items():
        if v.shape != params[k].shape:
            raise ValueError(f"saved mask for {k!r} has shape {tuple(v.shape)}, weight has {tuple(params[k].shape)}")
        out[k] = v.to(device=params[k].device, dtype=torch.bool).clone()
    return out
