"""convert(): swap nn.Linear / nn.Conv2d (and SpikingJelly's layer.Linear / layer.Conv2d, which
subclass them, in step mode "m" or "s") for SpikeLinear / SpikeConv2d in place, keeping weights,
biases and masks; SpikingJelly's neuron.LIFNode becomes ss.nn.LIF with identical parameters.
Containers (SpikingJelly's SeqToANNContainer, nn.Sequential, ...) are kept; their children are
converted. The Spike* layers take [T, B, ...] and flat input alike, so step modes need no wrapper."""
from typing import Dict, Optional

import torch
import torch.nn as nn

from .layers import SpikeConv2d, SpikeLinear
from .lif import LIF


def _is_spikingjelly_lif(module: nn.Module) -> bool:
    return type(module).__name__ == "LIFNode" and type(module).__module__.startswith("spikingjelly.")


def _replacement(child: nn.Module, mask, backend):
    if _is_spikingjelly_lif(child):
        return LIF.from_spikingjelly(child, backend=backend)
    if isinstance(child, (SpikeLinear, SpikeConv2d)):
        if mask is not None:
            child.set_mask(mask)
        return None
    if isinstance(child, nn.Linear):
        return SpikeLinear.from_dense(child, mask, backend=backend)
    if isinstance(child, nn.Conv2d) and child.padding_mode == "zeros":
        return SpikeConv2d.from_dense(child, mask, backend=backend)
    return None


def convert(model: nn.Module, masks: Optional[Dict[str, torch.Tensor]] = None, *, backend: str = "auto",
            inplace: bool = True) -> nn.Module:
    """Replace every nn.Linear / nn.Conv2d in `model` by its Spike* twin.

    masks: optional {parameter name ("features.0.weight") -> bool mask}; a module pruned with
    torch.nn.utils.prune keeps its mask. Returns the model (a deep copy if inplace=False).
    """
    if not inplace:
        import copy
        model = copy.deepcopy(model)
    masks = dict(masks or {})
    if not list(model.children()):
        new = _replacement(model, masks.pop("weight", None), backend)
        if masks:
            raise KeyError(f"convert: masks name parameters that are not Linear/Conv2d weights: {sorted(masks)}")
        return new if new is not None else model
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            new = _replacement(child, masks.pop(f"{full}.weight", None), backend)
            if new is not None:
                setattr(module, child_name, new)
    if masks:
        raise KeyError(f"convert: masks name parameters that are not Linear/Conv2d weights: {sorted(masks)}")
    return model
