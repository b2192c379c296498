"""fuse_conv_bn(): fold inference-mode BatchNorm into the preceding SpikeConv2d.

y = gamma * (conv(x, W*M) - mean) / sqrt(var + eps) + beta  ==  conv(x, (W*s)*M) + (beta - mean*s)
with s = gamma / sqrt(var + eps) per output channel, so the mask (and therefore the event-driven
work) is unchanged and one full pass over the activations disappears. SpikingJelly ships the same
transform (activation_based/functional/conv_bn_fusion.py); this one works on snnsparse layers,
time-major BN wrappers included.
"""
import torch
import torch.nn as nn

from ..ops.reference import masked_weight
from .layers import SpikeConv2d


def _bn_of(module: nn.Module):
    if isinstance(module, nn.BatchNorm2d):
        return module
    inner = getattr(module, "module", None)  # snnsparse.models.SeqToANN
    if isinstance(inner, nn.BatchNorm2d) and len(list(module.children())) == 1:
        return inner
    if type(module).__name__ == "SeqToANNContainer" and len(module) == 1 and isinstance(module[0], nn.BatchNorm2d):
        return module[0]
    return None


@torch.no_grad()
def fold_bn(weight: torch.Tensor, bias, bn: nn.modules.batchnorm._BatchNorm):
    """(weight, bias) of a conv / linear (output channels on dim 0) followed by the inference-mode `bn`,
    as new tensors (nothing is changed in place): W*s and (b - mean)*s + beta with
    s = gamma / sqrt(var + eps). The one place this arithmetic lives (fuse_conv_bn, optimize_for_inference)."""
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
    new_weight = weight * scale.view(-1, *([1] * (weight.dim() - 1))).to(weight.dtype)
    new_bias = shift if bias is None else bias * scale + shift
    return new_weight.detach(), new_bias.to(weight.dtype).detach()


@torch.no_grad()
def fold_replicated_columns(weight: torch.Tensor, mask: torch.Tensor, index: torch.Tensor, in_features: int):
    """(weight, mask) of a linear layer that reads x directly, for one that reads x[..., index] (a
    replication: an adaptive pool whose bins cover one element each, then flatten): column j of the
    new weight is the sum of the masked columns k with index[k] == j, computed in float64 and rounded
    once; the new mask keeps j where any of them was kept. linear(x[..., index], W*M) equals
    linear(x, W') up to the summation order. New tensors; nothing is changed in place."""
    if index.dim() != 1 or index.numel() != weight.shape[1]:
        raise ValueError(f"fold_replicated_columns: index must have one entry per input feature "
                         f"({weight.shape[1]}), got shape {tuple(index.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= in_features):
        raise ValueError(f"fold_replicated_columns: index entries must lie in [0, {in_features})")
    mask = torch.ones_like(weight, dtype=torch.bool) if mask is None else mask
    out = weight.shape[0]
    copies = weight.shape[1] // max(1, in_features)
    # Each input read by `copies` adjacent columns (flatten of [C, h, w] maps of one pixel, VGG's 7x7 pool of
    # 1x1): sums over a view, no index_add, no int32 mask (VGG11's classifier: 0.93 -> 0.3 s, 2 threads).
    adjacent = (copies * in_features == weight.shape[1] > 0 and torch.equal(
        index, torch.arange(in_features, device=index.device).repeat_interleave(copies)))
    new_weight = weight.new_empty(out, in_features)
    new_mask = torch.empty(out, in_features, dtype=torch.bool, device=weight.device)
    # Blocks of output rows: VGG's 4096x25088 weight in float64 at once was 800 MB and 2 s.
    rows = max(1, (1 << 22) // max(1, weight.shape[1]))
    for r in range(0, out, rows):
        w, m = masked_weight(weight[r:r + rows], mask[r:r + rows]), mask[r:r + rows]
        if adjacent:
            new_weight[r:r + rows] = w.reshape(-1, in_features, copies).sum(-1, dtype=torch.float64)
            new_mask[r:r + rows] = m.reshape(-1, in_features, copies).any(-1)
        else:
            w = w.to(torch.float64)
            new_weight[r:r + rows] = w.new_zeros(w.shape[0], in_features).index_add_(1, index, w)
            kept = torch.zeros(w.shape[0], in_features, dtype=torch.int32, device=weight.device)
            new_mask[r:r + rows] = kept.index_add_(1, index, m.to(torch.int32)) > 0
    return new_weight, new_mask


@torch.no_grad()
def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a SpikeConv2d in an nn.Sequential into the conv
    (for inference: uses the running statistics). The BN becomes nn.Identity. Returns the model."""
    if model.training:
        raise ValueError("fuse_conv_bn: call model.eval() first (folding uses BN's running statistics)")
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], _bn_of(seq[i + 1])
            if not isinstance(conv, SpikeConv2d) or bn is None or not bn.track_running_stats:
                continue
            weight, bias = fold_bn(conv.weight, conv.bias, bn)
            conv.weight.copy_(weight)
            if conv.bias is None:
                conv.bias = nn.Parameter(bias)
            else:
                conv.bias.copy_(bias)
            seq[i + 1] = nn.Identity()
    return model
