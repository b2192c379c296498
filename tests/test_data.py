"""Dataset loaders on small files the tests write (MNIST IDX, CIFAR-10 pickles) and the bundled
digits; plus `run_prune` / the `snnsparse prune` arguments on those files."""
import argparse
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from snnsparse import data, recipes


def write_idx(path, arr, gz=False):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + arr.tobytes())


def make_mnist(root, n_train=6, n_test=4, gz=False):
    rng = np.random.default_rng(0)
    imgs = {"train": rng.integers(0, 256, (n_train, 28, 28)), "t10k": rng.integers(0, 256, (n_test, 28, 28))}
    labs = {"train": rng.integers(0, 10, n_train), "t10k": rng.integers(0, 10, n_test)}
    sfx = ".gz" if gz else ""
    for part in ("train", "t10k"):
        write_idx(os.path.join(root, f"{part}-images-idx3-ubyte{sfx}"), imgs[part], gz)
        write_idx(os.path.join(root, f"{part}-labels-idx1-ubyte{sfx}"), labs[part], gz)
    return imgs, labs


def make_cifar(root, per_batch=4, n_test=6):
    rng = np.random.default_rng(1)
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d)
    batches = []
    for i in range(1, 3):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = list(rng.integers(0, 10, per_batch))
        with open(os.path.join(d, f"data_batch_{i}"), "wb") as f:
            pickle.dump({b"data": x, b"labels": y}, f)
        batches.append((x, y))
    xt = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    yt = list(rng.integers(0, 10, n_test))
    with open(os.path.join(d, "test_batch"), "wb") as f:
        pickle.dump({b"data": xt, b"labels": yt}, f)
    return batches, (xt, yt)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    imgs, labs = make_mnist(str(tmp_path), gz=gz)
    s = data.load_mnist(str(tmp_path))
    assert s.x_train.shape == (6, 1, 28, 28) and s.x_test.shape == (4, 1, 28, 28)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert torch.equal(s.x_train[:, 0], torch.tensor(imgs["train"], dtype=torch.float32) / 255)
    assert torch.equal(s.y_test, torch.tensor(labs["t10k"]))


def test_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST"):
        data.load_mnist(str(tmp_path))
    make_mnist(str(tmp_path))
    with open(tmp_path / "train-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 6) + b"\0" * 24)   # float IDX
    with pytest.raises(ValueError, match="unsigned-byte"):
        data.load_mnist(str(tmp_path))
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.zeros(5))
    with pytest.raises(ValueError, match="do not match"):
        data.load_mnist(str(tmp_path))


def test_cifar10_pickles(tmp_path):
    batches, (xt, yt) = make_cifar(str(tmp_path))
    s = data.load_cifar10(str(tmp_path))
    assert s.x_train.shape == (8, 3, 32, 32) and s.x_test.shape == (6, 3, 32, 32)
    expect = torch.tensor(batches[0][0][1].reshape(3, 32, 32), dtype=torch.float32) / 255
    assert torch.equal(s.x_train[1], expect)
    assert s.y_train.tolist() == [int(v) for v in batches[0][1] + batches[1][1]]
    assert s.y_test.tolist() == [int(v) for v in yt]
    with pytest.raises(FileNotFoundError, match="CIFAR-10"):
        data.load_cifar10(str(tmp_path / "nope"))


def test_digits_fixed_split():
    a, b = data.load_digits(), data.load_digits()
    assert a.x_train.shape == (1438, 1, 8, 8) and a.x_test.shape == (359, 1, 8, 8)
    assert float(a.x_train.min()) == 0.0 and float(a.x_train.max()) == 1.0
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert set(a.y_test.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=1.0)


def test_recipes_are_the_papers_settings():
    g = recipes.get_recipe("gradr-cifar10-6conv2fc")
    assert (g.T, g.batch_size, g.lr, g.loss, g.method_kw["alpha"]) == (8, 16, 1e-4, "mse", 1e-3)
    lt = recipes.get_recipe("lth-vgg16")
    assert (lt.T, lt.lr, lt.method_kw["prune_fraction"], lt.method_kw["rewind_epoch"]) == (5, 0.3, 0.25, 20)
    cr = recipes.get_recipe("criticality-vgg16")
    assert (cr.T, cr.method_kw["final_sparsity"], cr.method_kw["regrow_ratio"]) == (5, 0.9, 0.2)
    net = recipes.build_model(g, data.Split(torch.zeros(1, 3, 32, 32), None, None, None))
    n_weights = sum(w.numel() for w in recipes.P.prunable_weights(net).values())
    assert n_weights == 36_715_264           # "about 36.7M weights", 91% in FC1
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes.get_recipe("nope")
    with pytest.raises(ValueError, match="unknown recipe field"):
        recipes.get_recipe("lth-vgg16", colour="red")


def test_prune_cli_on_generated_cifar(tmp_path):
    make_cifar(str(tmp_path), per_batch=8, n_test=4)
    out = tmp_path / "out"
    parser = recipes.add_prune_args(argparse.ArgumentParser())
    args = parser.parse_args(["--method", "mpslt", "--data", str(tmp_path), "--recipe", "mpslt-vgg9",
                              "--epochs", "1", "--batch-size", "8", "--max-batches", "1", "--T", "1",
                              "--out", str(out)])
    assert recipes.prune_main(args) == 0
    masks = torch.load(out / "masks.pt")
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs(kept / total - 0.5) < 1e-3                     # 50% per layer
    assert (out / "result.json").is_file() and (out / "model.pt").is_file()


def test_prune_main_digits_smoke(tmp_path):
    parser = recipes.add_prune_args(argparse.ArgumentParser())
    args = parser.parse_args(["--method", "criticality", "--dataset", "digits", "--epochs", "1",
                              "--max-batches", "2", "--out", str(tmp_path)])
    assert recipes.prune_main(args) == 0
    masks = torch.load(tmp_path / "masks.pt")
    assert set(masks) and all(m.dtype == torch.bool for m in masks.values())
    with pytest.raises(ValueError, match="is for method"):
        recipes.run_prune("gradr", recipe="lth-digits", dataset="digits", log=lambda s: None)


def test_run_prune_gradr_on_generated_mnist(tmp_path):
    make_mnist(str(tmp_path), n_train=8, n_test=4)
    res = recipes.run_prune("gradr", str(tmp_path), dataset="mnist", epochs=1, batch_size=4, T=2,
                            log=lambda s: None)
    assert res["recipe"] == "gradr-mnist-fc" and set(res["masks"]) == {"static.1.weight", "body.1.weight"}
    assert 0 <= res["accuracy"] <= 1


def test_lth_recipe_with_early_time_ticket_runs():
    logs = []
    r = recipes.get_recipe("lth-digits", epochs=2, T=4, method_kw=dict(rounds=1, early_time=True, rewind_epoch=1))
    res = recipes.run_recipe(r, data.load_digits(), max_batches=2, log=logs.append)
    assert any(s.startswith("early-time ticket: searching with T=") for s in logs)
    assert [row["round"] for row in res["rounds"]] == [0, 1] and abs(res["sparsity"] - 0.25) < 1e-6
