"""Small spiking models built from snnsparse layers (used by the demo, benchmarks and recipes).

All take time-major input [T, B, C, H, W]; static images are repeated over T (direct encoding),
so the first conv sees pixels and runs the dense path (counted as MACs).
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .nn import LIF, SpikeConv2d, SpikeLinear


class SeqToANN(nn.Module):
    """Apply a stateless module to every time step of [T, B, ...] at once (SpikingJelly's
    SeqToANNContainer): reshapes to [T*B, ...] and back."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.module = modules[0] if len(modules) == 1 else nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x.flatten(0, 1))
        return y.reshape(x.shape[0], x.shape[1], *y.shape[1:])


def repeat_time(x: torch.Tensor, t: int) -> torch.Tensor:
    """[B, ...] -> [T, B, ...] (direct encoding)."""
    return x.unsqueeze(0).expand(t, *x.shape).contiguous()


def lif_layer(**lif_kwargs) -> LIF:
    kw = dict(tau=2.0, surrogate="atan", detach_reset=True)
    kw.update(lif_kwargs)
    return LIF(**kw)


class SpikingCNN(nn.Module):
    """conv-BN-LIF blocks ('M' = 2x2 max pool), then a linear readout averaged over T.

    channels: e.g. (16, 'M', 32, 'M'); input [B, C, H, W] (repeated T times) or [T, B, C, H, W].
    Output: logits [B, classes] = mean over T of the readout.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, channels: Sequence = (16, "M", 32, "M"),
                 classes: int = 10, t: int = 4, hidden: Optional[int] = None, lif_kwargs: Optional[dict] = None):
        super().__init__()
        self.t = t
        lif_kwargs = lif_kwargs or {}
        layers, c, size = [], in_channels, image_size
        for spec in channels:
            if spec == "M":
                layers.append(SeqToANN(nn.MaxPool2d(2)))
                size //= 2
            else:
                layers += [SpikeConv2d(c, int(spec), 3, padding=1, bias=False),
                           SeqToANN(nn.BatchNorm2d(int(spec))), lif_layer(**lif_kwargs)]
                c = int(spec)
        self.features = nn.Sequential(*layers)
        head = [nn.Flatten(2)]
        feat = c * size * size
        if hidden:
            head += [SpikeLinear(feat, hidden, bias=False), lif_layer(**lif_kwargs)]
            feat = hidden
        head.append(SpikeLinear(feat, classes))
        self.classifier = nn.Sequential(*head)

    # For optimize_for_inference, which cannot trace forward (it branches on x.dim()): forward is
    # classifier(features(x)).mean(0) (the direct encoding runs features' first layers once per image,
    # which changes no layer's input kind), so features' output kind is classifier's input kind.
    # tests/test_optimize.py checks the claim against forward.
    snnsparse_pipeline = ("features", "classifier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features
        if x.dim() == 4:
            # Direct encoding: the layers before the first neuron (conv, BN) see the same image at
            # every step, so they run once and their output is repeated over T (as in Grad R's
            # official "static conv"). Measured on the demo model (batch 128, 16x16, T=4): the
            # encoding conv+BN took 26% of the pruned model's inference time when run T times.
            i = 0
            while i < len(features) and not isinstance(features[i], LIF):
                m = features[i]
                x = m.module(x) if isinstance(m, SeqToANN) else m(x)
                i += 1
            features = features[i:]
            x = repeat_time(x, self.t)
        return self.classifier(features(x)).mean(0)


def vgg_cfg(name: str):
    return {"vgg-small": (64, "M", 128, "M", 256, 256, "M", 512, "M"),
            "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
            "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")}[name]
