"""MNIST from the four IDX files in a local directory (plain or .gz), e.g. as distributed by
LeCun's site / torchvision's raw folder."""
import gzip
import os
import struct

import numpy as np
import torch

from .split import Split

FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def _find(root: str, base: str) -> str:
    for cand in (base, base + ".gz", base.replace("-idx", ".idx")):
        for d in (root, os.path.join(root, "raw"), os.path.join(root, "MNIST", "raw")):
            p = os.path.join(d, cand)
            if os.path.isfile(p):
                return p
    raise FileNotFoundError(f"MNIST file {base}[.gz] not found under {root!r}")


def read_idx(path: str) -> np.ndarray:
    """An IDX file (unsigned-byte data) as a numpy array; ValueError on a malformed header."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError) as e:  # a corrupt or truncated .gz
        raise ValueError(f"{path}: not a readable gzip file ({e})") from None
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: too short for an IDX header of {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), file has {body.size}")
    return body.reshape(dims)


def load_mnist(root: str) -> Split:
    """x [N, 1, 28, 28] float32 in [0, 1], labels int64."""
    arr = {k: read_idx(_find(root, v)) for k, v in FILES.items()}
    for part in ("train", "test"):
        if arr[f"{part}_images"].ndim != 3 or arr[f"{part}_labels"].ndim != 1 or \
                len(arr[f"{part}_images"]) != len(arr[f"{part}_labels"]):
            raise ValueError(f"MNIST {part}: images {arr[f'{part}_images'].shape} and labels "
                             f"{arr[f'{part}_labels'].shape} do not match")
        labels = arr[f"{part}_labels"]
        if labels.size and labels.max() > 9:  # would fail mid-training in the loss
            raise ValueError(f"MNIST {part}: labels must be 0..9, found {labels.max()}")

    def img(a):
        return torch.from_numpy(a.copy()).float().div_(255.0).unsqueeze(1)

    def lab(a):
        return torch.from_numpy(a.astype(np.int64))

    return Split(img(arr["train_images"]), lab(arr["train_labels"]), img(arr["test_images"]),
                 lab(arr["test_labels"]))
