"""One-shot pruning baselines (no training)."""
from __future__ import annotations

from ..sparsity import hard_prune_
from . import register


@register("magnitude", "oneshot")
def magnitude(model, targets, cfg, mcfg, **_):
    """Keep the N largest |w| of every M consecutive inputs."""
    n, m = cfg["sparsity"]["n"], cfg["sparsity"]["m"]
    hard_prune_(targets, n, m)
    return {}
