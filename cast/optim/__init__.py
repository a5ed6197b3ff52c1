"""Optimizers: AdamS (cast.optim.adams), its compiled fast path (fused) and C mask kernel (native)."""
from .adams import AdamS, alpha_t

__all__ = ["AdamS", "alpha_t"]
