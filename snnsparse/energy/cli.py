"""`snnsparse energy`: per-layer table (firing rate, weight density, every count, energy, share)
and a PNG bar chart, for a saved model or a small built-in demo model.

    snnsparse energy                                  # built-in demo model (random masks)
    snnsparse energy model.pt --input-shape 4,8,3,32,32 --preset int8 --plot energy.png
    python -m snnsparse.energy ...                    # the same without the lead CLI
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .constants import PRESETS
from .counter import count

DEFAULT_PLOT = "energy.png"


def demo_model(*, density: float = 0.5, t: int = 4, batch: int = 2, image_size: int = 16,
               seed: int = 0) -> Tuple[nn.Module, torch.Tensor]:
    """(model, inputs): a small spiking CNN of snnsparse layers with random masks of `density`
    (the encoding conv stays dense) and a batch of random images [B, 1, H, W], repeated T times
    inside the model (direct encoding: the first conv sees pixels and is counted as MACs)."""
    from ..functional import check_int, check_real
    from ..models import SpikingCNN
    density = check_real(density, "density", lo=0, hi=1, where="demo_model")
    for name, value in (("t", t), ("batch", batch), ("image_size", image_size)):
        check_int(value, name, lo=1, where="demo_model")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SpikingCNN(in_channels=1, image_size=image_size, channels=(8, "M", 16, "M"), classes=10, t=t,
                           hidden=32, lif_kwargs={"v_threshold": 0.5})
    first = True
    for m in model.modules():
        if hasattr(m, "set_mask"):
            with torch.no_grad():
                m.weight.mul_(3.0)   # untrained weights, scaled so that every layer fires
            if first:
                first = False
                continue
            m.set_mask(torch.rand(m.weight.shape, generator=gen) < density)
    x = torch.rand(batch, 1, image_size, image_size, generator=gen)
    return model.eval(), x


def _shape(text: str):
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape must be integers like 4,2,1,16,16, got {text!r}")
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"input shape must be positive integers like 4,2,1,16,16, got {text!r}")
    return dims


def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The model and input arguments shared by `snnsparse energy` and `snnsparse optimize`: MODEL,
    --input-shape / --input, --spike-rate, --density and --seed of the demo model (model_and_input)."""
    from ..cli import any_int, existing_file, probability
    parser.add_argument("model", nargs="?", default=None, type=existing_file,
                        help="a whole model saved with torch.save(model, path) (trusted files only: it is "
                             "unpickled); default: a small built-in demo spiking CNN")
    given = parser.add_mutually_exclusive_group()  # one input: neither is silently ignored
    given.add_argument("--input-shape", type=_shape, default=None, metavar="T,B,C,H,W",
                       help="shape of a random input for MODEL (time-major [T,B,...] or whatever the model "
                            "takes); uniform [0,1) pixels unless --spike-rate is given")
    given.add_argument("--input", default=None, metavar="PATH", type=existing_file,
                       help="a tensor saved with torch.save to use as input")
    parser.add_argument("--spike-rate", type=probability, default=None, metavar="P",
                        help="make the random input binary spikes with P(1) = P instead of pixels")
    parser.add_argument("--density", type=probability, default=0.5,
                        help="mask density of the demo model (default 0.5)")
    parser.add_argument("--seed", type=any_int, default=0, help="seed of the demo model and random inputs")
    return parser


def model_and_input(args: argparse.Namespace):
    """(model, input, description of the model) from add_model_args' arguments; bad combinations raise
    snnsparse.cli.UsageError naming the argument, before any model is loaded."""
    from ..cli import UsageError
    if args.model is not None and args.input is None and args.input_shape is None:
        raise UsageError("--input-shape", "a model file needs --input-shape T,B,C,H,W (or --input tensor.pt)")
    if args.spike_rate is not None and args.input_shape is None:  # else it would be silently ignored
        raise UsageError("--spike-rate", "makes the random input of --input-shape; give --input-shape too")
    x = _load_input(args.input) if args.input is not None else None
    gen = torch.Generator().manual_seed(args.seed)
    if args.model is None:
        model, demo_x = demo_model(density=args.density, seed=args.seed)
        source = f"built-in demo spiking CNN (mask density {args.density}, seed {args.seed})"
    else:
        model = _load_model(args.model)
        source = args.model
        demo_x = None
    if x is None:
        if args.input_shape is not None:
            x = torch.rand(args.input_shape, generator=gen)
            if args.spike_rate is not None:
                x = (x < args.spike_rate).float()
        else:
            x = demo_x
    return model, x, source


def add_energy_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `snnsparse energy` (values checked while parsing, see snnsparse.cli)."""
    from ..cli import backend_name, nonnegative_float, positive_int, writable_file
    add_model_args(parser)
    parser.add_argument("--timesteps", type=positive_int, default=None, metavar="T",
                        help="T for the ANN-equivalent energy (default: inferred from the model's time-major data)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fp32",
                        help="energy per operation, Horowitz ISSCC 2014: fp32 (AC 0.9, MAC 4.6 pJ), "
                             "fp16 (0.4 / 1.5), int8 (0.03 / 0.23)")
    parser.add_argument("--e-ac", type=nonnegative_float, default=None, metavar="PJ",
                        help="energy of one accumulate (pJ)")
    parser.add_argument("--e-mac", type=nonnegative_float, default=None, metavar="PJ", help="energy of one MAC (pJ)")
    parser.add_argument("--ann", choices=("dense", "masked"), default="dense",
                        help="ANN equivalent: the unpruned layers (dense) or the same pruned weights (masked)")
    parser.add_argument("--backend", type=backend_name, default=None,
                        help="snnsparse backend for the run (default: auto)")
    # default None, not "energy.png": argparse would check a string default even under --no-plot
    parser.add_argument("--plot", type=writable_file, default=None, metavar="PNG",
                        help=f"bar chart path (default {DEFAULT_PLOT})")
    parser.add_argument("--no-plot", action="store_true", help="do not write the bar chart")
    parser.add_argument("--json", type=writable_file, default=None, metavar="PATH",
                        help="also write the report as JSON")
    parser.add_argument("--exact", action="store_true", help="print exact counts instead of k/M/G")
    return parser


def _load_model(path: str) -> nn.Module:
    from ..cli import UsageError
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # unpickling needs the model's classes importable under their saved names
        raise UsageError("model", f"could not load a model from {path}: {type(e).__name__}: {e}") from None
    if isinstance(obj, torch.jit.ScriptModule):
        raise UsageError("model", f"{path} is a TorchScript module; forward hooks need an eager model saved "
                         "with torch.save(model, path)")
    if isinstance(obj, dict):
        raise UsageError("model", f"{path} holds a dict (a state_dict?), not a model; save the whole model with "
                         "torch.save(model, path), or build it in Python and call ss.energy.count")
    if not isinstance(obj, nn.Module):
        raise UsageError("model", f"{path} holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj


def _load_input(path: str) -> torch.Tensor:
    from ..cli import UsageError
    try:
        x = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch.save file, or one holding more than tensors
        raise UsageError("--input", f"could not load a tensor from {path}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(x, torch.Tensor):
        raise UsageError("--input", f"{path} holds a {type(x).__name__}, not a tensor")
    return x


def energy_main(args: argparse.Namespace) -> int:
    """Print the per-layer energy table, write the PNG chart (and JSON); returns the exit status.
    Bad arguments raise snnsparse.cli.UsageError before any counting."""
    from ..cli import UsageError, writable_file
    plot_path = args.plot or DEFAULT_PLOT
    if not args.no_plot and args.plot is None:
        try:
            writable_file(plot_path)
        except argparse.ArgumentTypeError as e:
            raise UsageError("--plot", e) from None
    model, x, source = model_and_input(args)
    try:
        report = count(model, x, preset=args.preset, e_ac=args.e_ac, e_mac=args.e_mac, timesteps=args.timesteps,
                       ann=args.ann, backend=args.backend)
    except (ValueError, TypeError, RuntimeError) as e:
        raise SystemExit(f"snnsparse energy: counting failed: {e}")
    print(f"model: {source}; input shape {tuple(x.shape)}")
    print(report.table(exact=args.exact))
    if not args.no_plot:
        try:
            report.plot(plot_path, title=f"snnsparse energy: {source}")
            print(f"bar chart: {plot_path}")
        except ImportError as e:
            print(f"no bar chart ({e}); install matplotlib", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2, default=str)
        print(f"json: {args.json}")
    return 0


def main(argv: Optional[list] = None) -> int:
    from ..cli import run_command
    parser = argparse.ArgumentParser(prog="python -m snnsparse.energy", description=__doc__.splitlines()[0])
    add_energy_args(parser)
    return run_command(parser, energy_main, parser.parse_args(argv))
