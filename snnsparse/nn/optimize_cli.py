"""`snnsparse optimize`: ss.nn.optimize_for_inference on a saved model (or the built-in demo CNN) from
the command line: prints the per-layer report (packed / dense / fused / left, and why), optionally
times the optimized model against the original (interleaved, median) and saves it."""
from __future__ import annotations

import argparse
import os

import torch


def add_optimize_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from ..cli import non_negative_int, writable_file
    from ..energy.cli import add_model_args
    add_model_args(parser)
    parser.add_argument("--reps", type=non_negative_int, default=0, metavar="N",
                        help="also time the optimized model against the original: median of N interleaved runs "
                             "(0: no timing)")
    parser.add_argument("--threads", type=non_negative_int, default=0, metavar="N",
                        help="torch threads for the timing (0: torch's default)")
    parser.add_argument("--save", type=writable_file, default=None, metavar="PATH",
                        help="save the optimized model with torch.save (load it with torch.load(weights_only=False))")
    return parser


def _reset(model):
    for m in model.modules():
        reset = getattr(m, "reset", None)
        if callable(reset) and m is not model:
            reset()


def optimize_main(args: argparse.Namespace) -> int:
    from ..benchmark import device_info, summary, timed
    from ..energy.cli import model_and_input
    from .optimize import optimize_for_inference
    model, x, source = model_and_input(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        fast = optimize_for_inference(model.eval(), x)
    except (ValueError, TypeError, RuntimeError) as e:
        raise SystemExit(f"snnsparse optimize: {e}")
    print(f"model: {source}; example input shape {tuple(x.shape)}")
    print(fast.report())
    if args.reps:
        def run(m):
            def f():
                _reset(m)
                with torch.no_grad():
                    return m(x)
            return f
        t_orig, t_fast = timed([run(model), run(fast)], reps=args.reps)
        so, sf = summary(t_orig), summary(t_fast)
        info = device_info()
        print(f"original {so['median_ms']:.2f} ms, optimized {sf['median_ms']:.2f} ms "
              f"(p20-p80 {sf['p20_ms']:.2f}-{sf['p80_ms']:.2f}): {so['median_ms'] / sf['median_ms']:.2f}x, median "
              f"of {args.reps} interleaved runs, {torch.get_num_threads()} threads, {info.get('device', 'cpu')}, "
              f"load {os.getloadavg()[0]:.2f}")
    if args.save:
        torch.save(fast, args.save)
        print(f"saved: {args.save}")
    return 0
