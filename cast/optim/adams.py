"""AdamS (paper Alg. 1, Eq. 7-8): Adam with a proportional L1 decay on masked-out weights.

Namespaced as cast.optim.AdamS (unrelated to pytorch_optimizer's "AdamS").

For a parameter group with `sparse=True` (the sparsified weights) and lam > 0, at step t
(k = t - 1 steps done):
  mask   M      refreshed from |w| when k % T1 == 0 (before the update, Alg. 2 l.8-10), Eq. 6
  moment m_t  = b1 m + (1 - b1) g                      raw gradient only, stored
  mixed  u    = m_t                                    kept (M=1)
         u    = (1 - a_t) m_t + a_t lam sign(w)        masked (M=0), Eq. 7, never stored
  second v_t  = b2 v + (1 - b2) u^2                    every entry, Eq. 8 (second_moment='mixed')
  w <- w - lr * (u / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)
with a_t = t/T (alpha_indexing 'alg2', t = 1..T) or (t-1)/T ('alg1'), clamped to 1.

second_moment='grad' is our earlier variant, NOT the paper's: kept entries build v from g^2
(plain Adam), masked ones from u^2. lam = 0 switches the decay off entirely, with either
second_moment, so AdamS(lam=0) is exactly Adam, v from g^2 everywhere (our decision: the mixing
*is* the decay). Groups without `sparse` are plain Adam(W).

decay='srste' (the paper's "CAST w SR-STE" ablation) replaces Eq. 7-8 by SR-STE's decay on the
gradient, g <- g + lam * (1 - M) * w, followed by plain Adam moments (second_moment unused).

impl='foreach' (default) is the readable reference below; impl='compiled' runs the same rule as
one torch.compile'd pass per tensor (cast.optim.fused), falling back to foreach if compilation fails.
"""
from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from ..sparsity import param_mask
from . import fused


def alpha_t(step: int, total_steps: int, indexing: str = "alg2") -> float:
    """Decay share a_t = t/T; step is 1-based. 'alg1' counts t from 0 (a_1 = 0)."""
    t = step if indexing == "alg2" else step - 1
    return min(1.0, t / max(1, total_steps))


def mixed_moment(m: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, alpha: float, lam: float) -> torch.Tensor:
    """Eq. 7 on the first moment: masked entries get (1-a) m + a lam sign(w); kept entries m."""
    return torch.where(mask, m, torch.lerp(m, torch.sign(w).mul_(lam), alpha))


SECOND_MOMENTS = ("mixed", "grad")


class AdamS(Optimizer):
    """Adam with CAST's sparsity decay (paper Alg. 1; the module docstring has the equations).

    Arguments (each but `impl` is also a param-group key: a group may override it):
      params          parameters or param-group dicts, as for any torch optimizer.
      lr              learning rate (Alg. 1's step size; an LR scheduler may change it per step). 1e-3.
      betas           (b1, b2): decay rates of the moments m and v (Alg. 1). (0.9, 0.999).
      eps             added to sqrt(v_hat) in the denominator (Alg. 1). 1e-8.
      weight_decay    decoupled AdamW decay, w <- w (1 - lr wd), on every group; not in the paper. 0.
      lam             lambda of Eq. 7, the strength of the L1 decay mixed into masked entries'
                      moment; >= 0. lam = 0 switches AdamS off: exactly Adam, v from g^2 on every
                      entry, whatever second_moment (ours: a tiny lam > 0 with 'mixed' still
                      builds kept entries' v from m_t^2, so lam -> 0 is not continuous). 0.
      total_steps     T: a_t = t/T grows to 1 over the run (Eq. 7). 1.
      t1              T1: the masks are recomputed every T1 steps, before the update (Alg. 2). 10.
      n, m            the N:M pattern: N kept per group of M consecutive inputs (Eq. 6). 2, 4.
      alpha_indexing  'alg2' (a_t = t/T, t = 1..T, Alg. 2) or 'alg1' (a_t = (t-1)/T, Alg. 1). 'alg2'.
      input_dim       the axis of a weight that runs over its inputs, where the N:M groups lie:
                      -1/1 for nn.Linear (out, in), 0 for HF's Conv1D (in, out). -1.
      sparse          whether a group is sparsified (masks, decay); groups usually set it. False.
      stat_tol        |w| below which mask_stats counts a masked weight as zero (logging only). 1e-3.
      decay           'adams' (Eq. 7-8) or 'srste' (SR-STE's g + lam (1 - M) w, then plain Adam:
                      the paper's "CAST w SR-STE" ablation). 'adams'.
      second_moment   with decay='adams' and lam > 0 on a sparse group: 'mixed' builds v from u^2
                      on every entry (Alg. 1, Eq. 8: kept entries have u = m_t, so v from m_t^2);
                      'grad' is our earlier variant, not the paper's: v from g^2 on kept entries,
                      from u^2 on masked ones. Ignored elsewhere (plain Adam moments). 'mixed'.
                      (m_t^2 is below g^2 when gradients are noisy, so under 'mixed' kept entries
                      step farther than Adam's: 1/(1 - b1) times as far at t = 1.)
      impl            'foreach' (the readable reference) or 'compiled' (cast.optim.fused:
                      torch.compile'd, same rule; config train.optimizer_impl). 'foreach'.

    Param-group keys read: `params` and every argument above but `impl`; cast.methods.cast_train
    sets `sparse` and `input_dim` per group (and `lr` for the scales).
    State per parameter: `step` (float tensor, steps done; one count per group), `exp_avg` (m_t,
    raw-gradient EMA), `exp_avg_sq` (v_t), and for sparse groups `mask` (bool, True = kept,
    from the first step or refresh_masks() on).
    Methods: refresh_masks() recomputes every sparse mask from |w| now and returns the flips;
    masks() lists the masks; mask_stats() gives logging statistics (flips at the last refresh,
    share of masked weights below stat_tol, mean |masked| / mean |kept|). Attributes: impl,
    last_flips, last_refresh_step, sum_across (None, or a callable summing a list of numbers over
    processes: set by cast.distributed when each process holds shards, so mask_stats covers all).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 lam=0.0, total_steps=1, t1=10, n=2, m=4, alpha_indexing="alg2", input_dim=-1,
                 sparse=False, stat_tol=1e-3, decay="adams", second_moment="mixed", impl="foreach"):
        if lam < 0:
            raise ValueError(f"lambda must be >= 0, got {lam}")
        if not n < m:
            raise ValueError(f"N={n} must be smaller than M={m}")
        if alpha_indexing not in ("alg1", "alg2"):
            raise ValueError(f"alpha_indexing must be 'alg1' or 'alg2', got {alpha_indexing!r}")
        if decay not in ("adams", "srste"):
            raise ValueError(f"decay must be 'adams' or 'srste', got {decay!r}")
        if impl not in ("foreach", "compiled"):
            raise ValueError(f"impl must be 'foreach' or 'compiled' (train.optimizer_impl), got {impl!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, lam=lam, decay=decay,
                        second_moment=second_moment, total_steps=total_steps, t1=t1, n=n, m=m,
                        alpha_indexing=alpha_indexing, input_dim=input_dim, sparse=sparse, stat_tol=stat_tol)
        super().__init__(params, defaults)  # add_param_group checks second_moment, also per group
        self.impl = impl
        self._flat_views = {}  # impl='compiled': flat aliases of each param's tensors (fused._flat_state)
        self.last_flips = 0
        self.last_refresh_step = None
        self.sum_across = None

    def add_param_group(self, param_group):
        sm = param_group.get("second_moment", self.defaults["second_moment"])
        if sm not in SECOND_MOMENTS:
            raise ValueError(f"second_moment must be 'mixed' (paper Alg. 1) or 'grad', got {sm!r}")
        super().add_param_group(param_group)

    # -- masks ---------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh_masks(self) -> int:
        """Recompute every sparse group's mask from |w| now (Eq. 6); returns the number of flips."""
        self.last_flips = sum(self._refresh_group(g) for g in self.param_groups if g["sparse"])
        return self.last_flips

    def masks(self) -> list[torch.Tensor]:
        return [self.state[p]["mask"] for g in self.param_groups if g["sparse"] for p in g["params"] if "mask" in self.state[p]]

    @torch.no_grad()
    def mask_stats(self) -> dict[str, float]:
        """Logging statistics: flips at the last refresh, share of masked weights below stat_tol,
        mean |masked| / mean |kept|."""
        n_masked = n_small = 0
        sum_masked = sum_kept = 0.0
        n_kept = 0
        for g in self.param_groups:
            if not g["sparse"]:
                continue
            for p in g["params"]:
                mask = self.state[p].get("mask")
                if mask is None:
                    continue
                a = p.detach().abs()
                am, ak = a[~mask], a[mask]
                n_masked += am.numel()
                n_kept += ak.numel()
                n_small += int((am < g["stat_tol"]).sum())
                sum_masked += float(am.sum())
                sum_kept += float(ak.sum())
        flips = float(self.last_flips)
        if self.sum_across is not None:
            n_masked, n_kept, n_small, sum_masked, sum_kept, flips = self.sum_across(
                [n_masked, n_kept, n_small, sum_masked, sum_kept, flips])
        if n_masked == 0:
            return {}
        return {"mask/flips": flips,
                "mask/masked_below_tol": n_small / n_masked,
                "mask/masked_over_kept": (sum_masked / n_masked) / max(sum_kept / max(n_kept, 1), 1e-30)}

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for state in self.state.values():  # Optimizer casts state to the param dtype: masks are bool
            if "mask" in state:
                state["mask"] = state["mask"].bool()
        for group in self.param_groups:  # checkpoints from before second_moment: the constructor's
            group.setdefault("second_moment", self.defaults["second_moment"])

    # -- step ------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            step = int(self.state[params[0]]["step"].item()) + 1
            for p in params:
                self.state[p]["step"].fill_(step)
            if group["sparse"] and (step - 1) % group["t1"] == 0:
                self.last_flips = self._refresh_group(group)
                self.last_refresh_step = step
            self._update_group(group, params, step)
        return loss

    @torch.no_grad()
    def _refresh_group(self, group) -> int:
        flips, ps = 0, group["params"]
        fasts = fused.refresh_masks(ps, [self.state[p].get("mask") for p in ps], group["n"], group["m"],
                                    group["input_dim"]) if self.impl == "compiled" else [None] * len(ps)
        for p, fast in zip(ps, fasts):
            state = self.state[p]
            new = fast[0] if fast else param_mask(p, group["n"], group["m"], group["input_dim"])
            if "mask" in state:
                flips += fast[1] if fast else (new != state["mask"]).sum()
            state["mask"] = new
        return int(flips)

    def _update_group(self, group, params, step):
        if self.impl == "compiled":  # the fast path; whatever it leaves (if anything) runs below
            alpha = alpha_t(step, group["total_steps"], group["alpha_indexing"])
            params = fused.update_group(group, params, self.state, step, alpha, self._flat_views)
            if not params:
                return
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        grads = [p.grad for p in params]
        decay = group["sparse"] and group["lam"] > 0
        if decay and group["decay"] == "srste":  # SR-STE: lam * (1 - M) * w added to the gradient
            grads = [torch.where(self.state[p]["mask"], g, g + group["lam"] * p) for p, g in zip(params, grads)]
            decay = False
        ms = [self.state[p]["exp_avg"] for p in params]
        vs = [self.state[p]["exp_avg_sq"] for p in params]
        bc1 = 1 - beta1**step
        bc2_sqrt = math.sqrt(1 - beta2**step)
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd)  # decoupled (AdamW) weight decay
        torch._foreach_lerp_(ms, grads, 1 - beta1)  # m_t, raw gradient
        if not decay:
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, grads, grads, 1 - beta2)
            us = ms
        else:
            alpha = alpha_t(step, group["total_steps"], group["alpha_indexing"])
            masks = [self.state[p]["mask"] for p in params]
            us = [mixed_moment(m, p, mk, alpha, group["lam"]) for m, p, mk in zip(ms, params, masks)]
            if group["second_moment"] == "mixed":  # Eq. 8: v from u^2 on every entry (kept: u = m_t)
                src = us
            else:  # 'grad', our earlier variant: v from g^2 on kept entries, u^2 on masked ones
                src = [torch.where(mk, g, u) for mk, g, u in zip(masks, grads, us)]
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, src, src, 1 - beta2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, us, denom, -lr / bc1)
