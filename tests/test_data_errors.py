"""Malformed dataset files give a ValueError naming the file (which `snnsparse prune` reports as an
error of --data), never an unpickling / struct / gzip traceback or a crash in the middle of training."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from snnsparse import data
from snnsparse.data.mnist import read_idx



def _idx(arr):
    arr = np.asarray(arr, dtype=np.uint8)
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_idx_header_shorter_than_its_dimensions(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(struct.pack(">HBB", 0, 0x08, 3) + b"\x00\x00")
    with pytest.raises(ValueError, match="too short for an IDX header of 3 dimensions"):
        read_idx(str(path))


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a readable gzip file"):
        read_idx(str(path))
    path.write_bytes(gzip.compress(_idx(np.zeros(5)))[:-6])      # truncated
    with pytest.raises(ValueError, match="not a readable gzip file"):
        read_idx(str(path))


def test_mnist_labels_out_of_range(tmp_path):
    arrays = {"train-images-idx3-ubyte": np.zeros((3, 28, 28)), "train-labels-idx1-ubyte": [1, 12, 3],
              "t10k-images-idx3-ubyte": np.zeros((2, 28, 28)), "t10k-labels-idx1-ubyte": [0, 9]}
    for name, arr in arrays.items():
        (tmp_path / name).write_bytes(_idx(arr))
    with pytest.raises(ValueError, match="MNIST train: labels must be 0..9, found 12"):
        data.load_mnist(str(tmp_path))


def _cifar_dir(tmp_path, batch):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in ("data_batch_1", "test_batch"):
        (d / name).write_bytes(batch)
    return str(tmp_path)


@pytest.mark.parametrize("content,match", [
    (b"garbage, not a pickle", "not a CIFAR-10 batch"),
    (pickle.dumps([1, 2, 3]), "not a CIFAR-10 batch .holds a list"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), "labels must be 0..9"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})[:40], "not a CIFAR-10 batch"),
])
def test_cifar_malformed_batches(tmp_path, content, match):
    root = _cifar_dir(tmp_path, content)
    with pytest.raises(ValueError, match=match) as e:
        data.load_cifar10(root)
    assert os.path.join("cifar-10-batches-py", "data_batch_1") in str(e.value)
