"""Learnable weight scaling (paper Eq. 11-12): a scale per (row, contiguous column block).

Attached as a torch parametrization, so the forward sees W * expand(A) while the optimizer holds
the raw W (AdamS) and A (Adam) separately; `fold_` multiplies A into W and removes it.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .sparsity import input_dim_of


class BlockScale(nn.Module):
    """W -> W * A[r, c // (C/n)]: n contiguous column blocks per output row, A initialised to 1."""

    def __init__(self, rows: int, cols: int, blocks: int, input_dim: int = 1):
        super().__init__()
        if cols % blocks:
            raise ValueError(f"input size {cols} is not divisible by scaling_blocks={blocks}")
        self.block = cols // blocks
        self.input_dim = input_dim
        self.scale = nn.Parameter(torch.ones(rows, blocks))

    def expanded(self) -> torch.Tensor:
        """expand(A): (rows, cols), Eq. 12 (for inspection; forward broadcasts instead)."""
        a = self.scale.repeat_interleave(self.block, dim=1)
        return a if self.input_dim == 1 else a.t()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.scaled(w, self.scale.to(w.dtype))

    def scaled(self, w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """W * expand(A) as a broadcast over (rows, blocks, block): no expanded copy of A, and a
        backward that reduces over the block instead of scattering through repeat_interleave. Also
        for the local shards of W and A under fsdp2 (the same rows of both)."""
        if self.input_dim == 1:  # w: (rows, cols)
            return (w.unflatten(1, (-1, self.block)) * a[:, :, None]).flatten(1)
        return (w.unflatten(0, (-1, self.block)) * a.t()[:, None, :]).flatten(0, 1)  # w: (cols, rows)


def attach_scales(targets: dict[str, nn.Module], blocks: int) -> dict[str, nn.Parameter]:
    """Register a BlockScale on every target; returns {name: scale parameter}."""
    scales = {}
    for name, mod in targets.items():
        dim = input_dim_of(mod)
        w = mod.weight
        rows, cols = (w.shape[0], w.shape[1]) if dim == 1 else (w.shape[1], w.shape[0])
        sc = BlockScale(rows, cols, blocks, dim).to(w.device)
        parametrize.register_parametrization(mod, "weight", sc)
        scales[name] = sc.scale
    return scales


def scales_of(targets: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    """{name: scale parameter} of the targets that carry a BlockScale (as the module holds it now,
    e.g. after fsdp2 replaced it by its sharded version)."""
    return {name: mod.parametrizations.weight[0].scale for name, mod in targets.items()
            if parametrize.is_parametrized(mod, "weight") and isinstance(mod.parametrizations.weight[0], BlockScale)}


@torch.no_grad()
def fold_local_(targets: dict[str, nn.Module], local) -> None:
    """fold_ on local shards, in place: W <- W * expand(A) on the tensors `local(p)` returns for W
    and A (cast.distributed); the parametrization stays (the export drops it)."""
    for mod in targets.values():
        if parametrize.is_parametrized(mod, "weight") and isinstance(mod.parametrizations.weight[0], BlockScale):
            sc = mod.parametrizations.weight[0]
            w = local(mod.parametrizations.weight.original)
            w.copy_(sc.scaled(w, local(sc.scale).to(w.dtype)))


@torch.no_grad()
def fold_(targets: dict[str, nn.Module]) -> None:
    """W <- W * expand(A) and drop A (Alg. 2 l.21); output-preserving."""
    for mod in targets.values():
        if parametrize.is_parametrized(mod, "weight"):
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
