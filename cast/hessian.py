"""The layer-wise second-order statistics shared by SparseGPT and GPTQ.

H = 2 X X^T / n over the n calibration tokens of a linear layer (the Hessian of its squared output
error), and the upper Cholesky factor of the dampened inverse that both sweep their columns with.
"""
from __future__ import annotations

import torch


class Hessian:
    """Running H = 2 X X^T / n of one layer's inputs (float64)."""

    def __init__(self, in_features: int, device=None):
        self.xx = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """x: (tokens, in_features) inputs of the layer."""
        x = x.double()
        self.xx += x.t() @ x
        self.tokens += x.shape[0]

    def value(self) -> torch.Tensor:
        return 2.0 * self.xx / max(self.tokens, 1)


def inverse_hessian_factor(H: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Dampened H -> (U, dead): U the upper Cholesky factor of (H + lambda I)^-1 = U^T U with
    lambda = percdamp * mean(diag H), and the inputs never active in calibration (H_ii = 0; they get
    H_ii = 1 so H stays invertible, and the callers zero their weights).

    Row i of U holds the OBS quantities of column i once columns < i are fixed: U_ii^2 = [H_F^-1]_ii
    and U_i,j>i / U_ii the update direction (SparseGPT Alg. 1; GPTQ Sec. 4, Cholesky reformulation)."""
    H = H.detach().double().clone()
    diag = torch.diagonal(H)
    dead = diag == 0
    diag[dead] = 1.0
    diag += percdamp * float(diag.mean())
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except RuntimeError as e:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise ValueError(f"Hessian not positive definite after dampening {percdamp} (raise percdamp): {e}") from None
    return U, dead
