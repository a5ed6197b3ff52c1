"""cast: Continuous Adaptive Sparse Training (CAST) to N:M sparsity.

Small public API (imported lazily: Snakemake parses `cast.config` on every job without torch):

    from cast import AdamS, attach_scales, fold_, distill_loss, nm_mask, find_targets, check_model, hard_prune_
"""
from importlib import import_module

__version__ = "0.2.0"

_API = {
    "AdamS": "cast.optim.adams",
    "alpha_t": "cast.optim.adams",
    "nm_mask": "cast.sparsity",
    "find_targets": "cast.sparsity",
    "check_model": "cast.sparsity",
    "hard_prune_": "cast.sparsity",
    "attach_scales": "cast.weight_scaling",
    "fold_": "cast.weight_scaling",
    "distill_loss": "cast.distill",
    "perplexity": "cast.perplexity",
}


def __getattr__(name):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'cast' has no attribute {name!r}")


__all__ = list(_API)
