"""Distillation loss (paper Eq. 13): eta * KL(teacher || student) + (1 - eta) * CE.

One log-softmax per logits tensor, in fp32, over all positions (no sliced copy of the logits);
the next-token positions are a view of it. The student's serves both the CE (gathered at the
targets) and the KL, and the combined loss has a closed-form gradient (_DistillLoss); the
teacher's is a constant computed without autograd (teacher_log_probs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 logits to fp32 (fp32 and fp64 as they are)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) at the positions that predict a next token: (B, L-1, V), a view."""
    z = _upcast(logits)
    return F.log_softmax(z / temperature if temperature != 1 else z, dim=-1)[:, :-1]


def _nll(log_p: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean -log p(next token): the CE read off log-probabilities."""
    return -log_p.gather(-1, input_ids[:, 1:, None].long()).mean()


def _kl(log_s: torch.Tensor, log_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean per-token sum_x P_t(x) log(P_t(x) / P_s(x)), times T^2."""
    tokens = log_s.shape[0] * log_s.shape[1]
    return F.kl_div(log_s, log_t, log_target=True, reduction="sum") / tokens * temperature**2


def causal_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: logits[:, :-1] predict input_ids[:, 1:]."""
    return _nll(log_probs(logits), input_ids)


def kl_teacher_student(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean per-token KL(P_t || P_s) = sum_x P_t(x) log(P_t(x) / P_s(x)), times T^2 (Hinton scaling;
    T = 1 as in Eq. 13). Computed on next-token positions (the same ones the CE sees)."""
    return _kl(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature), temperature)


def teacher_log_probs(teacher, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The teacher's log_probs as a constant: forward and log-softmax under inference_mode (no
    autograd bookkeeping), cloned out of it once, because the KL's backward saves them."""
    with torch.inference_mode():
        log_t = log_probs(teacher(input_ids).logits, temperature)
    return log_t.clone()


class _DistillLoss(torch.autograd.Function):
    """Eq. 13 with its gradient in closed form (autograd through kl_div and gather takes ~10 passes
    over the B x L x V logits; this takes 3): for next-token positions, over `tokens` of them,
      d loss / d z = [eta T (softmax(z/T) - P_t) + (1 - eta) (softmax(z) - onehot(y))] / tokens,
    zero at the last position. Checked against autograd of _kl/_nll in tests/test_fused.py."""

    @staticmethod
    def forward(ctx, logits, log_t, input_ids, eta, temperature):
        z = _upcast(logits.detach())
        full = F.log_softmax(z, dim=-1)
        full_t = full if temperature == 1 else F.log_softmax(z / temperature, dim=-1)
        ce = _nll(full[:, :-1], input_ids)
        p_t = log_t.exp()  # as _kl, keeping P_t for the backward
        kl = (p_t * (log_t - full_t[:, :-1])).sum() / (p_t.shape[0] * p_t.shape[1]) * temperature**2
        ctx.save_for_backward(full, full_t, p_t, input_ids)
        ctx.eta, ctx.temperature, ctx.dtype = eta, temperature, logits.dtype
        return eta * kl + (1 - eta) * ce, ce, kl

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kl):
        full, full_t, p_t, input_ids = ctx.saved_tensors
        eta, temp = ctx.eta, ctx.temperature
        tokens = p_t.shape[0] * p_t.shape[1]
        grad = full.exp().mul_(1 - eta) if temp != 1 else full.exp()
        if temp != 1:
            grad.add_(full_t.exp(), alpha=eta * temp)
        grad[:, :-1].sub_(p_t, alpha=eta * temp)
        grad[:, :-1].scatter_add_(-1, input_ids[:, 1:, None].long(),
                                  torch.full(input_ids[:, 1:, None].shape, eta - 1.0, dtype=grad.dtype, device=grad.device))
        grad[:, -1] = 0
        return grad.mul_(grad_loss / tokens).to(ctx.dtype), None, None, None, None


def distill_loss(student_logits, teacher_logits, input_ids, eta: float, temperature: float = 1.0, teacher_logp=None):
    """Eq. 13. Returns (loss, ce, kl); kl is None when eta == 0 (no teacher needed). The teacher
    comes as logits or, precomputed by teacher_log_probs, as `teacher_logp`."""
    if eta == 0 or (teacher_logits is None and teacher_logp is None):
        ce = causal_ce(student_logits, input_ids)
        return ce, ce, None
    log_t = teacher_logp if teacher_logp is not None else log_probs(teacher_logits, temperature).detach()
    loss, ce, kl = _DistillLoss.apply(student_logits, log_t, input_ids, eta, temperature)
    return loss, ce.detach(), kl.detach()
