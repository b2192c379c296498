"""snnsparse: event-driven dual-sparse kernels, pruners and energy counting for SNNs.

    import snnsparse as ss
    ss.backends.available()                     # which kernel backends can run here, and why not
    y = ss.functional.spike_linear(s, w, mask=m)  # s binary [T, B, K] -> [T, B, M]
    model = ss.nn.convert(model)                # nn.Linear / nn.Conv2d -> SpikeLinear / SpikeConv2d
"""
import importlib

from . import _ext, backends, functional, models, nn, ops  # noqa: F401

__version__ = "0.1.0"
_LAZY = ("pruning", "energy", "data", "cli", "zoo", "nir")


def __getattr__(name):
    # Pruners, energy counting and data loaders import on first use, keeping `import snnsparse` light.
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'snnsparse' has no attribute {name!r}")
