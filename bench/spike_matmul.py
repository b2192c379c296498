"""spike_matmul on CPU against torch.matmul in fp32, the ratio measured in one process.

    python bench/spike_matmul.py                    # 2 threads, 9 rounds, the cases below
    python bench/spike_matmul.py --threads 1 --rounds 15 --json out.json

Shapes are the spiking-transformer attention products, batched over Bt = T*B*heads (T=4, B=8, heads=8:
Bt=256): binary x binary Q K^T [Bt, 64, N] @ [Bt, N, 64] and float x binary (Q K^T) V [Bt, 64, N] @ [Bt, N, 64]
(N = 64 and 256, spike rate 0.15). Every round times the baseline and each of our calls back to back
(interleaved, the order alternating per round), so a load change hits both; the table gives the median over
the rounds, the p20-p80 spread and the ratio of the medians. The baseline is torch.matmul on fp32 copies of
the same values. Ours is the public snnsparse.functional.spike_matmul (validation included) on the cpp
backend, with the spikes given as fp32 (the same tensors the baseline reads) and as bool (1 byte per spike, as
a spiking layer can store them). The machine's load (os.getloadavg) is printed before and after: numbers
taken under load are not comparable with those of a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import snnsparse as ss

CASES = [  # (label, binary, M, N (the reduction), C (the output columns), rate)
    ("QK^T  bin x bin  [256,64,64]x[256,64,64]", "both", 64, 64, 64, 0.15),
    ("QK^T  bin x bin  [256,64,256]x[256,256,64]", "both", 64, 256, 64, 0.15),
    ("(QK^T)V int x bin [256,64,64]x[256,64,64]", "b", 64, 64, 64, 0.15),
    ("(QK^T)V int x bin [256,64,256]x[256,256,64]", "b", 64, 256, 64, 0.15),
]
BT = 4 * 8 * 8  # T * B * heads


def _operands(binary, m, k, c, rate, g):
    spikes = lambda *s: (torch.rand(s, generator=g) < rate)  # noqa: E731
    if binary == "both":
        a, b = spikes(BT, m, k), spikes(BT, k, c)
    else:  # integer-valued attention scores (counts of a binary QK^T) times binary V
        a, b = torch.randint(0, 8, (BT, m, k), generator=g).float(), spikes(BT, k, c)
    return a, b


def _time(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ss.backends.get("cpp")
    load0 = os.getloadavg()
    print(f"# torch {torch.__version__}, snnsparse {ss.__version__} (cpu isa {ss.ops.cpp.cpu_isa()}), "
          f"python {platform.python_version()}, {platform.processor() or platform.machine()}, "
          f"threads {args.threads}, rounds {args.rounds}, load {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    g = torch.Generator().manual_seed(0)
    rows = []
    for label, binary, m, k, c, rate in CASES:
        a, b = _operands(binary, m, k, c, rate, g)
        af, bf = a.float(), b.float()
        calls = {
            "torch.matmul fp32": lambda: torch.matmul(af, bf),
            "ours, fp32 spikes": lambda: ss.functional.spike_matmul(af, bf, binary=binary, backend="cpp"),
            "ours, bool spikes": lambda: ss.functional.spike_matmul(a, b, binary=binary, backend="cpp"),
        }
        ref = torch.matmul(af.double(), bf.double())
        for name, fn in calls.items():  # warm-up, and the products agree
            torch.testing.assert_close(fn().double(), ref, rtol=1e-5, atol=1e-4)
        times = {name: [] for name in calls}
        for r in range(args.rounds):
            for name in (calls if r % 2 == 0 else reversed(list(calls))):
                times[name].append(_time(calls[name]))
        base = statistics.median(times["torch.matmul fp32"])
        print(f"\n{label}  rate {rate}")
        for name, ts in times.items():
            q = statistics.quantiles(ts, n=5)
            med = statistics.median(ts)
            print(f"  {name:20s} median {med * 1e3:8.3f} ms  p20-p80 {q[0] * 1e3:7.3f}-{q[3] * 1e3:7.3f}  "
                  f"x{base / med:5.2f} vs torch")
            rows.append(dict(case=label, rate=rate, impl=name, median_ms=med * 1e3, p20_ms=q[0] * 1e3,
                             p80_ms=q[3] * 1e3, speedup=base / med))
    load1 = os.getloadavg()
    print(f"\n# load after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=args.threads, rounds=args.rounds, load=[load0, load1], torch=torch.__version__,
                           rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
