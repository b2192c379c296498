"""CIFAR-10 from the python pickle batches (cifar-10-batches-py: data_batch_1..5, test_batch)."""
import os
import pickle

import numpy as np
import torch

from .split import Split


def _dir(root: str) -> str:
    for d in (root, os.path.join(root, "cifar-10-batches-py")):
        if os.path.isfile(os.path.join(d, "test_batch")):
            return d
    raise FileNotFoundError(f"CIFAR-10 batches (test_batch, data_batch_1..5) not found under {root!r}")


def _batch(path: str):
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError,
            ValueError) as e:  # what unpickling a file that is not a pickle (or a truncated one) raises
        raise ValueError(f"{path}: not a CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch (holds a {type(d).__name__}, not a dict)")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: not a CIFAR-10 batch (no data/labels)")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: data must be [N, 3072] with N labels, got {data.shape} and {len(labels)}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):  # would fail mid-training in the loss
        raise ValueError(f"{path}: CIFAR-10 labels must be 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root: str) -> Split:
    """x [N, 3, 32, 32] float32 in [0, 1] (no normalisation), labels int64."""
    d = _dir(root)
    names = sorted(n for n in os.listdir(d) if n.startswith("data_batch_"))
    if not names:
        raise FileNotFoundError(f"no data_batch_* files in {d!r}")
    parts = [_batch(os.path.join(d, n)) for n in names]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = _batch(os.path.join(d, "test_batch"))

    def img(a):
        return torch.from_numpy(a.copy()).float().div_(255.0)

    return Split(img(xtr), torch.from_numpy(ytr), img(xte), torch.from_numpy(yte))
