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


def freeze_zeros_sharded(targets: dict[str, nn.Module], optimizer: torch.optim.Optimizer, local, all_sum):
    """freeze_zeros under fsdp2, on the local shards (`local`, `all_sum`: cast.distributed). FSDP
    assigns the sharded gradients after its reduce-scatter, past any tensor hook, so the gradients
    are masked by the returned `mask_grads`, which the loop calls once they are complete (before
    clipping: what the hooks of freeze_zeros achieve). Returns (local keep masks, mask_grads,
    revived(): pruned entries that are non-zero now, over every process)."""
    params = [(weight_of(mod), local(weight_of(mod)) != 0) for mod in targets.values()]

    @torch.no_grad()
    def mask_grads():
        for p, keep in params:
            if p.grad is not None:
                g = p.grad.to_local()
                g.mul_(keep.to(g.dtype))

    @torch.no_grad()
    def reapply(opt, args, kwargs):
        for p, keep in params:
            local(p).masked_fill_(~keep, 0.0)

    def revived() -> int:
        return int(all_sum([float(sum(int((local(p)[~keep] != 0).sum()) for p, keep in params))])[0])

    optimizer.register_step_post_hook(reapply)
    return {name: keep for name, (_, keep) in zip(targets, params)}, mask_grads, revived
