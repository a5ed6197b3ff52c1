"""SparseGPT (Frantar & Alistarh 2023, "Massive Language Models Can Be Accurately Pruned in One-Shot")
with N:M masks: layer-wise OBS pruning with error compensation on the not-yet-processed columns."""
from __future__ import annotations

import torch

from ..hessian import inverse_hessian_factor
from ..sparsity import nm_groups


def obs_prune_scores(w: torch.Tensor, u_diag: torch.Tensor) -> torch.Tensor:
    """SparseGPT mask criterion: w_ij^2 / [H^-1]_jj^2 (= w^2 / U_jj^2 on the Cholesky factor); smallest pruned."""
    return w.pow(2) / u_diag.pow(2).unsqueeze(0)


@torch.no_grad()
def sparsegpt_prune(w: torch.Tensor, h: torch.Tensor, n: int, m: int, percdamp: float = 0.01,
                    blocksize: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune W (out, in) to N:M along inputs from H (in, in); returns (pruned W in w's dtype, keep mask).

    Columns are swept left to right in blocks of `blocksize` (a multiple of M). At the first column of
    each group of M, the M-N weights of every row with the smallest w^2/[H^-1]_jj^2 are chosen for
    pruning; each column's pruning error err = (w - q)/U_jj is then spread onto the later columns
    (W[:, j:] -= err U_j,j:), inside the block at once and onto the columns after it in one matmul."""
    rows, cols = w.shape
    nm_groups(w.shape, m)  # M divides the inputs (SparsityError, a ValueError, otherwise)
    if blocksize % m:
        raise ValueError(f"blocksize {blocksize} is not a multiple of M={m}")
    W = w.detach().double().clone()
    U, dead = inverse_hessian_factor(h.to(W.device), percdamp)
    W[:, dead] = 0.0  # inputs never active in calibration
    keep = torch.ones(rows, cols, dtype=torch.bool, device=W.device)
    for b0 in range(0, cols, blocksize):
        b1 = min(b0 + blocksize, cols)
        W1, U1 = W[:, b0:b1].clone(), U[b0:b1, b0:b1]
        err1 = torch.zeros_like(W1)
        for j in range(b1 - b0):
            if j % m == 0:  # choose the group's pruned weights from the compensated current weights
                scores = obs_prune_scores(W1[:, j:j + m], torch.diagonal(U1)[j:j + m])
                drop = torch.topk(scores, m - n, dim=1, largest=False).indices
                keep[:, b0 + j:b0 + j + m].scatter_(1, drop, False)
            col = W1[:, j]
            q = col * keep[:, b0 + j]
            err = (col - q) / U1[j, j]
            W1[:, j:] -= err.unsqueeze(1) * U1[j, j:].unsqueeze(0)
            W1[:, j] = q
            err1[:, j] = err
        W[:, b0:b1] = W1
        W[:, b1:] -= err1 @ U[b0:b1, b1:]
    return torch.where(keep, W, torch.zeros((), dtype=W.dtype, device=W.device)).to(w.dtype), keep  # +0.0 pruned
