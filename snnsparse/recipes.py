"""The papers' training settings as named recipes, the networks they use, and `run_prune`, the
training loop behind `snnsparse prune --method ... --data DIR`.

Recipes (PRUNERS.md has the sources):
    gradr-cifar10-6conv2fc   Grad R, CIFAR-10 6Conv2FC, T=8, Adam 1e-4, batch 16, 2048 epochs, MSE
    gradr-mnist-fc           Grad R, MNIST FC 784-800-10, T=8, lr 1e-3 (mnist.py default; the README
                             table says 1e-4), batch 128, 512 epochs (RandomAffine augmentation omitted)
    lth-vgg16                spiking LTH (IMP + late rewinding to epoch 20), VGG16, T=5, SGD 0.3
                             cosine, 300 epochs per round, 15 rounds (round 0 dense)
    criticality-vgg16        criticality-guided regeneration, VGG16, T=5, SGD 0.3 cosine,
                             200 prune + 300 fine-tune epochs, dt=2000 iters, sparsity 0.9, r=0.2
    mpslt-vgg9               MPSLT (biprop strong ticket, 50% per layer), VGG9, T=4, Adam
plus small *-digits recipes on scikit-learn's bundled digits (minutes on a CPU). Paper-scale runs
need a GPU and days; every field can be overridden (epochs=..., batch_size=...).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .functional import check_int, check_real
from .models import SeqToANN  # applies a per-sample module (BN, pooling) to [T, B, ...]
from .models import vgg_cfg
from .nn import LIF, SpikeConv2d, SpikeLinear
from . import pruning as P

METHODS = ("dense", "gradr", "lth", "criticality", "gmp", "mpslt")
DATASETS = ("cifar10", "mnist", "digits")


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
class SeqDropout(nn.Module):
    """SpikingJelly-style dropout: one mask per sample, fixed over the T time steps."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.bernoulli(torch.full_like(x[0], 1 - self.p)) / (1 - self.p)
        return x * keep


class SpikingNet(nn.Module):
    """Direct-input SNN: `static` (the encoding layer, sees pixels, dense MAC path) runs once and is
    repeated over T; `body` runs time-major [T, B, ...]. readout "mean": mean over T of the last
    layer's output (logits, CE loss); "vote": spike rate of the last LIF averaged in groups of
    `vote` neurons (Grad R's AvgPool1d voting, MSE loss)."""

    def __init__(self, static: nn.Module, body: nn.Module, T: int, readout: str = "mean", vote: int = 10):
        super().__init__()
        if readout not in ("mean", "vote"):
            raise ValueError(f"readout must be 'mean' or 'vote', got {readout!r}")
        T = check_int(T, "T", lo=1, where="SpikingNet")   # T = 0: a mean over no steps, NaN outputs
        vote = check_int(vote, "vote", lo=1, where="SpikingNet")
        self.static, self.body, self.T, self.readout, self.vote = static, body, T, readout, vote

    def forward(self, x, T: Optional[int] = None):
        T = self.T if T is None else check_int(T, "T", lo=1, where="SpikingNet")
        if x.dim() != 4:
            raise ValueError(f"SpikingNet: input must be images [B, C, H, W], got {tuple(x.shape)}")
        y = self.static(x)
        y = self.body(y.unsqueeze(0).expand(T, *y.shape))
        y = y.mean(0)
        if self.readout == "vote":
            y = F.avg_pool1d(y.unsqueeze(1), self.vote).squeeze(1)
        return y


def _lif(neuron: dict):
    return LIF(**neuron)


def digits_cnn(T: int = 4, neuron: Optional[dict] = None, width: int = 16, hidden: int = 256) -> SpikingNet:
    """The small spiking CNN of bench/prune_digits.py (8x8 input):
    conv3-w (pixels, dense path), BN, LIF, conv3-2w, BN, LIF, maxpool2, FC 32w->hidden, LIF, FC->10."""
    neuron = neuron or dict(tau=2.0, surrogate="atan", detach_reset=True)
    static = nn.Sequential(SpikeConv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
    body = nn.Sequential(
        _lif(neuron),
        SpikeConv2d(width, 2 * width, 3, padding=1, bias=False), SeqToANN(nn.BatchNorm2d(2 * width)), _lif(neuron),
        SeqToANN(nn.MaxPool2d(2)), SeqToANN(nn.Flatten()),
        SpikeLinear(2 * width * 16, hidden, bias=False), _lif(neuron),
        SpikeLinear(hidden, 10))
    return SpikingNet(static, body, T)


def cifar10net(T: int = 8, neuron: Optional[dict] = None, channels: int = 256, num_classes: int = 10,
               in_channels: int = 3, size: int = 32) -> SpikingNet:
    """Grad R's CIFAR-10 6Conv2FC (c10/model.py): all layers bias-free, FC1 16384->2048 holds 91% of
    the 36.7M weights, 100 output neurons voted in groups of 10, MSE on the rate."""
    neuron = neuron or dict(tau=2.0, v_threshold=1.0, v_reset=0.0, surrogate="atan", detach_reset=True)
    c = channels
    static = nn.Sequential(SpikeConv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
    layers: List[nn.Module] = []
    for _ in range(2):
        layers += [_lif(neuron), SpikeConv2d(c, c, 3, padding=1, bias=False), SeqToANN(nn.BatchNorm2d(c))]
    layers += [_lif(neuron), SeqToANN(nn.MaxPool2d(2))]
    for _ in range(3):
        layers += [SpikeConv2d(c, c, 3, padding=1, bias=False), SeqToANN(nn.BatchNorm2d(c)), _lif(neuron)]
    layers += [SeqToANN(nn.MaxPool2d(2)), SeqToANN(nn.Flatten()), SeqDropout(0.5),
               SpikeLinear(c * (size // 4) ** 2, 2048, bias=False), _lif(neuron),
               SpikeLinear(2048, num_classes * 10, bias=False), _lif(neuron)]
    return SpikingNet(static, nn.Sequential(*layers), T, readout="vote", vote=10)


def mnist_fc(T: int = 8, neuron: Optional[dict] = None, in_channels: int = 1, size: int = 28) -> SpikingNet:
    """Grad R's MNIST network (mnist/model.py): FC 784->800 (static), LIF, FC 800->10, LIF; rate readout."""
    neuron = neuron or dict(tau=2.0, v_threshold=1.0, v_reset=0.0, surrogate="atan", detach_reset=True)
    static = nn.Sequential(nn.Flatten(), SpikeLinear(in_channels * size * size, 800, bias=False))
    body = nn.Sequential(_lif(neuron), SpikeLinear(800, 10, bias=False), _lif(neuron))
    return SpikingNet(static, body, T, readout="vote", vote=1)


VGG9_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")   # 2311.12060's VGG-9 (vgg16 from models.vgg_cfg)


def vgg(name: str = "vgg16", T: int = 5, neuron: Optional[dict] = None, num_classes: int = 10,
        in_channels: int = 3, size: int = 32) -> SpikingNet:
    """Spiking VGG (conv3 + BN + LIF blocks, max pooling keeps spikes binary, linear classifier)."""
    neuron = neuron or dict(tau=4.0 / 3.0, surrogate="atan")
    cfg = VGG9_CFG if name == "vgg9" else vgg_cfg(name)
    first = cfg[0]
    static = nn.Sequential(SpikeConv2d(in_channels, first, 3, padding=1, bias=False), nn.BatchNorm2d(first))
    layers: List[nn.Module] = [_lif(neuron)]
    c, s = first, size
    for v in cfg[1:]:
        if v == "M":
            layers.append(SeqToANN(nn.MaxPool2d(2)))
            s //= 2
        else:
            layers += [SpikeConv2d(c, v, 3, padding=1, bias=False), SeqToANN(nn.BatchNorm2d(v)), _lif(neuron)]
            c = v
    layers += [SeqToANN(nn.Flatten()), SpikeLinear(c * s * s, num_classes)]
    return SpikingNet(static, nn.Sequential(*layers), T)


MODELS: Dict[str, Callable[..., SpikingNet]] = {
    "digits-cnn": digits_cnn, "cifar10net": cifar10net, "mnist-fc": mnist_fc,
    "vgg16": lambda **kw: vgg("vgg16", **kw), "vgg9": lambda **kw: vgg("vgg9", **kw),
}


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Recipe:
    name: str
    method: str
    model: str
    dataset: str                      # "cifar10" | "mnist" | "digits"
    T: int
    epochs: int                       # per round for lth
    batch_size: int
    optimizer: str = "adam"           # "adam" | "sgd" (for the non-Grad-R parameters / all of them)
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    cosine: bool = False
    loss: str = "ce"                  # "ce" on mean logits | "mse" on voted rates
    augment: bool = False             # RandomCrop(pad 4) + horizontal flip (CIFAR)
    method_kw: dict = dataclasses.field(default_factory=dict)
    neuron: Optional[dict] = None
    seed: int = 0

    def validate(self) -> "Recipe":
        """ValueError / TypeError naming the first bad field (checked before any training: a negative
        epoch count or T = 0 would otherwise run and report a meaningless accuracy)."""
        where = f"recipe {self.name!r}"
        for field, options in (("method", METHODS), ("model", tuple(MODELS)), ("dataset", DATASETS),
                               ("optimizer", ("adam", "sgd")), ("loss", ("ce", "mse"))):
            if getattr(self, field) not in options:
                raise ValueError(f"{where}: {field} must be one of {options}, got {getattr(self, field)!r}")
        for field in ("T", "epochs", "batch_size"):
            check_int(getattr(self, field), field, lo=1, where=where)
        check_int(self.seed, "seed", where=where)
        check_real(self.lr, "lr", lo=0, lo_open=True, where=where)
        check_real(self.momentum, "momentum", lo=0, where=where)
        check_real(self.weight_decay, "weight_decay", lo=0, where=where)
        return self


RECIPES: Dict[str, Recipe] = {
    "gradr-cifar10-6conv2fc": Recipe(
        "gradr-cifar10-6conv2fc", "gradr", "cifar10net", "cifar10", T=8, epochs=2048, batch_size=16,
        optimizer="adam", lr=1e-4, loss="mse", augment=True, seed=2020,
        method_kw=dict(alpha=1e-3, target_sparsity=0.95),
        neuron=dict(tau=2.0, v_threshold=1.0, v_reset=0.0, surrogate="atan", detach_reset=True)),
    "gradr-mnist-fc": Recipe(
        "gradr-mnist-fc", "gradr", "mnist-fc", "mnist", T=8, epochs=512, batch_size=128, optimizer="adam",
        lr=1e-3, loss="mse", seed=2020, method_kw=dict(alpha=1e-3, target_sparsity=0.95),
        neuron=dict(tau=2.0, v_threshold=1.0, v_reset=0.0, surrogate="atan", detach_reset=True)),
    "lth-vgg16": Recipe(
        "lth-vgg16", "lth", "vgg16", "cifar10", T=5, epochs=300, batch_size=128, optimizer="sgd", lr=0.3,
        momentum=0.9, weight_decay=5e-4, cosine=True, augment=True,
        method_kw=dict(rounds=14, prune_fraction=0.25, rewind_epoch=20, early_time=False),
        neuron=dict(tau=4.0 / 3.0, v_threshold=1.0, surrogate="atan")),
    "criticality-vgg16": Recipe(
        "criticality-vgg16", "criticality", "vgg16", "cifar10", T=5, epochs=500, batch_size=128,
        optimizer="sgd", lr=0.3, momentum=0.9, weight_decay=1e-4, cosine=True, augment=True,
        method_kw=dict(final_sparsity=0.9, regrow_ratio=0.2, prune_every=2000, prune_epochs=200),
        neuron=dict(tau=4.0 / 3.0, v_threshold=1.0, surrogate="atan")),
    "mpslt-vgg9": Recipe(
        "mpslt-vgg9", "mpslt", "vgg9", "cifar10", T=4, epochs=300, batch_size=128, optimizer="adam", lr=1e-2,
        cosine=True, augment=True, method_kw=dict(sparsity=0.5, binarize=True)),
    # Small settings on the bundled digits (bench/prune_digits.py uses these).
    "dense-digits": Recipe("dense-digits", "dense", "digits-cnn", "digits", T=4, epochs=15, batch_size=64),
    "gradr-digits": Recipe("gradr-digits", "gradr", "digits-cnn", "digits", T=4, epochs=80, batch_size=64,
                           cosine=True, method_kw=dict(alpha=0.62, target_sparsity=0.95)),
    "lth-digits": Recipe("lth-digits", "lth", "digits-cnn", "digits", T=4, epochs=8, batch_size=64,
                         method_kw=dict(rounds=11, prune_fraction=0.25, rewind_epoch=1, early_time=False)),
    "criticality-digits": Recipe("criticality-digits", "criticality", "digits-cnn", "digits", T=4, epochs=30,
                                 batch_size=64, method_kw=dict(final_sparsity=0.957, regrow_ratio=0.2,
                                                               prune_every=23, prune_epochs=15)),
    "gmp-digits": Recipe("gmp-digits", "gmp", "digits-cnn", "digits", T=4, epochs=30, batch_size=64,
                         method_kw=dict(final_sparsity=0.957, regrow_ratio=0.0, prune_every=23, prune_epochs=15)),
    "mpslt-digits": Recipe("mpslt-digits", "mpslt", "digits-cnn", "digits", T=4, epochs=30, batch_size=64,
                           lr=1e-2, cosine=True, method_kw=dict(sparsity=0.5, binarize=True)),
}


def get_recipe(name: str, **overrides) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    r = copy.deepcopy(RECIPES[name])
    kw = dict(overrides.pop("method_kw", {}) or {})
    fields = {f.name for f in dataclasses.fields(Recipe)}
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in fields:
            raise ValueError(f"unknown recipe field {k!r}; fields: {sorted(fields)}")
        setattr(r, k, v)
    r.method_kw.update(kw)
    return r.validate()


def default_recipe(method: str, dataset: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods: {METHODS}")
    if dataset == "digits":
        return f"{method}-digits"
    if dataset == "mnist" and method == "gradr":
        return "gradr-mnist-fc"
    return {"gradr": "gradr-cifar10-6conv2fc", "lth": "lth-vgg16", "criticality": "criticality-vgg16",
            "gmp": "criticality-vgg16", "mpslt": "mpslt-vgg9", "dense": "lth-vgg16"}[method]


def load_data(dataset: str, data_dir: Optional[str]):
    from . import data
    if dataset == "digits":
        if data_dir is not None:  # silently training on the bundled digits instead would mislead
            raise ValueError(f"dataset 'digits' is bundled with scikit-learn and reads no directory, got {data_dir!r}")
        return data.load_digits()
    if data_dir is None:
        raise ValueError(f"dataset {dataset!r} needs a data directory (--data DIR)")
    if dataset == "cifar10":
        return data.load_cifar10(data_dir)
    if dataset == "mnist":
        return data.load_mnist(data_dir)
    raise ValueError(f"unknown dataset {dataset!r}")


def build_model(recipe: Recipe, split) -> SpikingNet:
    c, h = split.x_train.shape[1], split.x_train.shape[2]
    kw = dict(T=recipe.T)
    if recipe.neuron is not None:
        kw["neuron"] = dict(recipe.neuron)
    if recipe.model != "digits-cnn":
        kw.update(in_channels=c, size=h)
    return MODELS[recipe.model](**kw)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    i = torch.randint(0, 9, (b,), generator=gen)
    j = torch.randint(0, 9, (b,), generator=gen)
    out = torch.stack([padded[k, :, i[k]:i[k] + h, j[k]:j[k] + w] for k in range(b)])
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def loss_fn(recipe: Recipe, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if recipe.loss == "mse":
        return F.mse_loss(out, F.one_hot(y, out.shape[-1]).to(out.dtype))
    return F.cross_entropy(out, y)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, T=None) -> float:
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        xb = x[i:i + batch_size].to(_device(model))
        out = model(xb) if T is None else model(xb, T)
        correct += int((out.argmax(-1).cpu() == y[i:i + batch_size]).sum())
    model.train(was)
    return correct / max(1, len(y))


def _device(model):
    return next(model.parameters()).device


def _optimizer(recipe: Recipe, params, lr=None):
    params = [p for p in params if p.requires_grad]
    lr = recipe.lr if lr is None else lr
    if not params:
        return None
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=recipe.weight_decay)


def train_epochs(model, split, recipe: Recipe, optimizers, epochs: int, *, gen: torch.Generator,
                 after_step: Optional[Callable[[], None]] = None, after_epoch=None, max_batches=None,
                 schedulers=()):
    """Ordinary training loop: CE/MSE, the given optimizers stepped together, hooks after each
    optimizer step and each epoch (after_epoch(epoch) may return False to stop)."""
    dev = _device(model)
    n = len(split.y_train)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for b, i in enumerate(range(0, n, recipe.batch_size)):
            if max_batches is not None and b >= max_batches:
                break
            idx = perm[i:i + recipe.batch_size]
            x = split.x_train[idx]
            if recipe.augment:
                x = _augment(x, gen)
            out = model(x.to(dev))
            loss = loss_fn(recipe, out, split.y_train[idx].to(dev))
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
            if after_step is not None:
                after_step()
        for s in schedulers:
            s.step()
        if after_epoch is not None and after_epoch(epoch) is False:
            break


def _schedulers(recipe, opts, epochs):
    if not recipe.cosine:
        return []
    return [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=max(1, epochs)) for o in opts]


def run_recipe(recipe: Recipe, split, *, max_batches: Optional[int] = None, device: str = "cpu",
               log: Optional[Callable[[str], None]] = None, model: Optional[SpikingNet] = None) -> dict:
    """Train `recipe` on `split` (a data.Split); returns a dict with the test accuracy, the
    sparsity of the conv + linear weights, per-round rows (lth) and the masks."""
    log = log or (lambda s: None)
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    if model is None:
        model = build_model(recipe, split)
    model.to(device)
    kw = dict(recipe.method_kw)
    m = recipe.method
    rows = []
    t0 = time.time()

    def acc():
        return evaluate(model, split.x_test, split.y_test)

    if m == "dense":
        opts = [_optimizer(recipe, model.parameters())]
        train_epochs(model, split, recipe, opts, recipe.epochs, gen=gen, max_batches=max_batches,
                     schedulers=_schedulers(recipe, opts, recipe.epochs))
        masks = P.get_masks(model)
    elif m == "gradr":
        gr = P.GradRewiring.from_model(model, lr=recipe.lr, alpha=kw.get("alpha", 1e-3),
                                       target_sparsity=kw.get("target_sparsity", 0.95))
        managed = {id(p) for g in gr.param_groups for p in g["params"]}
        opts = [gr] + [o for o in [_optimizer(recipe, [p for p in model.parameters() if id(p) not in managed])]
                       if o is not None]
        train_epochs(model, split, recipe, opts, recipe.epochs, gen=gen, max_batches=max_batches,
                     schedulers=_schedulers(recipe, opts, recipe.epochs))
        masks = gr.named_masks()
        P.apply_masks(model, masks)
    elif m == "lth":
        lt = P.LotteryTicket(model, prune_fraction=kw.get("prune_fraction", 0.25))
        rewind_epoch = kw.get("rewind_epoch", 20)
        rounds = kw.get("rounds", 14)
        T_search = recipe.T
        for rnd in range(rounds + 1):
            opts = [_optimizer(recipe, model.parameters())]
            sch = _schedulers(recipe, opts, recipe.epochs)
            model.T = recipe.T if rnd == rounds else T_search     # the final round runs at the full T

            def after_epoch(epoch, rnd=rnd):
                nonlocal T_search
                if rnd == 0 and epoch + 1 == rewind_epoch:
                    lt.save_rewind_point()
                cands = tuple(t for t in (2, 3, 4) if t < recipe.T)
                if kw.get("early_time") and rnd == 0 and epoch == 1 and rounds > 0 and cands:
                    # Early-Time ticket: after 2 epochs, 1000 training images, KL criterion (eval mode,
                    # so BN running statistics are not touched).
                    model.eval()
                    imgs = split.x_train[:1000].to(device)
                    T_search = P.early_time_steps(lambda x, t: model(x, t), imgs, recipe.T, cands)
                    model.train()
                    model.T = T_search
                    log(f"early-time ticket: searching with T={T_search}")
            train_epochs(model, split, recipe, opts, recipe.epochs, gen=gen, after_epoch=after_epoch,
                         after_step=lt.zero_pruned, max_batches=max_batches, schedulers=sch)
            model.T = recipe.T
            rows.append(dict(round=rnd, sparsity=lt.sparsity(), accuracy=acc()))
            log(f"round {rnd}: sparsity {rows[-1]['sparsity']:.4f} acc {rows[-1]['accuracy']:.4f}")
            if rnd < rounds:
                if lt.rewind_state is None:
                    lt.save_rewind_point()
                lt.prune_round()
        masks = dict(lt.masks)
    elif m in ("criticality", "gmp"):
        opts = [_optimizer(recipe, model.parameters())]
        iters = math.ceil(len(split.y_train) / recipe.batch_size)
        if max_batches is not None:
            iters = min(iters, max_batches)
        every = kw.get("prune_every", 2000)
        K = max(1, (kw.get("prune_epochs", recipe.epochs) * iters) // every)
        cp = P.CriticalityPruner(model, final_sparsity=kw.get("final_sparsity", 0.9),
                                 regrow_ratio=0.0 if m == "gmp" else kw.get("regrow_ratio", 0.2),
                                 prune_every=every, prune_steps=K, score=kw.get("score", "surrogate_grad"))
        train_epochs(model, split, recipe, opts, recipe.epochs, gen=gen, after_step=cp.step,
                     max_batches=max_batches, schedulers=_schedulers(recipe, opts, recipe.epochs))
        masks = dict(cp.masks)
        cp.remove()
    elif m == "mpslt":
        mpt = P.MultiPrizeTicket(model, sparsity=kw.get("sparsity", 0.5), binarize=kw.get("binarize", True))
        scores = {id(p) for p in mpt.parameters()}
        others = [p for p in model.parameters() if id(p) not in scores and p.requires_grad]
        opts = [_optimizer(recipe, mpt.parameters())]
        if others:
            opts.append(_optimizer(recipe, others, lr=kw.get("other_lr", 1e-3)))
        train_epochs(model, split, recipe, opts, recipe.epochs, gen=gen, max_batches=max_batches,
                     schedulers=_schedulers(recipe, opts, recipe.epochs))
        masks = mpt.finalize()
    else:
        raise ValueError(f"unknown method {m!r}; methods: {METHODS}")
    return dict(recipe=recipe.name, method=m, accuracy=acc(), sparsity=P.sparsity(masks),
                connectivity=P.density(masks), rounds=rows, seconds=time.time() - t0, masks=masks, model=model)


def resolve_recipe(method: str, recipe: Optional[str] = None, dataset: Optional[str] = None,
                   **overrides) -> Recipe:
    """The Recipe that run_prune runs: `recipe` (default: the paper recipe of `method` for `dataset`,
    cifar10 when None) with the overrides, validated; ValueError when `recipe` is another method's."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods: {METHODS}")
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; datasets: {DATASETS}")
    if dataset == "digits" and recipe is None:
        recipe = default_recipe(method, "digits")
    name = recipe or default_recipe(method, dataset or "cifar10")
    r = get_recipe(name, **overrides)
    if method != r.method and not (method == "gmp" and r.method == "criticality"):
        raise ValueError(f"recipe {name!r} is for method {r.method!r}, not {method!r}")
    r.method = method
    if dataset is not None:
        r.dataset = dataset
    return r.validate()


def _train_and_save(r: Recipe, split, *, out: Optional[str], max_batches: Optional[int], device: str,
                    log) -> dict:
    if max_batches is not None:
        check_int(max_batches, "max_batches", lo=1, where="run_prune")
    if out:
        os.makedirs(out, exist_ok=True)  # before training: an output path that cannot be written fails now
    log(f"{r.name}: method {r.method}, {r.dataset} ({len(split.y_train)} train / {len(split.y_test)} test), "
        f"T={r.T}, {r.epochs} epochs")
    res = run_recipe(r, split, max_batches=max_batches, device=device, log=log)
    log(f"test accuracy {res['accuracy']:.4f}, sparsity {res['sparsity']:.4f}")
    if out:
        torch.save({k: v.cpu() for k, v in res["masks"].items()}, os.path.join(out, "masks.pt"))
        torch.save(res["model"].state_dict(), os.path.join(out, "model.pt"))
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({k: v for k, v in res.items() if k not in ("masks", "model")}
                      | {"recipe_settings": dataclasses.asdict(r)}, f, indent=2)
    return res


def run_prune(method: str, data_dir: Optional[str] = None, *, recipe: Optional[str] = None,
              dataset: Optional[str] = None, out: Optional[str] = None, max_batches: Optional[int] = None,
              device: str = "cpu", log=print, **overrides) -> dict:
    """Run `method` with its paper recipe (or `recipe`) on the data in `data_dir`; `dataset`
    defaults to the recipe's ("digits" needs no directory). overrides: Recipe fields (epochs=...,
    batch_size=..., T=..., seed=..., method_kw={...}). With `out`, writes masks.pt and result.json."""
    r = resolve_recipe(method, recipe, dataset, **overrides)
    split = load_data(r.dataset, data_dir)
    return _train_and_save(r, split, out=out, max_batches=max_batches, device=device, log=log)


def add_prune_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `snnsparse prune` (values checked while parsing, see snnsparse.cli)."""
    from .cli import any_int, existing_dir, positive_float, positive_int, torch_device, writable_dir
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--data", default=None, type=existing_dir,
                        help="dataset directory (MNIST IDX files or cifar-10-batches-py)")
    parser.add_argument("--dataset", default=None, choices=DATASETS,
                        help="default: the recipe's; 'digits' is bundled with scikit-learn")
    parser.add_argument("--recipe", default=None, choices=sorted(RECIPES))
    parser.add_argument("--epochs", type=positive_int, default=None)
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--lr", type=positive_float, default=None)
    parser.add_argument("--T", type=positive_int, default=None)
    parser.add_argument("--seed", type=any_int, default=None)
    parser.add_argument("--max-batches", type=positive_int, default=None, help="cap batches per epoch (smoke runs)")
    parser.add_argument("--device", type=torch_device, default="cpu")
    parser.add_argument("--out", type=writable_dir, default=None,
                        help="directory for masks.pt, model.pt, result.json")
    return parser


def prune_main(args: argparse.Namespace) -> int:
    """`snnsparse prune`: the recipe and the data are checked (UsageError, an argparse-style error)
    before any training."""
    from .cli import UsageError
    try:
        r = resolve_recipe(args.method, args.recipe, args.dataset, epochs=args.epochs,
                           batch_size=args.batch_size, lr=args.lr, T=args.T, seed=args.seed)
    except ValueError as e:
        raise UsageError("--recipe" if args.recipe else "--method", e) from None
    try:
        split = load_data(r.dataset, args.data)
    except (OSError, ValueError) as e:  # missing, unreadable or malformed dataset files
        raise UsageError("--data", f"recipe {r.name!r} trains on {r.dataset}: {e}") from None
    _train_and_save(r, split, out=args.out, max_batches=args.max_batches, device=args.device, log=print)
    return 0


if __name__ == "__main__":
    from .cli import run_command
    _parser = add_prune_args(argparse.ArgumentParser("snnsparse prune"))
    raise SystemExit(run_command(_parser, prune_main, _parser.parse_args()))
