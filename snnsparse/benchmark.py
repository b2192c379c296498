"""Speed sweeps of the snnsparse spike ops against torch dense, on any backend.

    python bench/sweep.py                       # quick sweep, cpp backend -> bench/out/sweep_*.csv/png
    python bench/sweep.py --backends cpp,triton --full
    python bench/sweep.py --targets             # the issue-3 target table (CPU, 2 threads)

Library use (the `snnsparse bench` CLI reuses these):
    rows = run_sweep(["cpp"], quick=True, out_dir="bench/out")   # list of row dicts, also written as CSV
    plot(rows, "bench/out/sweep.png")                             # speedup vs spike rate x density

Every number is a ratio of medians measured in the same process, baseline and candidate
interleaved call by call (so a load change hits both), with the p20/p80 spread kept.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

import snnsparse as ss

DEFAULT_OUT = os.path.join("bench", "out")

# Sweep grid: spike rate x weight density (combined density = rate x density).
QUICK_RATES = (0.02, 0.05, 0.1, 0.2, 0.4)
QUICK_DENSITIES = (1.0, 0.5, 0.2, 0.1, 0.05, 0.01)
FULL_RATES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
FULL_DENSITIES = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)

# (name, kind, shape dict). conv: T, B, Cin=Cout, H=W, k=3, pad=1. linear: N rows, K -> M.
QUICK_SHAPES = [
    ("conv256@16", "conv", dict(T=4, B=4, C=256, HW=16)),
    ("conv128@32", "conv", dict(T=4, B=4, C=128, HW=32)),
    ("linear4096", "linear", dict(N=64, K=4096, M=4096)),
]
FULL_SHAPES = [
    ("conv256@16", "conv", dict(T=4, B=16, C=256, HW=16)),
    ("conv128@32", "conv", dict(T=4, B=16, C=128, HW=32)),
    ("conv64@32", "conv", dict(T=4, B=16, C=64, HW=32)),
    ("linear4096", "linear", dict(N=64, K=4096, M=4096)),
    ("linear1024", "linear", dict(N=256, K=1024, M=1024)),
]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fns: Sequence[Callable[[], object]], reps: int = 7, warmup: int = 1, device=torch.device("cpu"),
          min_time: float = 0.0) -> List[List[float]]:
    """Interleaved timings (seconds) of each fn: reps rounds of fn0, fn1, ..."""
    for _ in range(warmup):
        for f in fns:
            f()
    sync(device)
    out = [[] for _ in fns]
    t_start = time.perf_counter()
    r = 0
    while r < reps or (time.perf_counter() - t_start < min_time and r < 5 * reps):
        for i, f in enumerate(fns):
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            out[i].append(time.perf_counter() - t0)
        r += 1
    return out


def quantile(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(ts):
    return dict(median_ms=1e3 * statistics.median(ts), p20_ms=1e3 * quantile(ts, 0.2), p80_ms=1e3 * quantile(ts, 0.8),
                n=len(ts))


def _inputs(kind, shape, rate, density, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "conv":
        T, B, C, HW = shape["T"], shape["B"], shape["C"], shape["HW"]
        x = (torch.rand(T * B, C, HW, HW, generator=g) < rate).to(dtype)
        w = torch.randn(C, C, 3, 3, generator=g).to(dtype) * 0.05
        m = torch.rand(w.shape, generator=g) < density
    else:
        x = (torch.rand(shape["N"], shape["K"], generator=g) < rate).to(dtype)
        w = torch.randn(shape["M"], shape["K"], generator=g).to(dtype) * 0.05
        m = torch.rand(w.shape, generator=g) < density
    return x.to(device), w.to(device), m.to(device)


def packed_call(kind, x, w, m):
    """The cpp kernel on weights packed once (a PackedWeight snapshot), as a deployed (optimized) model
    runs it: the sweeps time the kernel, not the per-call packing of a plain module (timed apart in
    run_targets)."""
    from snnsparse.ops import conv2d as _conv2d
    from snnsparse.ops import linear as _linear
    if kind == "conv":
        p = _conv2d.pack(w, m, 1, stride=(1, 1), in_width=x.shape[-1], out_width=x.shape[-1])
        return lambda: _conv2d.forward_packed(x, p, None, (1, 1), (1, 1), (1, 1))[0]
    p = _linear.pack(w, m)
    return lambda: _linear.forward_packed(x, p)[0]


def _calls(kind, x, w, m, backend):
    wm = w * m
    if kind == "conv":
        dense = lambda: F.conv2d(x, wm, None, 1, 1)  # noqa: E731
        ours = lambda: ss.functional.spike_conv2d(x, w, None, 1, 1, mask=m, backend=backend)  # noqa: E731
    else:
        dense = lambda: F.linear(x, wm)  # noqa: E731
        ours = lambda: ss.functional.spike_linear(x, w, mask=m, backend=backend)  # noqa: E731
    if backend == "cpp":
        ours = packed_call(kind, x, w, m)
    return dense, ours


def append_csv(path: str, row: dict) -> None:
    """Append one result row to a CSV file (header written when the file is new)."""
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def device_info(device=torch.device("cpu")) -> Dict[str, str]:
    info = {"torch": torch.__version__, "threads": str(torch.get_num_threads()), "python": platform.python_version()}
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
    else:
        model = platform.processor()
        try:
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
                if line.startswith("Model name"):
                    model = line.split(":", 1)[1].strip()
        except OSError:
            pass
        info["device"] = model or "cpu"
        from . import _ext
        from .ops import cpp as _cpp
        # The kernel variant that ran (SNNSPARSE_CPU_ISA can force one) and how the build was made.
        info["cpu_isa"] = _cpp.cpu_isa()
        info["cpu_isa_compiled"] = _ext.cpu_isa_compiled()
        info["march"] = _ext.cpu_march() or "portable"
    try:
        info["load"] = "%.2f" % os.getloadavg()[0]
    except OSError:
        pass
    return info


def run_sweep(backends: Sequence[str] = ("cpp",), quick: bool = True, out_dir: Optional[str] = DEFAULT_OUT,
              device: Optional[str] = None, reps: Optional[int] = None, shapes=None, rates=None,
              densities=None, threads: Optional[int] = None, verbose: bool = True) -> List[Dict[str, object]]:
    """Sweep spike rate x weight density for each shape and backend; returns a list of row dicts.

    Each row: backend, shape, kind, rate, density, combined, dense_ms, ours_ms (medians), p20/p80 of
    both, speedup (ratio of medians), device, torch, threads, load. Written to
    out_dir/sweep_<backends>.csv when out_dir is given.
    """
    dev = torch.device(device or ("cuda" if any(b in ("cuda", "triton") for b in backends) else "cpu"))
    if threads:
        torch.set_num_threads(threads)
    shapes = shapes or (QUICK_SHAPES if quick else FULL_SHAPES)
    rates = rates or (QUICK_RATES if quick else FULL_RATES)
    densities = densities or (QUICK_DENSITIES if quick else FULL_DENSITIES)
    reps = reps or (3 if quick else 7)
    info = device_info(dev)
    rows: List[Dict[str, object]] = []
    for backend in backends:
        avail = ss.backends.available().get(backend)
        if avail is not True:
            if verbose:
                print(f"[sweep] skipping backend {backend}: {avail}", file=sys.stderr)
            continue
        for name, kind, shape in shapes:
            for rate in rates:
                for density in densities:
                    x, w, m = _inputs(kind, shape, rate, density, dev)
                    dense, ours = _calls(kind, x, w, m, backend)
                    td, to = timed([dense, ours], reps=reps, device=dev)
                    sd, so = summary(td), summary(to)
                    row = dict(backend=backend, shape=name, kind=kind, rate=rate, density=density,
                               combined=rate * density, dense_ms=sd["median_ms"], dense_p20_ms=sd["p20_ms"],
                               dense_p80_ms=sd["p80_ms"], ours_ms=so["median_ms"], ours_p20_ms=so["p20_ms"],
                               ours_p80_ms=so["p80_ms"], speedup=sd["median_ms"] / so["median_ms"], reps=reps,
                               **info)
                    rows.append(row)
                    if verbose:
                        print(f"[sweep] {backend:8s} {name:12s} rate={rate:<5} density={density:<5} "
                              f"dense={sd['median_ms']:8.2f}ms ours={so['median_ms']:8.2f}ms "
                              f"x{row['speedup']:.2f}", file=sys.stderr)
    if out_dir and rows:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"sweep_{'_'.join(backends)}.csv")
        with open(path, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            wr.writeheader()
            wr.writerows(rows)
    return rows


def break_even(rows: Sequence[Dict[str, object]]) -> Dict[tuple, Optional[float]]:
    """(backend, shape) -> the combined density (rate x density) above which dense wins again
    (log-interpolated between the last winning and first losing point; None if never lost)."""
    import math

    out = {}
    keys = sorted({(r["backend"], r["shape"]) for r in rows})
    for key in keys:
        pts = sorted((float(r["combined"]), float(r["speedup"])) for r in rows if (r["backend"], r["shape"]) == key)
        lose = [c for c, s in pts if s < 1.0]
        if not lose:
            out[key] = None
            continue
        c_lose = min(lose)
        below = [p for p in pts if p[0] < c_lose and p[1] >= 1.0]
        if not below:
            out[key] = c_lose
            continue
        c_win, s_win = max(below)
        s_lose = dict(pts)[c_lose]
        t = (math.log(s_win)) / (math.log(s_win) - math.log(s_lose)) if s_win != s_lose else 0.5
        out[key] = math.exp(math.log(c_win) + t * (math.log(c_lose) - math.log(c_win)))
    return out


def plot(rows: Sequence[Dict[str, object]], path: str) -> str:
    """PNG: speedup vs combined density (spike rate x weight density), one panel per shape,
    one line per (backend, spike rate); the dense break-even (speedup 1) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.2 * len(shapes), 4.2), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        sub = [r for r in rows if r["shape"] == shape]
        for backend in dict.fromkeys(r["backend"] for r in sub):
            for rate in sorted({float(r["rate"]) for r in sub}):
                pts = sorted((float(r["combined"]), float(r["speedup"])) for r in sub
                             if r["backend"] == backend and float(r["rate"]) == rate)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3,
                        label=f"{backend} rate {rate:g}")
        ax.axhline(1.0, color="k", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("spike rate x weight density")
        ax.set_ylabel("speedup vs torch dense (ratio of medians)")
        dev = sub[0].get("device", "") if sub else ""
        ax.set_title(f"{shape}\n{dev}, {sub[0].get('threads', '?')} threads" if sub else shape, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------
# issue 3 target table (CPU, cpp backend)
# ------------------------------------------------------------------------------------------------
def _sj_lif():
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.LIFNode(tau=2.0, surrogate_function=surrogate.Sigmoid(), step_mode="m")


def copy_bandwidth_gbs(nbytes=256 << 20, reps=5) -> float:
    """Machine copy bandwidth (GB/s, read+write counted) with a preallocated destination."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        ts.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(ts) / 1e9


def run_targets(reps: int = 9, threads: int = 2, out_dir: Optional[str] = DEFAULT_OUT, verbose=True):
    """The issue-3 target rows; returns row dicts (and writes out_dir/targets_cpu.csv). "ours" is the
    kernel on weights packed once (packed_call); the functional rows include per-call packing."""
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    info = device_info(cpu)
    rows = []

    def add(name, goal, base_name, tb, to, extra=None):
        sb, so = summary(tb), summary(to)
        row = dict(case=name, baseline=base_name, goal=goal, base_ms=sb["median_ms"], base_p20=sb["p20_ms"],
                   base_p80=sb["p80_ms"], ours_ms=so["median_ms"], ours_p20=so["p20_ms"], ours_p80=so["p80_ms"],
                   ratio=sb["median_ms"] / so["median_ms"], reps=len(to), load_before=info.get("load"),
                   load_after="%.2f" % os.getloadavg()[0], **(extra or {}))
        rows.append(row)
        if verbose:
            print(f"[targets] {name:44s} vs {base_name:16s} base={row['base_ms']:8.2f}ms "
                  f"ours={row['ours_ms']:8.2f}ms ({row['ours_p20']:.2f}-{row['ours_p80']:.2f}) "
                  f"x{row['ratio']:.2f} (goal {goal}) load {row['load_after']}", file=sys.stderr)

    for C, HW, rate, dens, goal in ((256, 16, 0.1, 1.0, 2.5), (256, 16, 0.1, 0.1, 5), (128, 32, 0.1, 0.01, 20),
                                    (128, 32, 0.05, 0.01, 30)):
        x, w, m = _inputs("conv", dict(T=4, B=16, C=C, HW=HW), rate, dens, cpu)
        dense, ours = _calls("conv", x, w, m, "cpp")
        per_call = lambda: ss.functional.spike_conv2d(x, w, None, 1, 1, mask=m, backend="cpp")  # noqa: E731
        ours_bool = packed_call("conv", x.bool(), w, m)  # the spikes a neuron writes as bytes: 1/4 of the reads
        tb, to, tp, tbool = timed([dense, ours, per_call, ours_bool], reps=reps)
        add(f"conv {C}@{HW}x{HW} T4 B16 rate {rate} dens {dens}", f">={goal}x", "F.conv2d", tb, to)
        add("  same, functional call (packs per call)", f">={goal}x", "F.conv2d", tb, tp)
        add("  same, bool spikes (read as bytes)", f">={goal}x", "F.conv2d", tb, tbool)
    x, w, m = _inputs("linear", dict(N=64, K=4096, M=4096), 0.1, 0.1, cpu)
    dense, ours = _calls("linear", x, w, m, "cpp")
    wcsr = (w * m).to_sparse_csr()
    xt = x.t().contiguous()
    csr = lambda: torch.sparse.mm(wcsr, xt)  # noqa: E731
    per_call = lambda: ss.functional.spike_linear(x, w, mask=m, backend="cpp")  # noqa: E731
    ours_bool = packed_call("linear", x.bool(), w, m)
    tb, to, tc, tp, tbool = timed([dense, ours, csr, per_call, ours_bool], reps=reps)
    add("linear 4096x4096 N64 rate 0.1 dens 0.1", ">=15x", "F.linear", tb, to)
    add("linear 4096x4096 N64 rate 0.1 dens 0.1", ">=5x", "torch.sparse CSR", tc, to)
    add("  same, functional call (packs per call)", ">=15x", "F.linear", tb, tp)
    add("  same, functional call (packs per call)", ">=5x", "torch.sparse CSR", tc, tp)
    add("  same, bool spikes (read as bytes)", ">=15x", "F.linear", tb, tbool)

    # LIF forward + backward, [8, 64, 16384], vs SpikingJelly 2.0 LIFNode(step_mode="m") (torch backend).
    xl = (torch.randn(8, 64, 16384) * 0.8 + 0.6).requires_grad_()
    gl = torch.randn_like(xl)
    try:
        sj = _sj_lif()

        def sj_step():
            sj.reset()
            xl.grad = None
            s = sj(xl)
            s.backward(gl)
    except Exception as e:  # pragma: no cover
        sj_step = None
        print(f"[targets] spikingjelly unavailable: {e}", file=sys.stderr)

    def ours_step():
        xl.grad = None
        s, _ = ss.functional.lif(xl, backend="cpp")
        s.backward(gl)

    def ours_fwd():
        with torch.no_grad():
            ss.functional.lif(xl, backend="cpp")

    tb, to, tf = timed([sj_step, ours_step, ours_fwd], reps=max(3, reps // 2))
    bw = copy_bandwidth_gbs()
    # Bytes the fused kernels must move: fwd reads x, writes s and h; bwd reads grad_s, h, writes grad_x.
    nbytes = xl.numel() * 4 * (3 + 3)
    t_med = statistics.median(to)
    add("lif fwd+bwd [8,64,16384] sigmoid", ">=5x", "SpikingJelly LIFNode", tb, to,
        dict(copy_gbs=round(bw, 1), achieved_gbs=round(nbytes / t_med / 1e9, 1),
             frac_copy_bw=round(nbytes / t_med / 1e9 / bw, 2)))

    # Training step (forward + backward, weight and input grads) of a spike conv, rate .1 / density .1.
    x, w, m = _inputs("conv", dict(T=4, B=16, C=256, HW=16), 0.1, 0.1, cpu)
    wd = w.clone().requires_grad_()
    wo = w.clone().requires_grad_()
    xd = x.clone().requires_grad_()
    xo = x.clone().requires_grad_()
    go = torch.randn(64, 256, 16, 16) * 0.01

    def dense_train():
        xd.grad = wd.grad = None
        y = F.conv2d(xd, wd * m, None, 1, 1)
        y.backward(go)

    def ours_train():
        xo.grad = wo.grad = None
        y = ss.functional.spike_conv2d(xo, wo, None, 1, 1, mask=m, backend="cpp")
        y.backward(go)

    tb, to = timed([dense_train, ours_train], reps=max(3, reps // 2))
    add("train step conv 256@16 T4 B16 rate 0.1 dens 0.1", ">=2x", "F.conv2d fwd+bwd", tb, to)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "targets_cpu.csv"), "w", newline="") as f:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            wr = csv.DictWriter(f, fieldnames=keys)
            wr.writeheader()
            wr.writerows(rows)
    return rows, info


def backend_list(text: str) -> str:
    """argparse type of --backends: "auto" or comma-separated backend names (unavailable ones are
    skipped by the sweep, with the reason)."""
    unknown = [b for b in text.split(",") if b not in ss.backends.NAMES]
    if text != "auto" and unknown:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {unknown}; choose from auto or a comma-separated "
                                         f"list of {', '.join(ss.backends.NAMES)}")
    return text


def add_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from .cli import positive_int, writable_dir
    ap.add_argument("--backends", type=backend_list, default="auto",
                    help="comma-separated backends to sweep (default: every one that runs here on CPU tensors)")
    ap.add_argument("--full", action="store_true", help="the whole grid (default: a quick sweep)")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--out", type=writable_dir, default=DEFAULT_OUT,
                    help="folder for the CSV and PNG (default bench/out)")
    ap.add_argument("--targets", action="store_true", help="measure the issue-3 CPU target table")
    ap.add_argument("--reps", type=positive_int, default=None)
    return ap


def main(args=None):
    """`snnsparse bench` / `python bench/sweep.py`: args is an argparse Namespace or an argv list."""
    if not isinstance(args, argparse.Namespace):
        args = add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0])).parse_args(args)
    if args.backends == "auto":
        av = ss.backends.available()
        args.backends = ",".join(b for b in ("cpp", "cuda", "triton") if av[b] is True) or "reference"
    torch.set_num_threads(args.threads)
    if args.targets:
        run_targets(reps=args.reps or 9, threads=args.threads, out_dir=args.out)
        return
    backends = args.backends.split(",")
    rows = run_sweep(backends, quick=not args.full, out_dir=args.out, reps=args.reps, threads=args.threads)
    if not rows:
        print("snnsparse bench: no backend could run", file=sys.stderr)
        return 1
    print(f"{'backend':8s} {'shape':12s} {'rate':>5s} {'density':>7s} {'dense ms':>9s} {'ours ms':>9s} "
          f"{'p20-p80 ms':>15s} {'speedup':>7s}")
    for r in rows:
        print(f"{r['backend']:8s} {r['shape']:12s} {r['rate']:5.2f} {r['density']:7.2f} {r['dense_ms']:9.2f} "
              f"{r['ours_ms']:9.2f} {r['ours_p20_ms']:7.2f}-{r['ours_p80_ms']:<7.2f} {r['speedup']:7.2f}x")
    info = {k: rows[0][k] for k in rows[0] if k in ("device", "cpu", "torch", "threads", "load")}
    print("measured on: " + ", ".join(f"{k}={v}" for k, v in info.items()) + "; dense = torch F.conv2d/F.linear "
          "with the masked weight, same process; ratio of medians")
    if rows:
        png = plot(rows, os.path.join(args.out, f"sweep_{'_'.join(backends)}.png"))
        print(f"wrote {os.path.join(args.out, 'sweep_' + '_'.join(backends) + '.csv')} and {png}")
        for (be, shape), c in break_even(rows).items():
            print(f"break-even {be} {shape}: combined density {c if c is None else round(c, 4)}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
