"""The `snnsparse` command: demo, bench, energy, prune.

Every subcommand refuses bad arguments the way argparse does (`snnsparse prune: error: argument
--lr: ...`, exit status 2) before it does any work: value checks are the argparse `type=` callables
below, shared by all subcommands; checks that need several arguments (a recipe against a method, a
dataset that needs --data) raise UsageError at the top of the subcommand, which the entry points
turn into the same argparse error.
"""
import argparse
import os
import sys
from typing import List, Optional

from .functional import check_int, check_real  # `import snnsparse` has loaded it already


# ---------------------------------------------------------------------------------------------
# Argument checks (argparse `type=` callables and UsageError), reused by every subcommand
# ---------------------------------------------------------------------------------------------
class UsageError(SystemExit):
    """A bad argument found after parsing (it needs other arguments, or a file's content), before any
    work. `option` is the argument's flag as the user typed it ("--data") or a positional's name.

    A SystemExit, as argparse's own errors are: run_command reports it the argparse way (exit 2), and
    a subcommand's main called directly still ends with the message, without a traceback."""

    def __init__(self, option: str, message):
        self.option, self.message = option, str(message)
        super().__init__(f"argument {option}: {self.message}")


def run_command(parser: argparse.ArgumentParser, main, args: argparse.Namespace):
    """main(args), with a UsageError reported by `parser` as argparse reports a bad value (exit 2)."""
    try:
        return main(args)
    except UsageError as e:
        parser.error(str(e))


def _number_type(convert, check, **bounds):
    """An argparse type: text -> convert(text) -> check(value, **bounds) (snnsparse.functional's
    check_int / check_real, the same checks the library's constructors use)."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = text  # check() refuses a str with the message saying what was expected
        try:
            return check(value, **bounds)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(f"{e}") from None
    return parse


positive_int = _number_type(int, check_int, lo=1)
non_negative_int = _number_type(int, check_int, lo=0)
any_int = _number_type(int, check_int)
positive_float = _number_type(float, check_real, lo=0, lo_open=True)
nonnegative_float = _number_type(float, check_real, lo=0)
probability = _number_type(float, check_real, lo=0, hi=1)


def existing_file(text: str) -> str:
    """A path to a file that exists (a directory is refused)."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"not a file: {text!r}")
    return text


def existing_dir(text: str) -> str:
    """A path to a directory that exists."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no such directory: {text!r}")
    return text


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def writable_file(text: str) -> str:
    """A file path that can be written now: its directory exists and is writable, and the path is
    not a directory. Checked when the arguments are parsed, so that an hour of work is not lost to a
    typo in an output path."""
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file path")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: permission denied")
    return text


def writable_dir(text: str) -> str:
    """A directory that exists and is writable, or that can be created (its nearest existing
    ancestor is a writable directory)."""
    path = os.path.abspath(text)
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise argparse.ArgumentTypeError(f"cannot create directory {text!r}: {base!r} is not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {text!r}: permission denied on {base!r}")
    return text


def torch_device(text: str) -> str:
    """A torch device that exists here ("cpu", "cuda", "cuda:1", "mps")."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:0)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available here (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available here")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r}: device type {dev.type!r} is not supported (cpu, cuda, mps)")
    return text


def backend_name(text: str) -> str:
    """An snnsparse backend that runs here, or "auto"."""
    from . import backends

    try:
        backends.check_name(text, "--backend")
        if text != "auto":
            backends.get(text)  # only this backend is probed, with the reason when it cannot run here
    except (ValueError, TypeError, backends.BackendUnavailable) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------
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


def _optimize_args(p):
    from .nn.optimize_cli import add_optimize_args, optimize_main
    add_optimize_args(p)
    return optimize_main


def _prune_args(p):
    from .recipes import add_prune_args, prune_main
    add_prune_args(p)
    return prune_main


COMMANDS = {
    "demo": ("train a spiking CNN on the bundled digits, prune it with Grad R, convert, measure", _demo_args),
    "bench": ("kernel sweeps: speedup vs spike rate and weight density per backend (CSV + PNG)", _bench_args),
    "energy": ("per-layer SOP / energy table of a model and a PNG bar chart", _energy_args),
    "prune": ("run a paper's pruning recipe on your own data (MNIST / CIFAR-10 directory)", _prune_args),
    "optimize": ("optimize_for_inference on a saved model: the per-layer report, optional timing and save",
                 _optimize_args),
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
            p.set_defaults(_main=setup(p), _parser=p)
        except ImportError as e:  # a missing optional dependency only disables its own command
            p.set_defaults(_main=_unavailable(name, e), _parser=p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    rc = run_command(args._parser, args._main, args)
    return 0 if rc is None else int(rc)


if __name__ == "__main__":
    # `python -m snnsparse.cli` runs this file as __main__, a second copy of the module: run the
    # imported snnsparse.cli, whose UsageError is the one the subcommands raise.
    from snnsparse.cli import main as _main
    sys.exit(_main())
