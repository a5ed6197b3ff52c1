"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"): prune by
|W_ij| * ||X_j||_2, compared per output row; for N:M inside every group of M inputs. No weight update."""
from __future__ import annotations

import torch

from ..sparsity import nm_mask


class InputNorms:
    """Running sum over calibration tokens of x_j^2 for every input feature j (float64)."""

    def __init__(self, in_features: int, device=None):
        self.sq = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """x: (tokens, in_features) inputs of the layer."""
        self.sq += x.double().pow(2).sum(dim=0)
        self.tokens += x.shape[0]

    def norms(self) -> torch.Tensor:
        """||X_j||_2 over all calibration tokens."""
        return self.sq.sqrt()


def wanda_scores(w: torch.Tensor, x_norm: torch.Tensor) -> torch.Tensor:
    """Wanda Eq. 1: S_ij = |W_ij| * ||X_j||_2 for W (out, in) and x_norm (in,)."""
    return w.detach().abs().double() * x_norm.to(w.device, torch.float64).unsqueeze(0)


def wanda_mask(w: torch.Tensor, x_norm: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask (out, in): the N highest scores of every M consecutive inputs of each row."""
    return nm_mask(wanda_scores(w, x_norm), n, m)
