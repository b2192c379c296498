"""Whole-model CPU inference on SpikingJelly's own model zoo: ss.nn.optimize_for_inference vs the
original SpikingJelly model with the same masked weights (issue 13's targets), same process.

Per model (spiking_resnet18, sew_resnet18 ADD and IAND, spiking_vgg11_bn, parametric_lif_net
CIFAR10Net; 32x32 input, T=4, batch 8): random masks of --density on every conv/linear but the first
(baked into the weights of the original, so it computes exactly weight*mask), BatchNorm statistics
recalibrated on the pruned net (a few train-mode passes on random images, so spike rates come out as
they do after recalibration), then, interleaved, median of --reps runs:
  sj        the original SpikingJelly model (its own CPU neuron kernels, masked dense weights)
  ss        the optimized model (BN folded, packed weights, fused LIF)
  dense     optimize_for_inference(packed=False): the same folds and fused neurons, dense torch convs
and batch 1 (latency). Also: optimize time, first forward vs steady state, the state bytes of each,
mean spike rate over the neuron layers, the per-layer report. One CSV row per model to
bench/out/e2e_zoo.csv.

    .venv/bin/python bench/e2e_zoo.py [--models spiking_resnet18,sew_resnet18_add] [--reps 9]
"""
import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

import snnsparse as ss
from snnsparse.benchmark import append_csv, device_info, summary, timed
from snnsparse.zoo import spikingjelly_zoo

T, B, SIZE = 4, 8, 32
# The layers that get masks (all but the first) and count in sparse_weight_share.
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _models():
    from spikingjelly.activation_based import neuron
    return {
        "spiking_resnet18": lambda: spikingjelly_zoo("spiking_resnet").spiking_resnet18(
            spiking_neuron=neuron.LIFNode, num_classes=10),
        "sew_resnet18_add": lambda: spikingjelly_zoo("sew_resnet").sew_resnet18(
            spiking_neuron=neuron.LIFNode, cnf="ADD", num_classes=10),
        "sew_resnet18_iand": lambda: spikingjelly_zoo("sew_resnet").sew_resnet18(
            spiking_neuron=neuron.LIFNode, cnf="IAND", num_classes=10),
        "spiking_vgg11_bn": lambda: spikingjelly_zoo("spiking_vgg").spiking_vgg11_bn(
            spiking_neuron=neuron.LIFNode, num_classes=10),
        "plif_cifar10net": lambda: spikingjelly_zoo("parametric_lif_net").CIFAR10Net(
            channels=128, spiking_neuron=neuron.ParametricLIFNode),
    }


@torch.no_grad()
def prepare(model, density, gen):
    """Masks baked into the weights (the original computes exactly weight*mask, no per-call mask
    multiply), BN recalibrated. Returns (model, masks by parameter name) for the optimized copy."""
    from spikingjelly.activation_based import functional as sjf
    sjf.set_step_mode(model, "m")
    masks = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LAYERS)]
    for n, m in layers[1:]:
        masks[n] = torch.rand(m.weight.shape, generator=gen) < density
        prune.custom_from_mask(m, "weight", masks[n])
        prune.remove(m, "weight")
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration passes
    model.train()
    for _ in range(4):
        sjf.reset_net(model)
        model(torch.rand(T, B, 3, SIZE, SIZE, generator=gen))
    sjf.reset_net(model)
    return model.eval(), masks


def with_masks(model, masks):
    """A copy whose pruned layers carry their masks (torch.nn.utils.prune), which optimize_for_inference
    packs: the mask says which synapses are absent (a zero weight alone is not read as pruned)."""
    model = copy.deepcopy(model)
    for n, m in model.named_modules():
        if n in masks:
            prune.custom_from_mask(m, "weight", masks[n])
    return model


@torch.no_grad()
def spike_rate(model, x):
    from spikingjelly.activation_based import functional as sjf
    from spikingjelly.activation_based import neuron
    rates = []
    hooks = [m.register_forward_hook(lambda mod, i, o: rates.append(float(o.float().mean())))
             for m in model.modules() if isinstance(m, neuron.BaseNode)]
    sjf.reset_net(model)
    model(x)
    for h in hooks:
        h.remove()
    return statistics.mean(rates) if rates else float("nan"), rates


def state_bytes(model):
    n = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    return n


def run(name, build, args, gen, extra=None):
    """One CSV row; extra(model, optimized) -> dict of more columns (bench/e2e_transformer.py)."""
    from spikingjelly.activation_based import functional as sjf
    torch.manual_seed(0)
    model, masks = prepare(build(), args.density, gen)
    x = torch.rand(T, B, 3, SIZE, SIZE, generator=gen)
    x1 = x[:, :1].contiguous()
    rate, rates = spike_rate(model, x)
    masked = with_masks(model, masks)  # not timed: the deepcopy and prune set-up are the benchmark's own work
    t0 = time.perf_counter()
    opt = ss.nn.optimize_for_inference(masked, x)
    t_opt = time.perf_counter() - t0
    del masked
    t0 = time.perf_counter()
    with torch.no_grad():
        y_opt = opt(x)
    t_first = time.perf_counter() - t0
    # The second baseline: the same folds and fused neurons, every conv / linear dense torch.
    dense = ss.nn.optimize_for_inference(with_masks(model, masks), x, packed=False)

    def sj(inp):
        def f():
            sjf.reset_net(model)
            with torch.no_grad():
                return model(inp)
        return f

    def ours(inp, m=opt):
        def f():
            with torch.no_grad():
                return m(inp)
        return f

    y_sj = sj(x)()
    err = float((y_opt - y_sj).abs().max())
    err_dense = float((ours(x, dense)() - y_sj).abs().max())
    tb, to, td = timed([sj(x), ours(x), ours(x, dense)], reps=args.reps)
    tb1, to1 = timed([sj(x1), ours(x1)], reps=args.reps)
    sb, so, sd, sb1, so1 = summary(tb), summary(to), summary(td), summary(tb1), summary(to1)
    report = opt.report()
    actions = {}
    for r in report:
        actions[r.action] = actions.get(r.action, 0) + 1
    row = dict(model=name, **device_info(), T=T, batch=B, input=f"3x{SIZE}x{SIZE}", density=args.density,
               spike_rate=round(rate, 4), spike_rate_min=round(min(rates), 4), spike_rate_max=round(max(rates), 4),
               sj_ms=round(sb["median_ms"], 2), sj_p20=round(sb["p20_ms"], 2), sj_p80=round(sb["p80_ms"], 2),
               ss_ms=round(so["median_ms"], 2), ss_p20=round(so["p20_ms"], 2), ss_p80=round(so["p80_ms"], 2),
               speedup=round(sb["median_ms"] / so["median_ms"], 2),
               dense_ms=round(sd["median_ms"], 2), dense_p20=round(sd["p20_ms"], 2), dense_p80=round(sd["p80_ms"], 2),
               speedup_vs_dense=round(sd["median_ms"] / so["median_ms"], 2),
               sj_b1_ms=round(sb1["median_ms"], 2), ss_b1_ms=round(so1["median_ms"], 2),
               speedup_b1=round(sb1["median_ms"] / so1["median_ms"], 2),
               optimize_s=round(t_opt, 2), first_forward_ms=round(1e3 * t_first, 1),
               first_over_steady=round(1e3 * t_first / so["median_ms"], 2),
               sj_state_mb=round(state_bytes(model) / 2**20, 1), ss_state_mb=round(state_bytes(opt) / 2**20, 1),
               max_abs_diff=f"{err:.2e}", dense_max_abs_diff=f"{err_dense:.2e}", actions=" ".join(f"{k}:{v}" for k, v in sorted(actions.items())),
               load_after="%.2f" % os.getloadavg()[0])
    if extra is not None:
        row.update(extra(model, opt))
    if args.verbose:
        print(report)
    return row


def main_for(doc, models, csv_name, row, add_args=None):
    """The command line of the whole-model benchmarks (this file and bench/e2e_transformer.py):
    row(name, build, args) -> one CSV row per model, appended to --out/csv_name and printed."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--models", default=",".join(models))
    p.add_argument("--density", type=float, default=0.05)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/out")
    p.add_argument("--verbose", action="store_true")
    if add_args is not None:
        add_args(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in models]
    if unknown:
        p.error(f"argument --models: unknown {unknown}; choose from {sorted(models)}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, csv_name)
    for name in names:
        r = row(name, models[name], args)
        append_csv(path, r)
        print(" ".join(f"{k}={v}" for k, v in r.items() if k not in ("python", "torch", "threads")), flush=True)


def main():
    main_for(__doc__, _models(), "e2e_zoo.csv",
             lambda name, build, args: run(name, build, args, torch.Generator().manual_seed(0)))


if __name__ == "__main__":
    main()
