"""Distillation loss (paper Eq. 13): eta * KL(teacher || student) + (1 - eta) * CE."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: logits[:, :-1] predict input_ids[:, 1:]."""
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), input_ids[:, 1:].reshape(-1))


def kl_teacher_student(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean per-token KL(P_t || P_s) = sum_x P_t(x) log(P_t(x) / P_s(x)), times T^2 (Hinton scaling;
    T = 1 as in Eq. 13). Computed on next-token positions (the same ones the CE sees)."""
    v = student_logits.shape[-1]
    log_s = F.log_softmax(student_logits[:, :-1].reshape(-1, v).float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits[:, :-1].reshape(-1, v).float() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature**2


def distill_loss(student_logits, teacher_logits, input_ids, eta: float, temperature: float = 1.0):
    """Eq. 13. Returns (loss, ce, kl); kl is None when eta == 0 (no teacher needed)."""
    ce = causal_ce(student_logits, input_ids)
    if eta == 0 or teacher_logits is None:
        return ce, ce, None
    kl = kl_teacher_student(student_logits, teacher_logits, temperature)
    return eta * kl + (1 - eta) * ce, ce, kl
