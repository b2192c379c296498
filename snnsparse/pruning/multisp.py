"""MultiSp-SLT: the multi-level sparsity of Cheng et al.'s spiking transformer (arXiv 2309.13302 /
2311.12060, Algorithm 1), on a small Spikformer-style model.

Three sparsities meet in the conv patch embedding (CPM):
1. connection sparsity + binary weights: a MultiPrizeTicket (biprop) over the CPM conv
   (`MultiSpSLT.cpm`), searched with a temporary linear head (`cpm_head_logits`);
2. spiking activations: the CPM output goes through an ss.nn.LIF, so tokens are binary;
3. patch-number sparsity: patches are ranked by a score S_c(P) computed with the sparse CPM
   (here: the patch's mean firing rate over the data, time and channels) and only the top
   (1 - pr_p) patches are kept, with their position embeddings (`select_patches`).
The selected patches are a bool buffer `patch_mask` [N], so state_dict shapes never change.

Inference costs nothing for what was dropped: a pruned CPM / attention / MLP synapse is skipped by the
Spike* layers' event kernels, and a dropped patch is never computed: in eval mode the CPM runs on the
kept patches only (laid side by side; kernel = stride = patch size, so the outputs are the same dot
products), and every later layer sees only kept tokens. ss.energy.count sees the same inputs, so its
counts are the work the kernels did (tests/test_transformers.py checks them against the kernels' counts).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..functional import check_int
from ..nn import LIF, SpikeConv2d, SpikeLinear
from .masks import check_fraction


def _bn_tokens(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d over the last dim of [T, B, N, D]."""
    shape = x.shape
    return bn(x.reshape(-1, shape[-1])).reshape(shape)


class _LinBNLIF(nn.Module):
    def __init__(self, d_in, d_out, lif_kw):
        super().__init__()
        self.fc = SpikeLinear(d_in, d_out, bias=False)
        self.bn = nn.BatchNorm1d(d_out)
        self.lif = LIF(**lif_kw)

    def forward(self, x):
        return self.lif(_bn_tokens(self.bn, self.fc(x)))


class SpikingSelfAttention(nn.Module):
    """Spikformer SSA: Q, K, V spike tensors, attention = Q K^T V * scale (no softmax)."""

    def __init__(self, dim, heads, lif_kw):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {heads}")
        self.heads, self.scale = heads, 0.125
        self.q, self.k, self.v = (_LinBNLIF(dim, dim, lif_kw) for _ in range(3))
        self.attn_lif = LIF(**dict(lif_kw, v_threshold=0.5))
        self.proj = _LinBNLIF(dim, dim, lif_kw)

    def forward(self, x):  # x [T, B, N, D] spikes
        t, b, n, d = x.shape
        h = self.heads

        def split(z):
            return z.reshape(t, b, n, h, d // h).transpose(2, 3)  # [T, B, H, N, d]

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        y = (q @ k.transpose(-2, -1)) @ v * self.scale
        y = self.attn_lif(y.transpose(2, 3).reshape(t, b, n, d))
        return self.proj(y)


class MultiSpSLT(nn.Module):
    """A small Spikformer: CPM (conv patch embedding + BN + position embedding + LIF), `depth`
    blocks of SSA + spiking MLP, mean-over-tokens-and-time linear head. Input [B, C, H, W] pixels
    (repeated over T, the CPM takes them on the dense MAC path) or [T, B, C, H, W]."""

    def __init__(self, in_channels: int = 1, img_size: int = 8, patch_size: int = 2, embed_dim: int = 32,
                 num_heads: int = 2, depth: int = 1, mlp_ratio: int = 2, num_classes: int = 10, T: int = 4,
                 tau: float = 2.0, surrogate: str = "atan"):
        super().__init__()
        # T = 0 would average over no time steps (NaN logits) and patch_size = 0 divide by zero.
        for name, value, lo in (("in_channels", in_channels, 1), ("img_size", img_size, 1),
                                ("patch_size", patch_size, 1), ("embed_dim", embed_dim, 1),
                                ("num_heads", num_heads, 1), ("depth", depth, 0), ("mlp_ratio", mlp_ratio, 1),
                                ("num_classes", num_classes, 1), ("T", T, 1)):
            check_int(value, name, lo=lo, where="MultiSpSLT")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.T = T
        lif_kw = dict(tau=tau, surrogate=surrogate, detach_reset=True)
        self.num_patches = (img_size // patch_size) ** 2
        self.cpm = SpikeConv2d(in_channels, embed_dim, patch_size, stride=patch_size, bias=False)
        self.cpm_bn = nn.BatchNorm2d(embed_dim)
        self.pos = nn.Parameter(torch.zeros(self.num_patches, embed_dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.cpm_lif = LIF(**lif_kw)
        self.register_buffer("patch_mask", torch.ones(self.num_patches, dtype=torch.bool))
        self.attn = nn.ModuleList(SpikingSelfAttention(embed_dim, num_heads, lif_kw) for _ in range(depth))
        self.mlp = nn.ModuleList(nn.Sequential(_LinBNLIF(embed_dim, embed_dim * mlp_ratio, lif_kw),
                                               _LinBNLIF(embed_dim * mlp_ratio, embed_dim, lif_kw))
                                 for _ in range(depth))
        self.head = nn.Linear(embed_dim, num_classes)
        self.cpm_head = nn.Linear(embed_dim, num_classes)   # temporary head for the CPM ticket search

    def _time(self, x):
        if x.dim() == 4:
            return x.unsqueeze(0).expand(self.T, *x.shape)
        if x.dim() == 5:
            if x.shape[0] == 0:  # the mean over no time steps would give NaN logits
                raise ValueError(f"MultiSpSLT: input [T, B, C, H, W] needs T >= 1, got {tuple(x.shape)}")
            return x
        raise ValueError(f"MultiSpSLT: input must be [B, C, H, W] or [T, B, C, H, W], got {tuple(x.shape)}")

    def _kept_patches_only(self) -> bool:
        """Whether the CPM may run on the kept patches alone: some are dropped, and the BatchNorm after it
        normalises with its running statistics (per element, so which patches it sees changes nothing; a
        BatchNorm using batch statistics would normalise the kept patches by other numbers)."""
        bn = self.cpm_bn
        return (not bool(self.patch_mask.all()) and not bn.training and bn.running_mean is not None
                and self.cpm.kernel_size == self.cpm.stride and self.cpm._explicit_padding() == (0, 0)
                and self.cpm.dilation == (1, 1) and self.cpm.groups == 1)

    def _patch_strip(self, x, idx):
        """The kept patches of x [T, B, C, H, W] side by side, [T, B, C, p, N_kept * p]: the CPM (kernel =
        stride = p) on it gives exactly its outputs at the kept patches, [T, B, D, 1, N_kept], and a dropped
        patch is never read (no MAC, no SOP; the energy counter, which sees this input, agrees)."""
        p = self.cpm.kernel_size[0]
        t, b, c, h, w = x.shape
        if h % p or w % p or (h // p) * (w // p) != self.num_patches:
            raise ValueError(f"MultiSpSLT: input images {h}x{w} do not make {self.num_patches} patches of {p}x{p}")
        xr = x.reshape(t, b, c, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5, 6)   # [T, B, C, p, h, w, p]
        xr = xr.reshape(t, b, c, p, self.num_patches, p).index_select(4, idx)      # patch order = flatten(3)'s
        return xr.reshape(t, b, c, p, idx.numel() * p)

    def tokens(self, x, select: bool = True):
        """CPM spikes [T, B, N_kept, D] (all N patches with select=False). In inference (BatchNorm on its
        running statistics) with patches dropped, the CPM runs on the kept patches only."""
        x = self._time(x)
        t, b = x.shape[:2]
        if select and self._kept_patches_only():
            idx = self.patch_mask.nonzero().flatten()
            y = self.cpm(self._patch_strip(x, idx))                      # [T, B, D, 1, N_kept]
            y = self.cpm_bn(y.flatten(0, 1)).reshape(t, b, *y.shape[2:])
            return self.cpm_lif(y.flatten(3).transpose(2, 3) + self.pos.index_select(0, idx))
        y = self.cpm(x)                                                  # [T, B, D, h, w]
        y = self.cpm_bn(y.flatten(0, 1)).reshape(t, b, *y.shape[2:])
        y = y.flatten(3).transpose(2, 3) + self.pos                     # [T, B, N, D]
        if select:
            idx = self.patch_mask.nonzero().flatten()
            y = y.index_select(2, idx)                                   # kept patches + their pos emb
        return self.cpm_lif(y)

    def forward(self, x):
        z = self.tokens(x)
        for attn, mlp in zip(self.attn, self.mlp):
            z = z + attn(z)
            z = z + mlp(z)
        return self.head(z.mean(dim=(0, 2)))

    def cpm_head_logits(self, x):
        """Logits of the CPM + temporary linear head (stage 1 of Algorithm 1)."""
        return self.cpm_head(self.tokens(x, select=False).mean(dim=(0, 2)))

    @torch.no_grad()
    def patch_scores(self, x) -> torch.Tensor:
        """S_c(P): mean firing rate of each patch's CPM spikes over time, batch and channels [N]."""
        return self.tokens(x, select=False).float().mean(dim=(0, 1, 3))

    @torch.no_grad()
    def select_patches(self, scores: torch.Tensor, patch_sparsity: float) -> torch.Tensor:
        """Keep the top (1 - patch_sparsity) * N patches by score (at least one); returns the mask."""
        patch_sparsity = check_fraction(patch_sparsity, "patch_sparsity")
        if scores.shape != (self.num_patches,):
            raise ValueError(f"scores must have shape ({self.num_patches},), got {tuple(scores.shape)}")
        keep = max(1, self.num_patches - int(math.floor(patch_sparsity * self.num_patches)))
        mask = torch.zeros_like(self.patch_mask)
        mask[torch.topk(scores.float(), keep).indices] = True
        self.patch_mask.copy_(mask)
        return mask
