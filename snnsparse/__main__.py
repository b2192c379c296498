"""`python -m snnsparse`: the installed version, its torch, and which kernel backends run here (and why
the others do not). The `snnsparse` command runs the tools (demo, bench, energy, prune)."""
import sys

import torch

import snnsparse


def main() -> int:
    print(f"snnsparse {snnsparse.__version__} (torch {torch.__version__}) at {snnsparse.__path__[0]}")
    for name, ok in snnsparse.backends.available().items():
        print(f"  {name:9s} {'available' if ok is True else 'unavailable: ' + ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
