"""The `snnsparse` command: demo, bench, energy, prune."""
import argparse
import sys
from typing import List, Optional


def _demo_args(p):
    from . import demo
    demo.add_args(p)
    return demo.main


def _bench_args(p):
    from . import benchmark
    benchmark.add_args(p)
    return benchmark.main


def _energy_args(p):
    from .energy import add_energy_args, energy_main
    add_energy_args(p)
    return energy_main


def _prune_args(p):
    from .recipes import add_prune_args, prune_main
    add_prune_args(p)
    return prune_main


COMMANDS = {
    "demo": ("train a spiking CNN on the bundled digits, prune it with Grad R, convert, measure", _demo_args),
    "bench": ("kernel sweeps: speedup vs spike rate and weight density per backend (CSV + PNG)", _bench_args),
    "energy": ("per-layer SOP / energy table of a model and a PNG bar chart", _energy_args),
    "prune": ("run a paper's pruning recipe on your own data (MNIST / CIFAR-10 directory)", _prune_args),
}


def _unavailable(name, err):
    def run(args):
        print(f"snnsparse {name}: unavailable here: {err}", file=sys.stderr)
        return 1
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snnsparse", description="Sparse spike kernels, pruners and energy "
                                     "counting for spiking neural networks.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, (help_text, setup) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            p.set_defaults(_main=setup(p))
        except ImportError as e:  # a missing optional dependency only disables its own command
            p.set_defaults(_main=_unavailable(name, e))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    rc = args._main(args)
    return 0 if rc is None else int(rc)


if __name__ == "__main__":
    sys.exit(main())
