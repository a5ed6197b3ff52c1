"""AdamS (paper Alg. 1) and its fast paths: `from cast.optim import AdamS`."""
from .adams import AdamS, alpha_t

__all__ = ["AdamS", "alpha_t"]
