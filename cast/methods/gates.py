"""Pieces shared by the mask-only trainers (`maskllm`, `ddp_struct`): config defaults, a step clock
that keys every schedule and every random draw to the optimizer step (so a resumed run repeats an
uninterrupted one), weight freezing, the distillation loss, and the deterministic soft top-k gate
that ddp_struct trains.

Reads no config keys itself; each trainer documents its own."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..distill import distill_loss, teacher_targets
from ..train import BlockSampler, make_scheduler


def options(mcfg: dict, defaults: dict) -> dict:
    """The method entry with our defaults under it (the config schema may not list these keys yet)."""
    return {**defaults, **mcfg}


class StepClock:
    """(step, micro-batch) of the forward being run and the run's progress step / total.

    The step is read off the LR scheduler (LambdaLR.last_epoch = optimizer steps done), whose state
    `cast.train.save_checkpoint` stores: after a resume the clock, hence every annealed value and
    every seeded draw, is where an uninterrupted run would have it. Calls within one step (gradient
    accumulation) are numbered by `micro`."""

    def __init__(self, total_steps: int, seed: int = 0):
        self.total, self.seed = max(1, int(total_steps)), int(seed)
        self.step, self.micro = 0, 0

    def tick(self, step: int) -> None:
        self.micro = self.micro + 1 if step == self.step else 0
        self.step = int(step)

    @property
    def progress(self) -> float:
        """step / total in [0, 1) during training (the paper's iteration / train_iters)."""
        return min(1.0, self.step / self.total)

    def seed_for(self, *keys: int) -> int:
        """A 63-bit seed from (run seed, step, micro, *keys): independent streams, no global RNG."""
        state = np.random.SeedSequence([self.seed, self.step, self.micro, *map(int, keys)]).generate_state(2)
        return (int(state[0]) << 31 | int(state[1])) & (2**63 - 1)


def linear(start: float, end: float, progress: float) -> float:
    return start + (end - start) * progress


def geometric(start: float, end: float, progress: float) -> float:
    return start * (end / start) ** progress


def freeze(model: nn.Module):
    """requires_grad_(False) on every parameter; returns a function restoring the previous flags."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)

    def restore():
        for p, flag in flags:
            p.requires_grad_(flag)
    return restore


def prepared_adam(model, params, lr: float, cfg: dict, steps: int, tokens, accelerator):
    """Adam over the method's own parameters with the train.* betas/eps and schedule, this process's
    share of the batches, model and optimizer prepared: (model, optimizer, scheduler, sampler)."""
    tcfg = cfg["train"]
    opt = torch.optim.Adam(params, lr=lr, betas=tuple(tcfg["betas"]), eps=tcfg["eps"])
    sched = make_scheduler(opt, tcfg["lr_schedule"], tcfg["warmup_steps"], steps, tcfg["min_lr_ratio"])
    sampler = BlockSampler(tokens, tcfg["seqlen"], tcfg["batch_size"], cfg["seed"], accelerator.process_index,
                           accelerator.num_processes)
    model, opt = accelerator.prepare(model, opt)
    return model, opt, sched, sampler


def distill_fn(teacher, eta: float, temperature: float):
    """Paper (CAST) Eq. 13 on a student forward: eta * KL(teacher || student) + (1 - eta) * CE,
    exactly as cast_train.train_sparse computes it. Returns fn(student, ids) -> (loss, parts)."""

    def fn(student, ids):
        s_logits = student(ids).logits
        targets = teacher_targets(teacher, ids, temperature) if eta > 0 else None
        loss, ce, kl = distill_loss(s_logits, None, ids, eta, temperature, targets=targets)
        return loss, {"ce": ce.detach(), **({"kl": kl.detach()} if kl is not None else {})}
    return fn


# -- deterministic soft top-k (ddp_struct) -------------------------------------------------------
def soft_topk(s: torch.Tensor, k: float, tau: float, iters: int = 64) -> torch.Tensor:
    """g = sigmoid((s - theta) / tau) per row of s, theta chosen so that sum(g) = k exactly.

    A deterministic relaxation of the top-k indicator: its l0 surrogate sum(g) always equals the
    budget k, and as tau -> 0 it tends to the hard top-k (the units kept at export), so the trained
    and the deployed masks agree. theta comes from bisection (no graph); its gradient is the
    implicit-function one, d theta / d s_j = w_j / sum(w) with w = g (1 - g), attached by a
    zero-valued term, so a gradient step moves scores without leaving the budget (to first order).
    k >= n keeps everything (g = 1), k <= 0 nothing (still attached to s's graph, zero gradient)."""
    n = s.shape[-1]
    if k >= n - 1e-6 or k <= 0:
        return s * 0 + (1.0 if k > 0 else 0.0)
    with torch.no_grad():
        z = s.detach().double()
        lo = z.min(-1).values - 50 * tau  # sum(g) ~ n > k here
        hi = z.max(-1).values + 50 * tau  # sum(g) ~ 0 < k here
        for _ in range(iters):
            mid = (lo + hi) / 2
            above = torch.sigmoid((z - mid[..., None]) / tau).sum(-1) > k
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        theta = ((lo + hi) / 2).to(s.dtype)
        g0 = torch.sigmoid((s.detach() - theta[..., None]) / tau)
        w = g0 * (1 - g0)
    theta = theta + ((s - s.detach()) * w).sum(-1) / w.sum(-1).clamp_min(1e-30)
    return torch.sigmoid((s - theta[..., None]) / tau)


def hard_topk(s: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest scores of every row (ties: lower index first)."""
    order = torch.sort(s.detach(), dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(s, dtype=torch.bool).scatter_(-1, order, True)
