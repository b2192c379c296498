"""convert(): swap nn.Linear / nn.Conv2d (and SpikingJelly's layer.Linear / layer.Conv2d) for
SpikeLinear / SpikeConv2d in place, keeping weights, biases and masks."""
from typing import Dict, Optional

import torch
import torch.nn as nn

from .layers import SpikeConv2d, SpikeLinear


def _replacement(child: nn.Module, mask, backend):
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
    if isinstance(model, (nn.Linear, nn.Conv2d)) and not isinstance(model, (SpikeLinear, SpikeConv2d)):
        new = _replacement(model, masks.pop("weight", None), backend)
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
