"""Whole-model CPU inference on SpikingJelly's spiking transformers: ss.nn.optimize_for_inference vs the
original SpikingJelly model with the same masked weights (issue 14's targets), same process.

Models (SpikingJelly 2.0 zoo builders, CIFAR-sized input 3x32x32, T=4, batch 8, 10 classes):
  spikformer_cifar10   spikformer.spikformer_cifar10() (384 dims, 12 heads, 4 blocks, 8x8 tokens)
  sdt                  spike_driven_transformer.sdt_8_384(pooling_stat="0011") (384 dims, 8 heads, 8 blocks;
                       two pooling stages, 8x8 tokens, the paper's CIFAR patching; the default "1111"
                       leaves 2x2 tokens at 32x32)
Everything else is bench/e2e_zoo.py's (shared, not copied): random masks of --density on every conv /
linear but the first, baked into the original's weights; BatchNorm statistics recalibrated on the pruned
net; interleaved timings, median of --reps; batch-1 latency; one CSV row per model (bench/out/e2e_transformer.csv).
Spike rates as they come out after recalibration, at every neuron's threshold times --threshold-scale
(per model, default: the factor that puts the mean rate in 5-20%: spikformer 0.75 -> ~8%, sdt 1.0 -> ~12%;
the rates are in the row). Extra columns: sparse_weight_share (fraction of the conv / linear weights in
packed event-driven layers) and the layers that are not (dense_layers).

    .venv/bin/python bench/e2e_transformer.py [--models spikformer_cifar10,sdt] [--reps 9] [--verbose]
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_zoo  # noqa: E402  (bench/ is not a package)
from snnsparse.zoo import spikingjelly_zoo  # noqa: E402

THRESHOLD_SCALE = {"spikformer_cifar10": 0.75, "sdt": 1.0}


def _models():
    return {
        "spikformer_cifar10": lambda: spikingjelly_zoo("spikformer").spikformer_cifar10(T=e2e_zoo.T, num_classes=10),
        "sdt": lambda: spikingjelly_zoo("spike_driven_transformer").sdt_8_384(T=e2e_zoo.T, num_classes=10,
                                                                              pooling_stat="0011"),
    }


def with_threshold_scale(build, scale):
    def f():
        model = build()
        for m in model.modules():
            if hasattr(m, "v_threshold") and isinstance(m.v_threshold, float):
                m.v_threshold *= scale
        return model
    return f


def sparse_layers(model, opt):
    """Share of the conv / linear weights in packed event-driven layers, and the others by name."""
    sizes = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, e2e_zoo.LAYERS)}
    packed = {r.name for r in opt.report() if r.action == "packed-event"}
    share = sum(v for n, v in sizes.items() if n in packed) / sum(sizes.values())
    dense = [f"{n}({sizes[n]})" for n in sizes if n not in packed]
    return dict(sparse_weight_share=round(share, 4), dense_layers=" ".join(dense))


def main():
    def row(name, build, args):
        scale = THRESHOLD_SCALE[name] if args.threshold_scale is None else args.threshold_scale
        return e2e_zoo.run(name, with_threshold_scale(build, scale), args, torch.Generator().manual_seed(0),
                           extra=lambda model, opt: dict(threshold_scale=scale, **sparse_layers(model, opt)))

    e2e_zoo.main_for(__doc__, _models(), "e2e_transformer.csv", row, lambda p: p.add_argument(
        "--threshold-scale", type=float, default=None, help="override the per-model factor"))


if __name__ == "__main__":
    main()
