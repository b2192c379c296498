"""PackedWeight: a weight (and its mask) packed once into a CPU kernel format, as a named thing.

A PackedWeight is an immutable snapshot: it holds the packed values themselves and no reference to
the weight it was made from, so nothing done to that weight afterwards (optimizer steps, fused or
not, `.data` assignments, writes through numpy views) can make a forward read other values than
the ones packed. Whoever packs owns the snapshot and packs again when the weights change
(snnsparse.ops.linear.pack / snnsparse.ops.conv2d.pack).

Formats (the integer the C++ kernels take; chosen by density with the crossovers in
csrc/cpu/linear.cpp kLinearDenseMin and csrc/cpu/conv.cpp kConvDenseMin):
  linear  1 dense rows [W^T masked (K x M), colnnz]       2 compressed rows [rowptr, idx, val, colnnz]
  conv2d  1 dense slabs [Cin x kh*kw x Cout/g, tapnnz]      2 compressed rows per input channel
          3 dense 64-channel blocks (groups 1)             4 compressed rows per output channel (AVX-512, AVX2)
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch


class LinearFormat(enum.IntEnum):
    DENSE_ROWS = 1
    COMPRESSED_ROWS = 2


class ConvFormat(enum.IntEnum):
    DENSE_SLABS = 1
    COMPRESSED_IN_ROWS = 2
    DENSE_BLOCKS = 3
    COMPRESSED_OUT_ROWS = 4


@dataclass(frozen=True, eq=False)
class PackedWeight:
    kind: str                    # "linear" or "conv2d"
    format: enum.IntEnum         # LinearFormat or ConvFormat
    tensors: Tuple[torch.Tensor, ...]
    shape: Tuple[int, ...]       # the weight's shape ([M, K] or [Cout, Cin/g, kh, kw])
    dtype: torch.dtype
    density: float               # fraction of kept synapses
    groups: int = 1

    @classmethod
    def of(cls, kind: str, fmt: int, tensors: Sequence[torch.Tensor], weight: torch.Tensor,
           mask: Optional[torch.Tensor], groups: int = 1) -> "PackedWeight":
        # count_nonzero, not sum: a bool sum widens every element to int64 (0.6 s of VGG11's optimize)
        density = 1.0 if mask is None or mask.numel() == 0 else int(torch.count_nonzero(mask)) / mask.numel()
        enum_type = LinearFormat if kind == "linear" else ConvFormat
        return cls(kind, enum_type(fmt), tuple(tensors), tuple(weight.shape), weight.dtype, density, int(groups))

    def check_inference(self, x: torch.Tensor) -> None:
        """The packed forwards run on a snapshot and a zero placeholder weight: no gradient can be right
        through them, so an input that wants one is refused instead of getting zeros."""
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError(f"spike_{'conv2d' if self.kind == 'conv2d' else 'linear'}: a PackedWeight forward is "
                               f"inference-only (no gradient reaches its input); run it under torch.no_grad() or "
                               f"use the Spike* layer / ss.functional for training")

    def placeholder(self) -> torch.Tensor:
        """A zero-stride tensor of the weight's shape and dtype (one element of memory): the packed ops
        take the weight only for its shape and dtype, the values come from the packing."""
        return _placeholder(self.dtype, self.shape)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def __repr__(self) -> str:
        return (f"PackedWeight({self.kind}, format={self.format}, shape={list(self.shape)}, dtype={self.dtype}, "
                f"density={self.density:.4f}, {self.nbytes()} bytes)")


@functools.lru_cache(maxsize=512)
def _placeholder(dtype: torch.dtype, shape: Tuple[int, ...]) -> torch.Tensor:
    # Keyed by value (dtype, shape): one zero-stride tensor for every call (4 us a call to build); the
    # packed ops read only its shape and dtype, and nothing else is handed it.
    return torch.zeros((), dtype=dtype).expand(shape)
