"""Teachers trained until their validation loss stops improving (config `teacher.plateau`).

A warmup-stable-decay schedule: linear warmup, then a constant learning rate while the validation
loss still improves; once it has not improved by `min_delta` nats for `patience` evaluations in a
row (never before `min_tokens`), a linear cooldown to `min_lr_ratio` over `cooldown` x the steps
done so far, and training ends. A run that never plateaus starts its cooldown in time to end at
`teacher.tokens`. The schedule is an LR scheduler, so its state (best loss, patience count, stop
step, the validation curve) is checkpointed with it and a resumed run continues it exactly.
"""
from __future__ import annotations

import math

from torch.optim.lr_scheduler import LRScheduler


class PlateauSchedule(LRScheduler):
    def __init__(self, optimizer, *, warmup: int, max_steps: int, min_steps: int, patience: int, min_delta: float,
                 cooldown: float, min_lr_ratio: float):
        self.warmup, self.max_steps, self.min_steps = warmup, max_steps, min_steps
        self.patience, self.min_delta, self.cooldown, self.min_lr_ratio = patience, min_delta, cooldown, min_lr_ratio
        self.best, self.bad, self.stop_step, self.cooldown_steps = math.inf, 0, None, 0
        self.curve: list[dict] = []  # {"step", "val_loss", "best"} per evaluation
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.stop_step is None or step < self.stop_step:
            return 1.0
        done = min(1.0, (step - self.stop_step) / max(1, self.cooldown_steps))
        return 1.0 - (1.0 - self.min_lr_ratio) * done

    def get_lr(self):
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    def _stop(self, step: int) -> None:
        self.stop_step = step
        self.cooldown_steps = max(1, min(round(self.cooldown * step), self.max_steps - step))

    def observe(self, step: int, val_loss: float) -> None:
        """One validation result after `step` optimizer steps: update patience, maybe start the cooldown."""
        self.curve.append({"step": step, "val_loss": val_loss, "best": min(self.best, val_loss)})
        if self.stop_step is not None:
            return
        if val_loss < self.best - self.min_delta:
            self.best, self.bad = val_loss, 0
        else:
            self.best, self.bad = min(self.best, val_loss), self.bad + 1
        if (self.bad >= self.patience and step >= self.min_steps) or step + round(self.cooldown * step) >= self.max_steps:
            self._stop(step)

    @property
    def plateaued(self) -> bool:
        """Whether the cooldown began because the loss stopped improving (not at the token limit)."""
        return self.stop_step is not None and self.bad >= self.patience

    def finished(self, step: int) -> bool:
        return self.stop_step is not None and step >= self.stop_step + self.cooldown_steps
