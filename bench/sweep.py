"""Speed sweeps of the snnsparse spike ops vs torch dense (the code lives in snnsparse.benchmark,
shared with the `snnsparse bench` command).

    python bench/sweep.py                       # quick sweep -> bench/out/sweep_*.csv / .png
    python bench/sweep.py --backends cpp --full
    python bench/sweep.py --targets             # the issue-3 CPU target table (2 threads)
"""
import sys

from snnsparse.benchmark import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
