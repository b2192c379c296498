"""Traceable forwards of SpikingJelly's spiking-transformer modules, for ss.nn.optimize_for_inference.

The forwards of Spikformer, Spike-driven Transformer (SDT v1) and their attention modules check the
input rank with Python `if`s and unpack `x.shape`, which torch.fx cannot trace; untraced, a module runs
as it is and its children see "analog" input, so every Q/K/V projection ran dense. Here each such class
(matched exactly, by module and qualified name, as convert matches classes: a subclass may compute
anything) has a twin forward that computes the same values with the same submodules, written so
that fx can trace it:
- the rank checks become torch._assert (the optimized model refuses another rank with the same
  message, at run time);
- shapes are read with x.size(i) (graph nodes, so other batch sizes / token counts still work);
- `a, b, c = t.chunk(3, dim)` of a reshaped tensor becomes indexing of the same reshaped tensor
  (the same values: chunk of [.., 3*h, ..] along dim 2 is [.., i, h, ..] of the 6-D view);
- a model's input rank (image [N, C, H, W] repeated T times, or a sequence [T, N, C, H, W]) is fixed
  to the rank example_inputs had (the optimized model's layout is fixed anyway).
The attention products themselves stay the same torch ops on the same float 0/1 tensors: their
values are integers (counts of coincident spikes) far below 2^24, exact in fp32 in any summation order,
so they equal the original's bit for bit. They are not routed to snnsparse.functional.spike_matmul:
on Spikformer-CIFAR's SSA shapes ([T=4, B=8, 12 heads] x [32, 64] spikes, CPU, 2 threads, best of 25)
torch's batched matmul took 1.1 ms (spike rate 0.06) / 0.8 ms (0.2) for (V K^T) Q, spike_matmul
("both" then "b") 14.9 / 3.3 ms, and "both" for V K^T alone with torch for the rest 2.4 / 1.6 ms: these
products are tiny (32 x 64 per head) and under 3% of the optimized model's time (profile, bench/e2e_transformer.py).
Modules with hooks get no twin (a twin would skip them).

`twin_forward(module, input_shapes)` returns the twin (a function of the module's positional inputs)
or None. Classes covered: SpikingSelfAttention (Spikformer's SSA), QKAttention / TokenQKAttention /
ChannelQKAttention (QKFormer), SpikeDrivenSelfAttention (SDT's SDSA), MaxFormer's CIFAR SSA
(_MaxCifarSSA), SpikformerBlock, and the models Spikformer, SpikeDrivenTransformer, QKFormer, MaxFormer.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn

_ATTENTION = "spikingjelly.activation_based.layer.attention"
_SPIKFORMER = "spikingjelly.activation_based.model.spikformer"
_SDT = "spikingjelly.activation_based.model.spike_driven_transformer"


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or getattr(m, "_forward_hooks_with_kwargs", None))


def _assert_rank(x, rank: int, what: str) -> None:
    torch._assert(x.dim() == rank, f"{what}: expected {rank}D input, got another rank (the optimized model keeps the "
                                   f"original's input checks)")


# -- attention modules (spikingjelly.activation_based.layer.attention) -------------------------------
def _ssa(m: nn.Module, x_seq):
    """SpikingSelfAttention.forward: Q K V spikes, x = (V K^T) Q * scale per head."""
    _assert_rank(x_seq, 4, "SpikingSelfAttention [T, N, C, L]")
    t, n, l_ = x_seq.size(0), x_seq.size(1), x_seq.size(3)
    qkv = m.qkv_lif(m.qkv_conv_bn(x_seq))
    local_dim = qkv.size(2) // 3
    torch._assert(local_dim % m.num_heads == 0, f"SpikingSelfAttention: local qkv dim is not divisible by "
                                                f"num_heads={m.num_heads}")
    qkv = qkv.reshape(t, n, 3, m.num_heads, local_dim // m.num_heads, l_)
    qt, kt, vt = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # = qkv.flatten(2, 3).chunk(3, dim=2)
    x = vt @ kt.transpose(-2, -1)
    x = x @ qt * m.scale
    x = m.attn_lif(x).reshape(t, n, local_dim, l_)
    return m.proj_lif(m.proj_conv_bn(x))


def _qka(m: nn.Module, x_seq):
    """QKAttention.forward (token or channel): attention = LIF(sum of Q over tokens or channels) * K."""
    _assert_rank(x_seq, 4, "QKAttention [T, N, C, L]")
    t, n, c, l_ = x_seq.size(0), x_seq.size(1), x_seq.size(2), x_seq.size(3)
    qk = m.qk_lif(m.qk_conv_bn(x_seq))
    qk = qk.reshape(t, n, 2, m.num_heads, c // m.num_heads, l_)
    q, k = qk[:, :, 0], qk[:, :, 1]  # = qk.flatten(2, 3).chunk(2, dim=2)
    q = torch.sum(q, dim=m.sum_dim, keepdim=True)
    x = m.attn_lif(q) * k
    x = x.flatten(2, 3)
    return m.proj_lif(m.proj_conv_bn(x))


def _sdsa(m: nn.Module, x):
    """SpikeDrivenSelfAttention.forward: x = Q * LIF(sum over tokens of K * V) per head, projected, + input."""
    _assert_rank(x, 5, "SpikeDrivenSelfAttention [T, N, C, H, W]")
    t, n, c, h, w = x.size(0), x.size(1), x.size(2), x.size(3), x.size(4)
    identity = x
    x = m.shortcut_lif(x)
    q = m.q_lif(m.q_bn(m.q_conv(x)))
    k = m.k_lif(m.k_bn(m.k_conv(x)))
    v = m.v_lif(m.v_bn(m.v_conv(x)))

    def split_heads(value):
        value = value.flatten(3).transpose(-1, -2)
        return value.reshape(t, n, h * w, m.num_heads, m.head_dim).permute(0, 1, 3, 2, 4)

    q, k, v = split_heads(q), split_heads(k), split_heads(v)
    kv = m.attn_lif((k * v).sum(dim=-2, keepdim=True))
    x = q * kv
    x = x.transpose(3, 4).reshape(t, n, c, h, w)
    return m.proj_bn(m.proj_conv(x)) + identity


def _max_cifar_ssa(m: nn.Module, x):
    """MaxFormer's _MaxCifarSSA.forward: x = Q (K^T V) * 0.125 per head on spikes, projected."""
    _assert_rank(x, 4, "MaxFormer SSA [T, N, C, L]")
    t, n, c, l_ = x.size(0), x.size(1), x.size(2), x.size(3)
    qkv = m.qkv_lif(m.qkv(m.input_lif(x)))
    qkv = qkv.reshape(t, n, 3, c, l_)  # .chunk(3, dim=2) of [T, N, 3C, L] = these three [T, N, C, L] blocks

    def heads(z):
        return z.transpose(-1, -2).reshape(t, n, l_, m.num_heads, c // m.num_heads).permute(0, 1, 3, 2, 4)

    q, k, v = heads(qkv[:, :, 0]), heads(qkv[:, :, 1]), heads(qkv[:, :, 2])
    x = q @ (k.transpose(-2, -1) @ v) * 0.125
    x = x.transpose(3, 4).reshape(t, n, c, l_)
    return m.proj(m.attn_lif(x))


# -- models ----------------------------------------------------------------------------------------
def _spikformer_block(m: nn.Module, x_seq):
    _assert_rank(x_seq, 5, "SpikformerBlock [T, N, C, H, W]")
    t, n, c, h, w = x_seq.size(0), x_seq.size(1), x_seq.size(2), x_seq.size(3), x_seq.size(4)
    x_tokens = x_seq.flatten(3)
    x_tokens = x_tokens + m.attn(x_tokens)
    x_tokens = x_tokens + m.mlp(x_tokens)
    return x_tokens.reshape(t, n, c, h, w).contiguous()


def _to_sequence(m: nn.Module, x, rank: int):
    """The models' _to_sequence for the input rank example_inputs had: an image is repeated T times."""
    layout = "images [N, C, H, W]" if rank == 4 else "sequences [T, N, C, H, W]"
    _assert_rank(x, rank, f"{type(m).__name__} (optimized for {layout}, the layout of example_inputs)")
    return x.unsqueeze(0).repeat(m.T, 1, 1, 1, 1) if rank == 4 else x


def _spikformer(rank: int):
    def forward(m: nn.Module, x):
        x_seq = m.patch_embed(_to_sequence(m, x, rank))
        for block in m.blocks:
            x_seq = block(x_seq)
        return m.head(x_seq.flatten(3).mean(dim=-1))
    return forward


def _sdt(rank: int):
    def forward(m: nn.Module, x):
        x = m.patch_embed(_to_sequence(m, x, rank))
        for block in m.blocks:
            x = block(x)
        x = m.head_lif(x.flatten(3).mean(-1))
        return m.head(x.mean(0))
    return forward


def _staged(head_lif: bool):
    """QKFormer / MaxFormer: three (patch embedding, blocks) stages, mean over tokens (and time) -> head."""
    def for_rank(rank: int):
        def forward(m: nn.Module, x):
            x = _to_sequence(m, x, rank)
            for embed, stage in ((m.patch_embed1, m.stage1), (m.patch_embed2, m.stage2), (m.patch_embed3, m.stage3)):
                x = embed(x)
                for block in stage:
                    x = block(x)
            if head_lif:
                return m.head(m.head_lif(x.flatten(3).mean(-1)).mean(0))
            return m.head(x.flatten(3).mean(dim=-1).mean(0))
        return forward
    return for_rank


_QKFORMER = "spikingjelly.activation_based.model.qkformer"
_MAXFORMER = "spikingjelly.activation_based.model.maxformer"

_FIXED: Dict[tuple, Callable] = {
    (_ATTENTION, "SpikingSelfAttention"): _ssa,
    (_ATTENTION, "QKAttention"): _qka,
    (_ATTENTION, "TokenQKAttention"): _qka,
    (_ATTENTION, "ChannelQKAttention"): _qka,
    (_ATTENTION, "SpikeDrivenSelfAttention"): _sdsa,
    (_SPIKFORMER, "SpikformerBlock"): _spikformer_block,
    (_MAXFORMER, "_MaxCifarSSA"): _max_cifar_ssa,
}
_BY_RANK: Dict[tuple, Callable] = {
    (_SPIKFORMER, "Spikformer"): _spikformer,
    (_SDT, "SpikeDrivenTransformer"): _sdt,
    (_QKFORMER, "QKFormer"): _staged(head_lif=False),
    (_MAXFORMER, "MaxFormer"): _staged(head_lif=True),
}


def covered(module: nn.Module) -> bool:
    key = (type(module).__module__, type(module).__qualname__)
    return key in _FIXED or key in _BY_RANK


def twin_forward(module: nn.Module, input_shapes: Optional[Sequence[tuple]] = None) -> Optional[Callable]:
    """The traceable twin of `module`'s forward, as a function of its positional inputs, or None (not a
    class covered here, hooks on it, or a model whose example input rank is unknown or not 4 / 5).
    input_shapes: the shapes of the module's positional inputs on example_inputs, one tuple per call."""
    key = (type(module).__module__, type(module).__qualname__)
    if _has_hooks(module):
        return None
    fn = _FIXED.get(key)
    if fn is None and key in _BY_RANK:
        ranks = {len(s[0]) for s in (input_shapes or ()) if s}
        if len(ranks) != 1 or not ranks <= {4, 5}:
            return None
        fn = _BY_RANK[key](ranks.pop())
    if fn is None:
        return None
    return lambda *args: fn(module, *args)
