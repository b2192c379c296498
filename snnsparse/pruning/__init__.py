"""Pruners that create the sparsity the kernels exploit, each usable in an ordinary torch loop.

    GradRewiring        Chen et al., IJCAI 2021 (an optimizer: w = s * relu(theta), prior step)
    LotteryTicket       Kim et al., ECCV 2022 (IMP, 25% of the rest per round, late rewinding,
                        Early-Time ticket: early_time_steps)
    MultiPrizeTicket    Cheng et al. 2023 (edge-popup / biprop strong tickets); MultiSpSLT
    CriticalityPruner   Chen et al. 2023 (criticality-guided regeneration; CriticalityChannelPruner)

A mask is a bool tensor of a weight's shape (True = keep) addressed by parameter name;
apply_masks(model, masks) writes masks into Spike* layers (weight_mask) or plain layers
(torch.nn.utils.prune). PRUNERS.md (shared notes) has the exact rules; module docstrings say
where the papers and their official code differ and which one is followed.
"""
from .criticality import (CriticalityChannelPruner, CriticalityMonitor, CriticalityPruner, criticality,  # noqa: F401
                          cubic_sparsity, prune_and_regrow, slimming_penalty)
from .gradrewiring import GradRewiring, enable_dense_weight_grad  # noqa: F401
from .lottery import LotteryTicket, early_time_steps, global_magnitude_prune, kl_to_full, lth_sparsity  # noqa: F401
from .masks import (apply_masks, broadcast_masks, check_masks, density, get_masks, masks_from_weights,  # noqa: F401
                    prunable_weights, sparsity, topk_mask)
from .multiprize import MultiPrizeTicket, biprop_gain  # noqa: F401
from .multisp import MultiSpSLT  # noqa: F401
