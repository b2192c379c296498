"""Peak resident memory of running a SpikingJelly zoo model: the original vs the optimized copy (issue
13's "peak RSS of the optimized model <= SpikingJelly's"), each in its own child process.

A child builds the model as bench/e2e_zoo.py does (same seed, masks, BN recalibration). For "ss" it
optimizes a masked copy, then drops every reference to the original and the copy. Both children then
collect garbage and call glibc's malloc_trim(0): memory freed by the preparation (BN calibration
passes, optimizing) stays in glibc's heap otherwise and counts as resident (spiking_resnet18's
optimized child: 803 MB before the trim, 489 MB after, nothing of the original alive). Then it resets
the kernel's peak-RSS mark (/proc/self/clear_refs, "5"), runs --reps forwards and reads VmHWM: the peak
resident memory of the process while it runs the model, Python, torch and SpikingJelly included (the
same in both). Linux only.

    .venv/bin/python bench/peak_rss.py [--models spiking_vgg11_bn,plif_cifar10net] [--reps 3]
"""
import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(name: str, which: str, reps: int, threads: int) -> dict:
    sys.path.insert(0, HERE)
    import e2e_zoo as Z
    import snnsparse as ss
    from spikingjelly.activation_based import functional as sjf

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model, masks = Z.prepare(Z._models()[name](), 0.05, gen)
    x = torch.rand(Z.T, Z.B, 3, Z.SIZE, Z.SIZE, generator=gen)
    if which == "ss":
        model = ss.nn.optimize_for_inference(Z.with_masks(model, masks), x)  # the original freed here
        run = model
    else:
        def run(inp):
            sjf.reset_net(model)
            return model(inp)
    del masks
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    state = Z.state_bytes(model)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS
    before = _status_kb("VmRSS")
    with torch.no_grad():
        for _ in range(reps):
            run(x)
    return dict(model=name, which=which, rss_before_mb=round(before / 1024, 1),
                peak_rss_mb=round(_status_kb("VmHWM") / 1024, 1), state_mb=round(state / 2**20, 1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="spiking_resnet18,sew_resnet18_add,sew_resnet18_iand,spiking_vgg11_bn,"
                                       "plif_cifar10net")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs=2, metavar=("MODEL", "WHICH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.reps, args.threads)))
        return
    for name in [n for n in args.models.split(",") if n]:
        rows = {}
        for which in ("sj", "ss"):
            out = subprocess.run([sys.executable, __file__, "--child", name, which, "--reps", str(args.reps),
                                  "--threads", str(args.threads)], check=True, capture_output=True, text=True)
            rows[which] = json.loads(out.stdout.strip().splitlines()[-1])
        sj, ours = rows["sj"], rows["ss"]
        print(f"model={name} sj_peak_rss_mb={sj['peak_rss_mb']} ss_peak_rss_mb={ours['peak_rss_mb']} "
              f"ratio={ours['peak_rss_mb'] / sj['peak_rss_mb']:.2f} sj_state_mb={sj['state_mb']} "
              f"ss_state_mb={ours['state_mb']} sj_rss_before_mb={sj['rss_before_mb']} "
              f"ss_rss_before_mb={ours['rss_before_mb']} load={os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
