"""Distillation loss (paper Eq. 13): eta * KL(teacher || student) + (1 - eta) * CE.

One log-softmax per logits tensor, in fp32, over all positions (no sliced copy of the logits);
the next-token positions are a view of it. The student's serves both the CE (gathered at the
targets) and the KL, and the combined loss has a closed-form gradient (_DistillLoss). The
teacher's side is a constant, computed without autograd into its own logits' storage
(teacher_targets): no other (B, L, V) buffer.
"""
from __future__ import annotations

from typing import NamedTuple

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


class TeacherTargets(NamedTuple):
    """The teacher's side of the KL, a constant: P_t = softmax(z_t / T) at the next-token positions
    (B, L-1, V), and sum over those positions of sum_x P_t log P_t (its negative entropy)."""
    probs: torch.Tensor
    neg_entropy: torch.Tensor


def _cross(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum over positions of sum_x p(x) log q(x), one dot product per sequence: no (B, L, V)
    temporary (each is ~33 MB in the default; a fresh one costs page faults on CPU). The KL is
    then a difference of two such sums, which in fp32 resolves it to ~1e-6 nats per token (a KL
    below that logs as ~0); the loss's gradient does not use it."""
    p = p.to(log_q.dtype)  # e.g. an fp32 teacher for an fp64 student
    return sum(torch.dot(p[b].flatten(), log_q[b].flatten()) for b in range(p.shape[0]))


def targets_from_logits_(logits: torch.Tensor, temperature: float = 1.0) -> TeacherTargets:
    """TeacherTargets from teacher logits, overwriting them (fp32 logits; others are upcast into a
    new buffer): per sequence, log-softmax into a temporary, the negative entropy, then exp into
    the logits' storage."""
    z = _upcast(logits.detach())
    neg_entropy = z.new_zeros(())
    for b in range(z.shape[0]):
        log_p = F.log_softmax(z[b, :-1] / temperature if temperature != 1 else z[b, :-1], dim=-1)
        torch.exp(log_p, out=z[b, :-1])
        neg_entropy += torch.dot(z[b, :-1].flatten(), log_p.flatten())
    return TeacherTargets(z[:, :-1], neg_entropy)


@torch.no_grad()
def teacher_targets(teacher, input_ids: torch.Tensor, temperature: float = 1.0) -> TeacherTargets:
    """The frozen teacher's forward, turned into TeacherTargets in place: one (B, L, V) buffer in
    all. Under no_grad, not inference_mode: the KL's backward saves P_t, which an inference tensor
    could not be."""
    return targets_from_logits_(teacher(input_ids).logits, temperature)


class _DistillLoss(torch.autograd.Function):
    """Eq. 13 with its gradient in closed form (autograd through kl_div and gather takes ~10 passes
    over the B x L x V logits; this takes 3): for next-token positions, over `tokens` of them,
      d loss / d z = [eta T (softmax(z/T) - P_t) + (1 - eta) (softmax(z) - onehot(y))] / tokens,
    zero at the last position. Checked against autograd of _kl/_nll in tests/test_fused.py.
    KL = (sum P_t log P_t - sum P_t log P_s) / tokens * T^2, the second sum by _cross."""

    @staticmethod
    def forward(ctx, logits, p_t, neg_entropy, input_ids, eta, temperature):
        z = _upcast(logits.detach())
        full = F.log_softmax(z, dim=-1)
        full_t = full if temperature == 1 else F.log_softmax(z / temperature, dim=-1)
        ce = _nll(full[:, :-1], input_ids)
        tokens = p_t.shape[0] * p_t.shape[1]
        kl = (neg_entropy - _cross(p_t, full_t[:, :-1])) / tokens * temperature**2
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
        return grad.mul_(grad_loss / tokens).to(ctx.dtype), None, None, None, None, None


def distill_loss(student_logits, teacher_logits, input_ids, eta: float, temperature: float = 1.0,
                 targets: TeacherTargets | None = None):
    """Eq. 13. Returns (loss, ce, kl); kl is None when eta == 0 (no teacher needed). The teacher
    comes as logits (left untouched) or, from teacher_targets, as `targets`."""
    if eta == 0 or (teacher_logits is None and targets is None):
        ce = causal_ce(student_logits, input_ids)
        return ce, ce, None
    if targets is None:  # the caller keeps its logits: work on a copy (the fp32 upcast is one)
        z = _upcast(teacher_logits.detach())
        targets = targets_from_logits_(z.clone() if z.data_ptr() == teacher_logits.data_ptr() else z, temperature)
    loss, ce, kl = _DistillLoss.apply(student_logits, targets.probs, targets.neg_entropy, input_ids, eta, temperature)
    return loss, ce.detach(), kl.detach()
