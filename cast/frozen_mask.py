"""Sparse fine-tuning with the mask frozen: the zeros of an N:M model stay exactly (+0.0) zero.

mask = (W != 0) of every target at load. Gradients are multiplied by the mask before the optimizer
sees them (so moments of pruned entries stay 0) and pruned entries are reset to +0.0 after every
optimizer step (so nothing, weight decay or numerical noise included, can revive a pruned weight)."""
from __future__ import annotations

import torch
from torch import nn

from .sparsity import weight_of


def freeze_zeros(targets: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Freeze the current zero pattern of every target; returns (keep masks, hook handles)."""
    masks = {name: weight_of(mod).detach() != 0 for name, mod in targets.items()}
    handles = []
    for name, mod in targets.items():
        mask = masks[name]
        handles.append(weight_of(mod).register_hook(lambda g, mask=mask: g * mask.to(g.dtype)))
    params = [(weight_of(mod), ~masks[name]) for name, mod in targets.items()]

    @torch.no_grad()
    def reapply(opt, args, kwargs):
        for p, pruned in params:
            p.masked_fill_(pruned, 0.0)

    handles.append(optimizer.register_step_post_hook(reapply))
    return masks, handles
