from typing import NamedTuple

import torch


class Split(NamedTuple):
    """Train/test tensors: images [N, C, H, W] float32 in [0, 1], labels int64 [N]."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
