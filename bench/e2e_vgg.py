"""End-to-end CPU inference: a Grad-R-pruned spiking VGG-style network on 32x32 inputs, at its own
spike rates, on snnsparse's cpp kernels vs the same network dense in torch (same process).

The network is trained here (digits upsampled to 32x32, T=4): a few dense epochs, then Grad R
until the connectivity is a few percent; then both paths run the same test batch, median of
several runs after warm-up. Writes a CSV row to bench/out/e2e_vgg.csv and prints the table.

    .venv/bin/python bench/e2e_vgg.py [--epochs 2 --prune-epochs 6 --alpha 3 --batch 32]
"""
import argparse
import os
import statistics

import torch

import snnsparse as ss
from snnsparse.benchmark import append_csv, device_info, summary, timed
from snnsparse.demo import evaluate, firing_rates, inference_times, load_data, spike_layers, train
from snnsparse.models import SpikingCNN, vgg_cfg


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--prune-epochs", type=int, default=6)
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--cfg", default="vgg-small")
    p.add_argument("--out", default="bench/out")
    args = p.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    xtr, ytr, xte, yte = load_data(32)
    model = SpikingCNN(in_channels=1, image_size=32, channels=vgg_cfg(args.cfg), classes=10, t=4)
    with ss.backends.use("reference"):
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        train(model, xtr, ytr, args.epochs, [opt], "dense", gen)
        acc_dense = evaluate(model, xte, yte)
        gr = ss.pruning.GradRewiring.from_model(model, lr=args.lr, alpha=args.alpha, target_sparsity=0.95)
        managed = {id(q) for g in gr.param_groups for q in g["params"]}
        rest = torch.optim.Adam([q for q in model.parameters() if id(q) not in managed], lr=args.lr)
        train(model, xtr, ytr, args.prune_epochs, [gr, rest], "Grad R", gen)
    ss.pruning.apply_masks(model, gr.named_masks())
    model.eval()
    acc = evaluate(model, xte, yte)
    # Inference deployment for both paths alike: BN folded into the convs (masks unchanged).
    ss.nn.fuse_conv_bn(model)
    xb = xte[:args.batch]
    rates = firing_rates(model, xb)
    dens = {n: m.density() for n, m in spike_layers(model).items()}
    t_dense = inference_times(model, xb, "dense", args.repeats)
    t_sparse = inference_times(model, xb, "cpp", args.repeats)
    # The whole-model path: optimize_for_inference (BN already folded above; weights packed once, max-pools
    # without indices, fused LIF) against the same model dense in torch, interleaved in one process.
    fast = ss.nn.optimize_for_inference(model, xb)
    layers = spike_layers(model)
    for m in layers.values():
        m.backend = "dense"
    with torch.no_grad():
        t_d, t_o = timed([lambda: model(xb), lambda: fast(xb)], reps=args.repeats)
        same = torch.equal(fast(xb).argmax(-1), model(xb).argmax(-1))
    for m in layers.values():
        m.backend = "auto"
    print(fast.report())
    q = lambda ts, f: statistics.quantiles(ts, n=10)[f] if len(ts) >= 2 else ts[0]  # noqa: E731
    row = dict(**device_info(), cfg=args.cfg, input="1x32x32", T=4, batch=args.batch,
               connectivity=round(gr.connectivity(), 4), acc_dense=round(acc_dense, 4), acc_pruned=round(acc, 4),
               spike_rates=" ".join(f"{r:.3f}" for r in rates.values()),
               densities=" ".join(f"{d:.3f}" for d in dens.values()),
               dense_ms_p50=round(statistics.median(t_dense) * 1e3, 2),
               sparse_ms_p50=round(statistics.median(t_sparse) * 1e3, 2),
               dense_ms_p20=round(q(t_dense, 1) * 1e3, 2), dense_ms_p80=round(q(t_dense, 7) * 1e3, 2),
               sparse_ms_p20=round(q(t_sparse, 1) * 1e3, 2), sparse_ms_p80=round(q(t_sparse, 7) * 1e3, 2),
               speedup=round(statistics.median(t_dense) / statistics.median(t_sparse), 2),
               dense_interleaved_ms=round(summary(t_d)["median_ms"], 2), optimized_ms=round(summary(t_o)["median_ms"], 2),
               optimized_p20=round(summary(t_o)["p20_ms"], 2), optimized_p80=round(summary(t_o)["p80_ms"], 2),
               speedup_optimized=round(summary(t_d)["median_ms"] / summary(t_o)["median_ms"], 2),
               optimized_same_predictions=same, load_after="%.2f" % os.getloadavg()[0])
    os.makedirs(args.out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(args.out, f"e2e_{args.cfg}.pt"))  # for profiling
    append_csv(os.path.join(args.out, "e2e_vgg.csv"), row)
    for k, v in row.items():
        print(f"{k:14s} {v}")


if __name__ == "__main__":
    main()
