"""GPU benchmarks of snnsparse's GPU backends against cuDNN/cuBLAS and SpikingJelly 2.0 (issue 4).

Runs every GPU backend that ss.backends.available() reports ("triton", "cuda") on the issue's
shapes, in one process, against:
  - cuDNN / cuBLAS: fp32 (TF32 off), TF32, bf16 (conv: channels_last);
  - SpikingJelly 2.0's Triton LIF (SJ_LIF_CUDA_IMPLEMENTATION=triton) and
    sparse_linear(strategy="sparse") when its native CUDA extension is importable (without it,
    SpikingJelly silently runs a torch reference, so that row is marked and not compared).
Cases:
  lif     LIF forward+backward, [T=32, 64, 65536], fp16 (and fp32); HBM roofline from the bytes
          that must move (x, s, grad_s, h, grad_x: 5 x 2 bytes per element) over the copy
          bandwidth measured here.
  conv    spike_conv2d 3x3 pad 1, T=4, B=32, 256 -> 256 @ 16x16, spike rate 0.10, mask density 0.10.
  linear  spike_linear on SpikingJelly's grid: M=K=N in {1024, 2048, 4096}, spike density 2-20%
          (x [M, K], weight [N, K], no mask: SpikingJelly's kernel has none).
The spike layers are timed at the backend op (ss.backends.get(name).spike_*), i.e. without
snnsparse.functional's input validation (its binary check reads the input and syncs the host).
Timing: triton.testing.do_bench (CUDA events, L2 flushed between runs), median and p20/p80 in ms.
Every implementation's output is checked against a float64 (linear/conv) or same-dtype torch
(LIF) reference first; the relative error is written with the timing.

Output: a table on stdout, CSV rows (one per measurement) to --csv, a markdown table to --md.
    python bench/bench_gpu.py --csv out.csv --md out.md [--cases lif,conv,linear] [--quick]
--smoke runs tiny shapes on CPU under TRITON_INTERPRET=1 (checks this script, measures nothing).
"""
from __future__ import annotations

import argparse
import csv
import importlib
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import sys
import time

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("SJ_LIF_CUDA_IMPLEMENTATION", "triton")  # SpikingJelly's Triton LIF, not its CUDA one

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snnsparse as ss  # noqa: E402

DEV = torch.device("cpu" if SMOKE else "cuda")
ROWS: list = []


# ----------------------------------------------------------------------------------------- helpers

def versions() -> dict:
    import triton
    v = dict(device=("cpu (smoke)" if SMOKE else torch.cuda.get_device_name(0)), torch=torch.__version__,
             triton=triton.__version__, cuda=str(torch.version.cuda), python=platform.python_version())
    try:
        import spikingjelly
        v["spikingjelly"] = getattr(spikingjelly, "__version__", None) or importlib.metadata.version("spikingjelly")
    except Exception as e:  # noqa: BLE001
        v["spikingjelly"] = f"missing ({type(e).__name__})"
    try:
        v["snnsparse"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "?"
    except OSError:
        v["snnsparse"] = "?"
    return v


def bench(fn, quick=False):
    """(median, p20, p80) in ms."""
    if SMOKE:
        fn()
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts), min(ts), max(ts)
    from triton.testing import do_bench
    r = do_bench(fn, warmup=10 if quick else 25, rep=40 if quick else 100, quantiles=[0.5, 0.2, 0.8])
    return tuple(r)


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def record(case, impl, dtype, shape, rate, density, t, err, note="", **extra):
    row = dict(case=case, impl=impl, dtype=str(dtype).replace("torch.", ""), shape=shape, rate=rate,
               density=density, median_ms=round(t[0], 5), p20_ms=round(t[1], 5), p80_ms=round(t[2], 5),
               rel_err=(f"{err:.2e}" if err is not None else ""), note=note)
    row.update(extra)
    ROWS.append(row)
    print(f"  {case:7s} {impl:34s} {row['dtype']:8s} {shape:28s} rate={rate!s:5s} dens={density!s:5s} "
          f"median {t[0]:9.4f} ms  [{t[1]:.4f}, {t[2]:.4f}]  err {row['rel_err']:9s} {note}", flush=True)
    return t[0]


SWEEP = {  # --sweep: Triton tile sizes (and zero-tile skipping) tried besides the defaults
    "LINEAR": [("32,128,64", "1"), ("64,128,64", "1"), ("16,128,64", "1"), ("32,64,64", "1"), ("64,256,64", "1")],
    "CONV": [("64,128,64", "1"), ("64,128,64", "0"), ("128,128,64", "0"), ("128,64,64", "0"), ("64,256,64", "0")],
}


def triton_variants(kind, sweep):
    """[(label, env)] for the triton backend: the defaults, then the sweep."""
    out = [("", {})]
    if sweep:
        for tiles, skip in SWEEP[kind]:
            out.append((f" tiles={tiles} skip={skip}", {f"SNNSPARSE_TRITON_{kind}_TILES": tiles,
                                                         "SNNSPARSE_TRITON_SKIP_ZERO_TILES": skip}))
    return out


class env_set:
    def __init__(self, env):
        self.env, self.old = env, {}

    def __enter__(self):
        for k, v in self.env.items():
            self.old[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def gpu_backends():
    av = ss.backends.available()
    out = [b for b in ("triton", "cuda") if av.get(b) is True]
    for b in ("triton", "cuda"):
        if av.get(b) is not True:
            print(f"# backend {b} unavailable: {av.get(b)}")
    return out


def copy_bandwidth():
    """Device-to-device copy, bytes read + written per second (the HBM ceiling used for rooflines)."""
    n = (1 << 28) if not SMOKE else (1 << 16)
    a = torch.empty(n, dtype=torch.float32, device=DEV)
    b = torch.empty_like(a)
    t = bench(lambda: b.copy_(a))[0]
    return 2 * a.numel() * 4 / (t * 1e-3)


def sj_lif_node():
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except ImportError as e:
        return None, f"spikingjelly not importable ({e})"
    node = neuron.LIFNode(tau=2.0, v_threshold=1.0, v_reset=0.0, surrogate_function=surrogate.Sigmoid(alpha=4.0),
                          detach_reset=False, step_mode="m")
    return node, ""


def sj_lif_impl_name():
    try:
        sel = importlib.import_module("spikingjelly._ops.lif")._selection
        return sel._get_cuda_selection(torch.device("cuda", torch.cuda.current_device())).name
    except Exception as e:  # noqa: BLE001
        return f"unknown ({type(e).__name__})"


def sj_sparse_linear():
    """(fn, note): SpikingJelly's sparse_linear and whether its native CUDA kernel is built."""
    try:
        from spikingjelly.activation_based.functional.spike import sparse_linear
        from spikingjelly._ops.native_loader import _native_available
    except ImportError as e:
        return None, f"spikingjelly not importable ({e})"
    native = (not SMOKE) and _native_available("spikingjelly._ops.spike_linear", DEV.index or 0)
    return sparse_linear, ("" if native else "SJ native CUDA extension not built: torch reference path")


# ----------------------------------------------------------------------------------------- cases

def case_lif(backends, quick, bw):
    t_, b_, n_ = (32, 64, 65536) if not SMOKE else (4, 2, 64)
    shape = f"[{t_},{b_},{n_}]"
    node, sj_note = sj_lif_node()
    for dtype in (torch.float16, torch.float32):
        g = torch.Generator(device=DEV).manual_seed(0)
        x = (torch.randn((t_, b_, n_), device=DEV, generator=g, dtype=torch.float32) * 1.5).to(dtype)
        gs = torch.randn(x.shape, device=DEV, generator=g, dtype=torch.float32).to(dtype)
        elem = x.numel()
        min_bytes = 5 * elem * x.element_size()  # x, s, grad_s, h (or x again), grad_x
        floor_ms = min_bytes / bw * 1e3
        xr = x.clone().requires_grad_()
        ref_s, _ = ss.functional.lif(xr, backend="reference")
        ref_s.backward(gs)
        ref_gx = xr.grad.clone()

        def run(fn):
            xr.grad = None
            s = fn(xr)
            s.backward(gs)
            return s

        impls = [(f"snnsparse[{b}]", _lif_fn(b)) for b in backends]
        if node is not None and dtype in (torch.float16, torch.float32) and not SMOKE:
            def sj(z):
                node.reset()
                return node(z)
            impls.append((f"spikingjelly LIFNode[{sj_lif_impl_name()}]", sj))
        base = None
        for name, fn in impls:
            try:
                s = run(fn)
                err = max(rel_err(s, ref_s), rel_err(xr.grad, ref_gx))
                t = bench(lambda: run(fn), quick)
            except Exception as e:  # noqa: BLE001
                print(f"  lif {name} {dtype} FAILED: {type(e).__name__}: {e}")
                continue
            frac = floor_ms / t[0]
            ms = record("lif", name, dtype, shape, "", "", t, err,
                        note=f"HBM floor {floor_ms:.3f} ms ({min_bytes / 1e9:.2f} GB at {bw / 1e12:.2f} TB/s): "
                             f"{100 * frac:.0f}% of roofline", roofline_frac=round(frac, 3))
            if name.startswith("spikingjelly"):
                base = ms
        if base:
            for r in ROWS:
                if r["case"] == "lif" and r["dtype"] == str(dtype).replace("torch.", "") and r["impl"].startswith("snn"):
                    r["speedup_vs_sj"] = round(base / r["median_ms"], 3)
    if node is None:
        print(f"  lif: SpikingJelly baseline skipped: {sj_note}")


def _lif_fn(backend):
    return lambda z: ss.functional.lif(z, backend=backend)[0]


def case_conv(backends, quick, sweep):
    t_, b_, c, hw = (4, 32, 256, 16) if not SMOKE else (1, 2, 8, 6)
    rate, density = 0.10, 0.10
    shape = f"T{t_} B{b_} {c}->{c} @{hw}x{hw} 3x3"
    g = torch.Generator(device=DEV).manual_seed(1)
    s = (torch.rand((t_ * b_, c, hw, hw), device=DEV, generator=g) < rate).float()
    w = torch.randn((c, c, 3, 3), device=DEV, generator=g) * 0.05
    mask = torch.rand(w.shape, device=DEV, generator=g) < density
    wm = w * mask
    ref = F.conv2d(s.double(), wm.double(), None, 1, 1)
    base = {}

    def cudnn(dtype, tf32=False, channels_last=False):
        xs, ws = s.to(dtype), wm.to(dtype)
        if channels_last:
            xs, ws = xs.contiguous(memory_format=torch.channels_last), ws.contiguous(memory_format=torch.channels_last)

        def f():
            old = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = tf32
            try:
                return F.conv2d(xs, ws, None, 1, 1)
            finally:
                torch.backends.cudnn.allow_tf32 = old
        return f

    for name, dtype, kw in (("cuDNN fp32", torch.float32, {}), ("cuDNN tf32", torch.float32, dict(tf32=True)),
                            ("cuDNN bf16 channels_last", torch.bfloat16, dict(channels_last=True)),
                            ("cuDNN fp16 channels_last", torch.float16, dict(channels_last=True))):
        f = cudnn(dtype, **kw)
        base[name] = record("conv", name, dtype, shape, rate, density, bench(f, quick), rel_err(f(), ref))
    for b, (label, env) in [(b, v) for b in backends for v in (triton_variants("CONV", sweep) if b == "triton"
                                                                 else [("", {})])]:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            xs, ws = s.to(dtype), w.to(dtype)
            op = ss.backends.get(b).spike_conv2d
            f = (lambda xs_=xs, ws_=ws, op_=op: op_(xs_, ws_, None, mask, (1, 1), (1, 1), (1, 1), 1)[0])
            try:
                with env_set(env):
                    err = rel_err(f(), ref)
                    t = bench(f, quick)
            except Exception as e:  # noqa: BLE001
                print(f"  conv {b}{label} {dtype} FAILED: {type(e).__name__}: {e}")
                continue
            ms = record("conv", f"snnsparse[{b}]{label}", dtype, shape, rate, density, t, err,
                        note=f"x{base['cuDNN bf16 channels_last'] / t[0]:.2f} vs cuDNN bf16, "
                             f"x{base['cuDNN fp32'] / t[0]:.2f} vs cuDNN fp32")
            ROWS[-1]["speedup_vs_cudnn_bf16"] = round(base["cuDNN bf16 channels_last"] / ms, 3)
            ROWS[-1]["speedup_vs_cudnn_fp32"] = round(base["cuDNN fp32"] / ms, 3)


def case_linear(backends, quick, sweep):
    sizes = (1024, 2048, 4096) if not SMOKE else (64,)
    rates = (0.02, 0.05, 0.10, 0.20) if not quick else (0.02, 0.20)
    sj, sj_note = sj_sparse_linear()
    for n in sizes:
        for rate in rates:
            shape = f"M=K=N={n}"
            g = torch.Generator(device=DEV).manual_seed(n + int(rate * 100))
            x = (torch.rand((n, n), device=DEV, generator=g) < rate).float()
            w = torch.randn((n, n), device=DEV, generator=g) / math.sqrt(n)
            ref = x.double() @ w.double().t()
            for dtype in (torch.float16, torch.float32):
                xs, ws = x.to(dtype), w.to(dtype)
                times = {}
                impls = []
                if dtype == torch.float32:
                    impls += [("cuBLAS fp32", lambda: _linear_tf32(xs, ws, False)),
                              ("cuBLAS tf32", lambda: _linear_tf32(xs, ws, True)),
                              ("cuBLAS bf16", (lambda xb=x.bfloat16(), wb=w.bfloat16(): F.linear(xb, wb)))]
                else:
                    impls += [("cuBLAS fp16", lambda: F.linear(xs, ws))]
                if sj is not None and not SMOKE:
                    impls.append(("spikingjelly sparse_linear[sparse]", lambda: sj(xs, ws, None, strategy="sparse")))
                for b in backends:
                    op = ss.backends.get(b).spike_linear
                    for label, env in (triton_variants("LINEAR", sweep) if b == "triton" else [("", {})]):
                        impls.append((f"snnsparse[{b}]{label}", (lambda op_=op: op_(xs, ws, None, None)[0]), env))
                for name, f, *env in impls:
                    try:
                        with env_set(env[0] if env else {}):
                            err = rel_err(f(), ref)
                            t = bench(f, quick)
                    except Exception as e:  # noqa: BLE001
                        print(f"  linear {name} {dtype} FAILED: {type(e).__name__}: {e}")
                        continue
                    note = sj_note if name.startswith("spikingjelly") else ""
                    times[name] = record("linear", name, dtype, shape, rate, "", t, err, note=note)
                sj_t = times.get("spikingjelly sparse_linear[sparse]") if not sj_note else None
                dense = [v for k, v in times.items() if k.startswith("cuBLAS")]
                for r in ROWS[-len(times):]:
                    if r["impl"].startswith("snnsparse"):
                        if sj_t:
                            r["speedup_vs_sj"] = round(sj_t / r["median_ms"], 3)
                        if dense:
                            r["speedup_vs_best_cublas"] = round(min(dense) / r["median_ms"], 3)


def _linear_tf32(x, w, tf32):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        return F.linear(x, w)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def profile_triton(out_path):
    """Per-kernel device time of one call of each Triton op (pack, compaction, GEMM, LIF...):
    where the time goes, for the next optimisation step. torch.profiler, CUDA activity."""
    from torch.profiler import ProfilerActivity, profile
    T = ss.backends.get("triton")
    g = torch.Generator(device=DEV).manual_seed(7)
    lin_x = (torch.rand((4096, 4096), device=DEV, generator=g) < 0.02).half()
    lin_w = torch.randn((4096, 4096), device=DEV, generator=g).half()
    conv_x = (torch.rand((128, 256, 16, 16), device=DEV, generator=g) < 0.1).half()
    conv_w = torch.randn((256, 256, 3, 3), device=DEV, generator=g).half()
    conv_m = torch.rand(conv_w.shape, device=DEV, generator=g) < 0.1
    lif_x = torch.randn((32, 64 * 65536), device=DEV, generator=g).half().requires_grad_()
    calls = {
        "linear 4096^3 fp16 rate 0.02": lambda: T.spike_linear(lin_x, lin_w, None, None),
        "conv 3x3 T4 B32 256@16 fp16 rate/density 0.1": lambda: T.spike_conv2d(conv_x, conv_w, None, conv_m, (1, 1),
                                                                               (1, 1), (1, 1), 1),
        "lif fwd+bwd [32, 4M] fp16": lambda: T.lif(lif_x, torch.zeros(lif_x.shape[1], device=DEV, dtype=lif_x.dtype),
                                                   2.0, 1.0, 0.0, True, False, "sigmoid", 4.0)[0].sum().backward(),
    }
    with open(out_path, "w") as fh:
        for name, fn in calls.items():
            fn()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)
            print(f"== profile: {name}\n{table}")
            fh.write(f"== profile: {name}\n{table}\n")


# ----------------------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", default="bench/out/bench_gpu.csv")
    ap.add_argument("--md", default="")
    ap.add_argument("--cases", default="lif,conv,linear")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and densities")
    ap.add_argument("--sweep", action="store_true", help="also try other Triton tile sizes / zero-tile skipping")
    ap.add_argument("--profile", default="", help="also write per-kernel device times of the Triton ops here")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET=1")
    args = ap.parse_args()
    if not SMOKE and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device; nothing measured (use --smoke to check the script on CPU)")
        return 0
    info = versions()
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    backends = gpu_backends() if not SMOKE else ["triton"]
    bw = copy_bandwidth()
    print(f"# device-to-device copy: {bw / 1e12:.3f} TB/s (read + write)")
    cases = args.cases.split(",")
    torch.manual_seed(0)
    for name, fn in (("lif", lambda: case_lif(backends, args.quick, bw)), ("conv", lambda: case_conv(backends, args.quick, args.sweep)),
                     ("linear", lambda: case_linear(backends, args.quick, args.sweep))):
        if name in cases:
            print(f"== {name}", flush=True)
            fn()
    if args.profile and "triton" in backends and not SMOKE:
        profile_triton(args.profile)
    keys = []
    for r in ROWS:
        r.update(info)
        r["copy_TBps"] = round(bw / 1e12, 3)
        keys += [k for k in r if k not in keys]
    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=keys)
        wr.writeheader()
        wr.writerows(ROWS)
    if args.md:
        cols = ["case", "impl", "dtype", "shape", "rate", "density", "median_ms", "p20_ms", "p80_ms", "rel_err",
                "speedup_vs_sj", "speedup_vs_cudnn_bf16", "speedup_vs_cudnn_fp32", "speedup_vs_best_cublas",
                "roofline_frac"]
        with open(args.md, "w") as fh:
            fh.write("Device: " + ", ".join(f"{k} {v}" for k, v in info.items()) +
                     f", copy {bw / 1e12:.3f} TB/s\n\n")
            fh.write("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
            for r in ROWS:
                fh.write("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n")
    print(f"# {len(ROWS)} rows -> {args.csv}" + (f", {args.md}" if args.md else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
