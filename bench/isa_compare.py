"""CPU kernel variants side by side on the issue-3 target rows: SNNSPARSE_CPU_ISA=avx512 / avx2 /
generic of this build, optionally against another build of snnsparse (e.g. the old -march=native
one) given as a source tree with its compiled snnsparse/_C*.so.

    python bench/isa_compare.py                                  # avx512, avx2, generic (those the CPU runs)
    python bench/isa_compare.py --other native=/tmp/old_native   # + a build in another tree
    python bench/isa_compare.py --rounds 3 --reps 3 --threads 2 --json out.json

The variant is chosen once per process (at import), so each variant runs in its own worker
process. Rounds interleave the processes (variant order rotated every round), and inside a
worker every case times the dense torch baseline and the kernel call by call, so a load change
hits both; each case gets rounds x reps samples per variant (median of >= 9 by default) and the
table shows the median, p20-p80, the ratio to the baseline of the same process and the ratio to
the first variant (the reference column, avx512 by default).

"ours" is the snnsparse op called directly on weights packed once (the kernel, no Python glue):
torch.ops.snnsparse.spike_conv2d_fwd_packed / spike_linear_fwd_packed with the format the build
picks automatically, lif_fwd + lif_bwd, and the event-driven conv weight gradient
(spike_conv2d_bwd, weight only).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, kind, params): conv T=4, B=16 (N=64 frames), 3x3 pad 1, Cin = Cout; linear N=64 rows
CASES = [
    ("conv 256@16x16 rate .10 dens 1.00", "conv", dict(C=256, HW=16, rate=0.1, dens=1.0)),
    ("conv 256@16x16 rate .10 dens 0.10", "conv", dict(C=256, HW=16, rate=0.1, dens=0.1)),
    ("conv 128@32x32 rate .10 dens 0.01", "conv", dict(C=128, HW=32, rate=0.1, dens=0.01)),
    ("conv 128@32x32 rate .05 dens 0.01", "conv", dict(C=128, HW=32, rate=0.05, dens=0.01)),
    ("linear 4096x4096 N64 rate .10 dens 0.10", "linear", dict(N=64, K=4096, M=4096, rate=0.1, dens=0.1)),
    ("linear 4096x4096 N64 rate .10 dens 1.00", "linear", dict(N=64, K=4096, M=4096, rate=0.1, dens=1.0)),
    ("lif fwd+bwd [8,64,16384] sigmoid", "lif", dict(T=8, N=64 * 16384)),
    ("conv wgrad 256@16x16 rate .10 dens 0.10", "wgrad", dict(C=256, HW=16, rate=0.1, dens=0.1)),
]


# Baselines (same process, timed call by call with ours): F.conv2d / F.linear with the masked weight
# (oneDNN / MKL), aten.convolution_backward for the weight gradient, a copy of the same bytes for LIF.

# ------------------------------------------------------------------------------------------ worker
def _worker(reps: int, threads: int):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    O = torch.ops.snnsparse
    import snnsparse._C  # noqa: F401  (the extension of the tree on sys.path: registers the ops)

    g = torch.Generator().manual_seed(0)
    calls = []
    for name, kind, p in CASES:
        if kind in ("conv", "wgrad"):
            C, HW = p["C"], p["HW"]
            x = (torch.rand(64, C, HW, HW, generator=g) < p["rate"]).float()
            w = torch.randn(C, C, 3, 3, generator=g) * 0.05
            m = torch.rand(w.shape, generator=g) < p["dens"]
            wm = w * m
            if kind == "conv":
                fmt, packed = O.spike_conv2d_pack(w, m, 1, [1, 1], HW, HW, 0)
                base = (lambda x=x, wm=wm: F.conv2d(x, wm, None, 1, 1))
                ours = (lambda x=x, w=w, m=m, fmt=fmt, packed=packed:
                        O.spike_conv2d_fwd_packed(x, w, None, m, fmt, packed, [1, 1], [1, 1], [1, 1], 1, False, False))
                extra = f"format {fmt}"
            else:
                go = torch.randn(64, C, HW, HW, generator=g) * 0.01
                base = (lambda x=x, wm=wm, go=go: torch.ops.aten.convolution_backward(
                    go, x, wm, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False]))
                ours = (lambda x=x, w=w, m=m, go=go:
                        O.spike_conv2d_bwd(go, x, w, m, [1, 1], [1, 1], [1, 1], 1, False, True, False))
                extra = "weight grad only"
        elif kind == "linear":
            x = (torch.rand(p["N"], p["K"], generator=g) < p["rate"]).float()
            w = torch.randn(p["M"], p["K"], generator=g) * 0.05
            m = torch.rand(w.shape, generator=g) < p["dens"]
            wm = w * m
            fmt, packed = O.spike_linear_pack(w, m, 0)
            base = (lambda x=x, wm=wm: F.linear(x, wm))
            ours = (lambda x=x, w=w, m=m, fmt=fmt, packed=packed:
                    O.spike_linear_fwd_packed(x, w, None, m, fmt, packed, False, False))
            extra = f"format {fmt}"
        else:
            xl = torch.randn(p["T"], p["N"], generator=g) * 0.8 + 0.6
            v0 = torch.zeros(p["N"])
            gs = torch.randn(p["T"], p["N"], generator=g)

            # Baseline: a copy of the bytes the fused kernels must move (forward reads x, writes s and
            # h; backward reads grad_s and h, writes grad_x: 3 reads + 3 writes of [T, N] fp32), so
            # "vs baseline" is the fraction of copy bandwidth reached. (SpikingJelly's LIFNode, the
            # issue-3 baseline, took 0.4-1.8 s per call on this loaded 2-core box: too long to repeat.)
            src = torch.ones(3 * p["T"] * p["N"])
            dst = torch.empty_like(src)

            def base(src=src, dst=dst):
                dst.copy_(src)

            def ours(xl=xl, v0=v0, gs=gs):
                s, v, h = O.lif_fwd(xl, v0, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0, True)
                O.lif_bwd(gs, None, None, h, 2.0, 1.0, 0.0, True, False, "sigmoid", 4.0)
            extra = "fwd saves h"
        calls.append((name, extra, base, ours))

    out = {"isa": O.cpu_isa(), "compiled": O.cpu_isa_compiled() if hasattr(O, "cpu_isa_compiled") else "(old build)",
           "load_before": os.getloadavg()[0], "cases": {}}
    for name, extra, base, ours in calls:
        base(), ours()  # warm-up (allocator, page faults, packing of nothing)
        tb, to = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            base()
            t1 = time.perf_counter()
            ours()
            t2 = time.perf_counter()
            tb.append(t1 - t0)
            to.append(t2 - t1)
        out["cases"][name] = {"extra": extra, "base": tb, "ours": to}
    out["load_after"] = os.getloadavg()[0]
    print("ISA_COMPARE_JSON " + json.dumps(out))


# ------------------------------------------------------------------------------------------ parent
def _quantile(xs, q):
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _run_worker(label, tree, isa, reps, threads):
    env = dict(os.environ)
    env.pop("SNNSPARSE_CPU_ISA", None)
    if isa:
        env["SNNSPARSE_CPU_ISA"] = isa
    env["PYTHONPATH"] = tree
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--reps", str(reps), "--threads",
                        str(threads)], env=env, capture_output=True, text=True, cwd=tree, timeout=600)
    for line in p.stdout.splitlines():
        if line.startswith("ISA_COMPARE_JSON "):
            return json.loads(line.split(" ", 1)[1])
    raise SystemExit(f"worker {label} failed (rc {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variants", default="avx512,avx2,generic",
                    help="variants of this build to force with SNNSPARSE_CPU_ISA (default: all three; the first "
                         "is the reference column)")
    ap.add_argument("--other", action="append", default=[],
                    help="LABEL=TREE: also time the build in source tree TREE (its snnsparse/_C*.so), default "
                         "variant selection")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write all samples here")
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.reps, args.threads)
        return 0

    configs = [(v, ROOT, v) for v in args.variants.split(",") if v]
    for o in args.other:
        label, _, tree = o.partition("=")
        configs.append((label, os.path.abspath(tree), None))
    samples = {c[0]: {} for c in configs}
    meta = {c[0]: [] for c in configs}
    t_start = time.time()
    load0 = os.getloadavg()
    for r in range(args.rounds):
        order = configs[r % len(configs):] + configs[:r % len(configs)]
        for label, tree, isa in order:
            res = _run_worker(label, tree, isa, args.reps, args.threads)
            meta[label].append({k: res[k] for k in ("isa", "compiled", "load_before", "load_after")})
            for name, d in res["cases"].items():
                s = samples[label].setdefault(name, {"extra": d["extra"], "base": [], "ours": []})
                s["base"] += d["base"]
                s["ours"] += d["ours"]
        print(f"round {r + 1}/{args.rounds} done, {time.time() - t_start:.0f} s, load {os.getloadavg()[0]:.2f}",
              file=sys.stderr)
    load1 = os.getloadavg()

    import torch
    print(f"device: {_cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}; threads {args.threads}; "
          f"{args.rounds} rounds x {args.reps} reps = {args.rounds * args.reps} samples per case per variant; "
          f"load average {load0[0]:.2f} before, {load1[0]:.2f} after ({time.time() - t_start:.0f} s)")
    for label, _, _ in configs:
        m = meta[label]
        print(f"  {label}: selected {m[0]['isa']}, compiled {m[0]['compiled']}, worker load "
              f"{min(x['load_before'] for x in m):.2f}-{max(x['load_after'] for x in m):.2f}")
    ref = configs[0][0]
    print(f"\n| case | variant | format | baseline median ms | ours median ms (p20-p80) | vs baseline | ours / {ref} |")
    print("|---|---|---|---|---|---|---|")
    for name, _, _ in CASES:
        r_med = statistics.median(samples[ref][name]["ours"])
        for label, _, _ in configs:
            s = samples[label][name]
            b, o = statistics.median(s["base"]), statistics.median(s["ours"])
            print(f"| {name} | {label} | {s['extra']} | {1e3 * b:.2f} | {1e3 * o:.2f} "
                  f"({1e3 * _quantile(s['ours'], 0.2):.2f}-{1e3 * _quantile(s['ours'], 0.8):.2f}) | "
                  f"{b / o:.2f}x | {o / r_med:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": samples, "meta": meta, "load": [load0, load1]}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
