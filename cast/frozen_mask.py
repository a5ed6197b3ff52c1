"""Sparse fine-tuning with the mask frozen: the zeros of an N:M model stay exactly zero.

mask = (W != 0) of every target at load. Gradients are multiplied by the mask before the optimizer
sees them (so moments of pruned entries stay 0) and W <- W * mask after every optimizer step (so
nothing, weight decay or numerical noise included, can revive a pruned weight)."""
from __future__ import annotations

import torch
from torch import nn

from .sparsity import weight_of


def freeze_zeros(targets: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Freeze the current zero pattern of every target; returns (masks, hook handles)."""
    masks = {name: weight_of(mod).detach() != 0 for name, mod in targets.items()}
    handles = []
    for name, mod in targets.items():
        mask = masks[name]
        handles.append(weight_of(mod).register_hook(lambda g, mask=mask: g * mask.to(g.dtype)))
    params = [(weight_of(mod), masks[name]) for name, mod in targets.items()]

    @torch.no_grad()
    def reapply(opt, args, kwargs):
        for p, mask in params:
            p.mul_(mask.to(p.dtype))

    handles.append(optimizer.register_step_post_hook(reapply))
    return masks, handles


@torch.no_grad()
def revived(targets: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> int:
    """Entries that are non-zero where the frozen mask says zero (0 while the mask holds)."""
    return sum(int((weight_of(mod)[~masks[name]] != 0).sum()) for name, mod in targets.items())
