"""`snnsparse demo` (make demo): the main job on the bundled scikit-learn digits.

1. train a spiking CNN (T=4) dense; 2. prune it with Grad R; 3. convert to snnsparse layers with
the masks; 4. print accuracy (dense and pruned), connectivity, per-layer spike rates, SOP/energy
totals and the ratio to the ANN; 5. measure the inference speedup of the sparse model over the
same model run dense in torch (same process, median of several runs); 6. save the pruned model
and show that loading it reproduces the same outputs.
"""
import argparse
import copy
import os
import statistics
import time
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import backends
from .models import SpikingCNN
from .nn import LIF, SpikeConv2d, SpikeLinear, fuse_conv_bn


def add_args(p: argparse.ArgumentParser):
    # values checked while parsing (see snnsparse.cli): a bad one fails before minutes of training
    from .cli import any_int, nonnegative_float, positive_float, positive_int, writable_dir
    p.add_argument("--epochs", type=positive_int, default=12, help="dense training epochs (default 12)")
    p.add_argument("--prune-epochs", type=positive_int, default=25, help="Grad R epochs (default 25)")
    p.add_argument("--t", type=positive_int, default=4, help="time steps (default 4)")
    p.add_argument("--alpha", type=nonnegative_float, default=None,
                   help="Grad R prior penalty (sets the connectivity; default tuned for ~3%% connectivity)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Grad R learning rate (default 1e-3)")
    p.add_argument("--seed", type=any_int, default=0)
    p.add_argument("--out", type=writable_dir, default="demo_out",
                   help="where the pruned model is saved (default demo_out/)")
    p.add_argument("--quick", action="store_true", help="a 1-epoch smoke run")


# Grad R prior penalty for the demo. Connectivity moves steeply with alpha (measured on this model,
# 25 epochs, lr 1e-3, seed 0: alpha 0.5 -> 8.0% / 97.5% accuracy, 0.7 -> 5.8% / 97.2%,
# 0.8 -> 5.5% / 94.4%, 0.9 -> 4.9% / 95.8%, 1.2 -> 0.5% / 24%; the spread between runs is
# about 2 points). 0.7 keeps accuracy within 2 points at about 6% connectivity.
DEFAULT_ALPHA = 0.7


def make_model(t: int) -> SpikingCNN:
    # Digits are upsampled 8x8 -> 16x16 so the event-driven layers have real work to skip.
    return SpikingCNN(in_channels=1, image_size=16, channels=(32, "M", 64, "M"), hidden=128, classes=10, t=t)


def load_data(size: int = 16):
    """Digits upsampled (bilinear) to size x size: (x_train, y_train, x_test, y_test)."""
    from .data import load_digits
    d = load_digits()
    up = lambda x: F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # noqa: E731
    return up(d.x_train), d.y_train, up(d.x_test), d.y_test


def _batches(x, y, batch, shuffle, gen=None):
    idx = torch.randperm(len(x), generator=gen) if shuffle else torch.arange(len(x))
    for i in range(0, len(x), batch):
        j = idx[i:i + batch]
        yield x[j], y[j]


def evaluate(model: nn.Module, x, y, batch: int = 256) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in _batches(x, y, batch, False):
            correct += int((model(xb).argmax(1) == yb).sum())
    return correct / len(x)


def train(model, x, y, epochs, optimizers, desc, gen, after_step=None):
    for ep in range(epochs):
        model.train()
        bar = tqdm(list(_batches(x, y, 64, True, gen)), desc=f"{desc} epoch {ep + 1}/{epochs}", leave=False)
        for xb, yb in bar:
            loss = F.cross_entropy(model(xb), yb)
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in optimizers:
                o.step()
            if after_step:
                after_step()
            bar.set_postfix(loss=f"{loss.item():.3f}")


def firing_rates(model: nn.Module, x) -> Dict[str, float]:
    """Mean spike rate of every LIF layer on input x."""
    rates, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, LIF):
            hooks.append(m.register_forward_hook(lambda mod, i, o, n=name: rates.__setitem__(n, float(o.mean()))))
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return rates


def spike_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, (SpikeConv2d, SpikeLinear))}


def inference_times(model, x, backend: str, repeats: int = 7) -> list:
    """Seconds of each of `repeats` runs of model(x) (after one warm-up), every spike layer on `backend`."""
    layers = spike_layers(model)
    saved = {n: m.backend for n, m in layers.items()}
    for m in layers.values():
        m.backend = backend
    model.eval()
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    for n, m in layers.items():
        m.backend = saved[n]
    return times


def time_inference(model, x, backend: str, repeats: int = 7) -> float:
    """Median seconds of model(x) with every spike layer on `backend`."""
    return statistics.median(inference_times(model, x, backend, repeats))


def main(args) -> int:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if args.quick:
        args.epochs, args.prune_epochs = 1, 1
    xtr, ytr, xte, yte = load_data()
    print(f"digits: {len(xtr)} train / {len(xte)} test images, 16x16, T={args.t}; backends: "
          f"{ {k: v is True for k, v in backends.available().items()} }")
    model = make_model(args.t)
    # Training runs the dense torch path (reference backend): at training-time densities dense
    # BLAS is the faster choice on this CPU; the sparse kernels pay off once the model is pruned.
    with backends.use("reference"):
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        train(model, xtr, ytr, args.epochs, [opt], "dense", gen)
    acc_dense = evaluate(model, xte, yte)
    print(f"\n[1] dense SNN test accuracy: {acc_dense * 100:.2f}%")
    print("    spike rate per LIF layer: " + ", ".join(f"{k} {v:.3f}" for k, v in firing_rates(model, xte).items()))

    # [2] Grad R on every conv/linear weight (dense dL/dw, so pruned synapses can regrow); BN by Adam.
    from .pruning import GradRewiring, apply_masks
    gr = GradRewiring.from_model(model, lr=args.lr, alpha=DEFAULT_ALPHA if args.alpha is None else args.alpha,
                                 target_sparsity=0.95)
    managed = {id(p) for g in gr.param_groups for p in g["params"]}
    rest = torch.optim.Adam([p for p in model.parameters() if id(p) not in managed], lr=args.lr)
    with backends.use("reference"):
        train(model, xtr, ytr, args.prune_epochs, [gr, rest], "Grad R", gen)
    masks = gr.named_masks()
    apply_masks(model, masks)  # weight_mask = (w != 0): the kernels now skip pruned synapses
    acc_pruned = evaluate(model, xte, yte)
    conn = gr.connectivity()
    print(f"\n[2] Grad R pruned: test accuracy {acc_pruned * 100:.2f}% (dense {acc_dense * 100:.2f}%), "
          f"connectivity {conn * 100:.2f}%")
    for name, m in spike_layers(model).items():
        print(f"    {name:14s} {type(m).__name__:12s} weight density {m.density() * 100:6.2f}%")
    rates = firing_rates(model, xte)
    print("    spike rate per LIF layer: " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))

    # [3] SOP / energy on the test set (fp32 constants, Horowitz ISSCC 2014).
    from . import energy
    report = energy.count(model, xte[:64])
    tot = report.total
    print(f"\n[3] energy on 64 test images (T={args.t}, fp32 45 nm): SOP {tot.sop:,.0f} (dense-weight SynOps "
          f"{tot.synops:,.0f}), encoding-layer MACs {tot.mac:,.0f}; SNN {tot.energy_pj / 1e6:.3f} uJ vs ANN "
          f"{report.ann_energy_pj / 1e6:.3f} uJ -> SNN/ANN = {report.energy_ratio:.3f}")

    # [4] inference speed: the pruned model on the sparse kernels vs the same model dense in torch.
    xb = xte[:128]
    sparse_backend = "cpp" if backends.available()["cpp"] is True else "reference"
    deployed = fuse_conv_bn(copy.deepcopy(model).eval())  # BN folded into the convs, for both paths
    t_dense = time_inference(deployed, xb, "dense")
    t_sparse = time_inference(deployed, xb, sparse_backend)
    print(f"\n[4] inference (BN folded), batch 128, T={args.t}, {torch.get_num_threads()} threads: dense torch "
          f"{t_dense * 1e3:.1f} ms, snnsparse[{sparse_backend}] {t_sparse * 1e3:.1f} ms (median of 7) -> "
          f"{t_dense / t_sparse:.2f}x")
    if sparse_backend == "cpp":
        # The whole-model path: an inference-only copy with BN folded and every weight packed once.
        from .benchmark import summary, timed
        from .nn import optimize_for_inference
        fast = optimize_for_inference(model.eval(), xb)
        dense_layers = spike_layers(deployed)
        for m in dense_layers.values():
            m.backend = "dense"
        with torch.no_grad():
            t_d, t_o = timed([lambda: deployed(xb), lambda: fast(xb)], reps=7)
            same_out = torch.equal(fast(xb).argmax(-1), model(xb).argmax(-1))
        d, o = summary(t_d)["median_ms"], summary(t_o)["median_ms"]
        print(f"    optimize_for_inference: {o:.1f} ms vs dense torch {d:.1f} ms (interleaved, median of 7) -> "
              f"{d / o:.2f}x; same predictions: {same_out}")

    # [5] save the pruned model (weights + masks + Grad R state), load it, same outputs.
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "pruned.pt")
    torch.save({"model": model.state_dict(), "grad_r": gr.state_dict(), "t": args.t}, path)
    loaded = make_model(args.t)
    ckpt = torch.load(path)
    loaded.load_state_dict(ckpt["model"])
    loaded.eval()
    model.eval()
    with torch.no_grad():
        same = torch.equal(loaded(xb), model(xb))
    print(f"\n[5] saved {path}; reloaded model gives identical outputs: {same}")
    return 0 if same else 1
