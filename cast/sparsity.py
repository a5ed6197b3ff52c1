"""N:M sparsity bookkeeping, in one place: masks (paper Eq. 6), which axis of a weight holds the
inputs (decided once, robust to parametrizations and wrappers), target selection, hard pruning to
+0.0, and the two checks every stage uses (exactly N:M; zeros stay zero)."""
from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from .errors import SparsityError

__all__ = ["SparsityError", "nm_mask", "param_mask", "input_dim_of", "find_targets", "weight_of", "weight_matrix",
           "set_weight_matrix", "check_model", "assert_exact_nm", "keep_masks", "revived", "assert_zeros_kept",
           "nm_status", "hard_prune_", "prune_", "attach_ste_masks"]


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


def _is_conv1d(module: nn.Module) -> bool:
    """HF's Conv1D (GPT-2), also as the dynamic subclass a parametrization (ParametrizedConv1D) or
    FSDP2 (FSDPConv1D) makes of it: decided on the class hierarchy, never on the class name."""
    return any(k.__name__ == "Conv1D" and k.__module__.startswith("transformers") for k in type(module).__mro__)


def input_dim_of(module: nn.Module) -> int:
    """Axis of the weight that indexes inputs: nn.Linear (out, in) -> 1; HF Conv1D (in, out) -> 0."""
    return 0 if _is_conv1d(module) else 1


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


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
    """The raw (unscaled) weight: the parametrization's original if one is attached."""
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return module.parametrizations.weight.original
    return module.weight


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The raw weight as (outputs, inputs), whatever the module's layout (a view, no copy)."""
    w = weight_of(module)
    return w if input_dim_of(module) == 1 else w.t()


@torch.no_grad()
def set_weight_matrix(module: nn.Module, w2d: torch.Tensor) -> None:
    """Write an (outputs, inputs) matrix into the module's weight, in its own layout and dtype."""
    w = weight_of(module)
    w.copy_((w2d if input_dim_of(module) == 1 else w2d.t()).to(w.dtype))


def count_violations(w: torch.Tensor, n: int, m: int, input_dim: int = 1) -> int:
    """Number of M-groups with more than N non-zeros."""
    w2 = w if input_dim in (-1, 1) else w.t()
    nz = (w2.detach() != 0).reshape(-1, m).sum(dim=1)
    return int((nz > n).sum())


def check_model(model: nn.Module | None, targets: dict[str, nn.Module], n: int, m: int) -> dict[str, int]:
    """Violations per target (all zeros for an exact N:M model)."""
    return {name: count_violations(weight_of(mod), n, m, input_dim_of(mod)) for name, mod in targets.items()}


def assert_exact_nm(targets: dict[str, nn.Module], n: int, m: int, what: str) -> None:
    """Raise SparsityError unless every target is exactly N:M (at most N non-zeros per M inputs)."""
    bad = {k: v for k, v in check_model(None, targets, n, m).items() if v}
    if bad:
        raise SparsityError(f"{what} is not exact {n}:{m}: violating groups per layer {bad}")


def nm_status(targets: dict[str, nn.Module], n: int, m: int) -> tuple[bool, int]:
    """(is the model exact N:M, violations); a target whose inputs M does not divide is not N:M."""
    if any(weight_of(mod).shape[input_dim_of(mod)] % m for mod in targets.values()):
        return False, -1
    v = sum(check_model(None, targets, n, m).values())
    return v == 0, v


def keep_masks(targets: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Where each target's weight is non-zero (True = kept, as N:M masks; the weight's own layout)."""
    return {name: weight_of(mod).detach() != 0 for name, mod in targets.items()}


def revived(targets: dict[str, nn.Module], keep: dict[str, torch.Tensor]) -> int:
    """Entries that are non-zero where `keep` (keep_masks from before) says pruned."""
    total = 0
    for name, mod in targets.items():
        w = weight_of(mod).detach()
        total += int((w[~keep[name].to(w.device)] != 0).sum())
    return total


def assert_zeros_kept(targets: dict[str, nn.Module], keep: dict[str, torch.Tensor], what: str) -> None:
    """Raise SparsityError if any weight that was zero (keep_masks from before) is not zero any more."""
    lost = {name: r for name in targets if (r := revived({name: targets[name]}, keep))}
    if lost:
        raise SparsityError(f"{what} made pruned weights non-zero: revived entries per layer {lost}")


@torch.no_grad()
def hard_prune_(targets: dict[str, nn.Module], n: int, m: int, masks: dict[str, torch.Tensor] | None = None) -> None:
    """W <- W * M (Alg. 2 l.20), with the given masks or fresh magnitude masks. Pruned entries become
    +0.0 bit for bit (a product would leave -0.0 under negative weights, which 2:4 packers reject)."""
    for name, mod in targets.items():
        w = weight_of(mod)
        prune_(w, masks[name] if masks is not None else param_mask(w, n, m, input_dim_of(mod)))


@torch.no_grad()
def prune_(w: torch.Tensor, mask: torch.Tensor) -> None:
    """w <- w where mask, else +0.0 (also on a local shard and its mask)."""
    w.copy_(torch.where(mask.to(w.device), w, torch.zeros((), dtype=w.dtype, device=w.device)))


class MaskedSTE(nn.Module):
    """SR-STE forward: the layer sees W * M, the gradient reaches every entry of W unchanged
    (straight-through). The mask comes from a callable so it follows the optimizer's refreshes (None:
    no mask yet, the layer sees W)."""

    def __init__(self, get_mask):
        super().__init__()
        self.get_mask = get_mask

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        mask = self.get_mask()
        return w if mask is None else w + (w * mask.to(w.dtype) - w).detach()


def attach_ste_masks(targets: dict[str, nn.Module], get_mask) -> None:
    """Register MaskedSTE on every target; get_mask(name) returns that target's current mask."""
    from torch.nn.utils import parametrize

    for name, mod in targets.items():
        parametrize.register_parametrization(mod, "weight", MaskedSTE(lambda name=name: get_mask(name)))
