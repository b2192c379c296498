"""SpikingJelly's model zoo (spikingjelly.activation_based.model) without torchvision or h5py.

The zoo modules import torchvision (load_state_dict_from_url, for pretrained weights) and h5py (in
sew_resnet's distributed helpers) at import time only, and the package's __init__ imports every zoo
model. `spikingjelly_zoo(name)` loads one zoo file by path with CPU-safe stand-ins for those two
packages that exist only while the file is imported (nothing else is touched; asking for pretrained
weights raises). Used by the tests and by bench/e2e_zoo.py; a user without torchvision can use it too.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading
import types

_LOADED: dict = {}
_LOCK = threading.Lock()


def _no_download(*args, **kwargs):
    raise RuntimeError("snnsparse.zoo: pretrained weights are not available without torchvision "
                       "(this loader stands in for torchvision's load_state_dict_from_url)")


def spikingjelly_zoo(name: str) -> types.ModuleType:
    """The module spikingjelly.activation_based.model.<name> (e.g. "spiking_resnet", "sew_resnet",
    "spiking_vgg", "parametric_lif_net", "spikformer"), loaded once per process."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"spikingjelly_zoo: name must be a zoo module name such as 'spiking_resnet', got {name!r}")
    with _LOCK:
        if name in _LOADED:
            return _LOADED[name]
        import spikingjelly.activation_based as sj
        path = os.path.join(os.path.dirname(sj.__file__), "model", f"{name}.py")
        if not os.path.exists(path):
            raise ValueError(f"spikingjelly_zoo: SpikingJelly has no zoo module {name!r} ({path} does not exist)")
        tv = types.ModuleType("torchvision")
        utils = types.ModuleType("torchvision._internally_replaced_utils")
        utils.load_state_dict_from_url = _no_download
        tv._internally_replaced_utils = utils
        stand_ins = {"torchvision": tv, "torchvision._internally_replaced_utils": utils,
                     "h5py": types.ModuleType("h5py")}
        saved = {k: sys.modules.get(k) for k in stand_ins}
        # Only where the real package is missing: an installed torchvision / h5py is used as it is.
        missing = {k: v for k, v in stand_ins.items() if saved[k] is None and importlib.util.find_spec(
            k.split(".")[0]) is None}
        sys.modules.update(missing)
        try:
            spec = importlib.util.spec_from_file_location(f"spikingjelly.activation_based.model.{name}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            for k in missing:
                sys.modules.pop(k, None)
        _LOADED[name] = module
        return module
