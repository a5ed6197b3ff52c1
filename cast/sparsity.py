"""N:M masks (paper Eq. 6), target selection, hard pruning and the N:M checker."""
from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn


class SparsityError(ValueError):
    pass


def nm_groups(shape, m: int, input_dim: int = -1) -> tuple[int, int]:
    """A 2-D weight's N:M groups as an (A, M, B) layout: element (a, i, b) at (a*M + i)*B + b,
    a group being (a, 0..M-1, b). Groups along the last dim (nn.Linear): B = 1; along dim 0
    (GPT-2's Conv1D, input_dim=0): B = the row length. Raises if M does not divide the inputs."""
    rows, cols = shape
    inputs = cols if input_dim in (-1, 1) else rows
    if inputs % m:
        raise SparsityError(f"input size {inputs} is not divisible by M={m}")
    return (rows * cols // m, 1) if input_dim in (-1, 1) else (rows // m, cols)


def nm_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Eq. 6: keep the N largest |w| in every group of M consecutive inputs (last dim).

    Branch-free rank selection: an entry's rank counts the entries of its group that beat it
    (larger |w|, or equal |w| at a lower index), from the M(M-1)/2 pairwise comparisons done on
    whole columns at once; ranks < N are kept, so ties keep exactly N, lowest index first.
    """
    nm_groups(w.shape, m)
    a = w.detach().abs().reshape(-1, m)  # (groups, M); a[:, i] are strided views, no transposed copies
    rank = torch.zeros_like(a, dtype=torch.uint8)
    for i in range(m):
        for j in range(i + 1, m):
            i_wins = a[:, i] >= a[:, j]  # a tie goes to the lower index i
            rank[:, j] += i_wins
            rank[:, i] += ~i_wins
    return (rank < n).reshape(w.shape)


def nm_mask_reference(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Readable oracle for nm_mask: stable sort of -|w| per group, first N kept."""
    a = w.detach().abs().reshape(-1, m)
    order = torch.sort(a, dim=1, descending=True, stable=True).indices[:, :n]
    mask = torch.zeros_like(a, dtype=torch.bool).scatter_(1, order, True)
    return mask.reshape(w.shape)


def param_mask(p: torch.Tensor, n: int, m: int, input_dim: int = -1) -> torch.Tensor:
    """Mask in the parameter's own layout; input_dim=0 for GPT-2 Conv1D (weight stored in x out)."""
    if input_dim in (-1, 1):
        return nm_mask(p, n, m)
    return nm_mask(p.t(), n, m).t()


def input_dim_of(module: nn.Module) -> int:
    """Axis of the weight that indexes inputs: nn.Linear (out, in) -> 1; HF Conv1D (in, out) -> 0."""
    return 0 if type(module).__name__ == "Conv1D" else 1


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def find_targets(model: nn.Module, patterns: Iterable[str], exclude: Iterable[str] = (), m: int | None = None) -> dict[str, nn.Module]:
    """Linear layers whose name matches a target regex and no exclude regex.

    Raises SparsityError if none match or a target's input size is not divisible by M.
    """
    pats = [re.compile(p) for p in patterns]
    excl = [re.compile(p) for p in exclude]
    targets = {}
    for name, mod in model.named_modules():
        if not is_linear(mod):
            continue
        if any(p.search(name) for p in pats) and not any(e.search(name) for e in excl):
            targets[name] = mod
    if not targets:
        raise SparsityError(f"no layer matches sparsity.targets {list(patterns)}")
    if m is not None:
        for name, mod in targets.items():
            cols = weight_of(mod).shape[input_dim_of(mod)]
            if cols % m:
                raise SparsityError(f"target {name}: input size {cols} is not divisible by M={m} (sparsity.m)")
    return targets


def weight_of(module: nn.Module) -> torch.Tensor:
    """The raw (unscaled) weight: the parametrization's original if weight scaling is attached."""
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return module.parametrizations.weight.original
    return module.weight


def count_violations(w: torch.Tensor, n: int, m: int, input_dim: int = 1) -> int:
    """Number of M-groups with more than N non-zeros."""
    w2 = w if input_dim in (-1, 1) else w.t()
    nz = (w2.detach() != 0).reshape(-1, m).sum(dim=1)
    return int((nz > n).sum())


def check_model(model: nn.Module, targets: dict[str, nn.Module], n: int, m: int) -> dict[str, int]:
    """Violations per target (all zeros for an exact N:M model)."""
    return {name: count_violations(weight_of(mod), n, m, input_dim_of(mod)) for name, mod in targets.items()}


@torch.no_grad()
def hard_prune_(targets: dict[str, nn.Module], n: int, m: int, masks: dict[str, torch.Tensor] | None = None) -> None:
    """W <- W * M (Alg. 2 l.20), with the given masks or fresh magnitude masks."""
    for name, mod in targets.items():
        w = weight_of(mod)
        mask = masks[name] if masks is not None else param_mask(w, n, m, input_dim_of(mod))
        w.mul_(mask.to(w.dtype))


class MaskedSTE(nn.Module):
    """SR-STE forward: the layer sees W * M, the gradient reaches every entry of W unchanged
    (straight-through). The mask comes from a callable so it follows the optimizer's refreshes."""

    def __init__(self, get_mask):
        super().__init__()
        self.get_mask = get_mask

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (w * self.get_mask().to(w.dtype) - w).detach()


def attach_ste_masks(targets: dict[str, nn.Module], get_mask) -> None:
    """Register MaskedSTE on every target; get_mask(name) returns that target's current mask."""
    from torch.nn.utils import parametrize

    for name, mod in targets.items():
        parametrize.register_parametrization(mod, "weight", MaskedSTE(lambda name=name: get_mask(name)))
