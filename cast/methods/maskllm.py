"""MaskLLM (Fang et al., NeurIPS 2024, arXiv 2409.17481): learnable N:M masks on frozen weights.

Every group of M consecutive inputs of a target weight gets a categorical distribution over the
C(M, N) candidate masks S (Sec. 3.1), p = softmax(kappa * pi). Training samples a soft mask
differentiably with Gumbel-softmax, M~ = softmax((kappa * pi + g) / tau) @ S (Sec. 3.2, Eq. 4-5),
and the layer sees W * M~; only the logits pi learn (mask-only: all model weights are frozen). The
export keeps the most probable candidate of every group (argmax pi): an exact N:M mask.

Config keys (the method entry `mcfg`; name, type, default, meaning):
  prior             str         "magnitude"  prior mask of the logit init: magnitude | wanda | sparsegpt | none
  prior_strength    float       3.0          alpha in pi += alpha * std(pi) * (overlap(S_i, M0) - N^2/M)
  logit_init_std    float       0.01         std of the random normal logit init (before the prior)
  gumbel_tau_start  float       4.0          Gumbel-softmax temperature at step 0 ...
  gumbel_tau_end    float       0.05         ... annealed linearly to this at the end of the run
  kappa_start       float       100.0        logit scaling factor kappa at step 0 ...
  kappa_end         float       500.0        ... increased linearly to this
  weight_reg        float       1.0e-5       lambda of the sparse weight regulariser, decayed linearly to 0
  mask_lr           float|null  null         Adam LR of the logits; null -> the model's lr, else train.lr
  eta               float       1/3          KL weight of the distillation loss (as cast/srste)
  temperature       float       1.0          distillation temperature (not the Gumbel tau)
  calib_samples, calib_seqlen, percdamp, blocksize: the wanda / sparsegpt priors' settings, read
                  exactly as the one-shot methods read them (defaults 128, null, 0.01, 128)
The LR schedule, warmup, betas, eps, grad_clip, grad_accum, data order and checkpoints are the
shared cfg["train"] ones, as for every training method.

Decisions where the paper is silent or differs from our setting (public facts from the paper's
Sec. 3-4 and the authors' public training scripts, read, not copied):
* tau 4 -> 0.05 and kappa 1e2 -> 5e2, both linear in step / total steps; prior strength 3; logit init
  N(0, 0.01); weight_reg 1e-5 decayed linearly to 0 -- the published LLaMA-2 settings.
* Prior init: pi_i += alpha * std(pi) * (<M0, S_i> - N^2/M). For 2:4 N^2/M = 1, the published offset;
  in general it is the mean overlap of a random candidate with the prior, so it centres the bias.
* Sparse weight regularisation (Sec. 3.3): the loss is L - lambda_t * sum_layers ||W ⊙ M~||^2 with W
  detached, i.e. it rewards masks that keep large weights so that gradients through the sampled
  mask stay large; it is a sum (not a mean) over all target weights as published, so its weight
  relative to the LM loss grows with the model size. Its value is logged as train/mask_reg.
* Optimiser: Adam (no weight decay) on the logits only, shared LR schedule. The paper: AdamW, LR
  5e-5 cosine to 5e-6, 2000 steps; our LR default follows train.lr because our budgets are far
  shorter (e.g. 250 steps).
* Gumbel noise: one draw per (step, micro-batch, layer) from a generator seeded by
  (seed, step, micro, layer) -- no global RNG: a run is a function of its seed, and a resumed one
  (the logits are parameters of the parametrization, hence in the state dict that
  cast.train.save_checkpoint writes; the step comes from the checkpointed scheduler) repeats the
  uninterrupted run. Every DDP rank draws the same noise.
* The wanda / sparsegpt priors run those one-shot methods on a copy of the model and take the kept
  entries (N per group) as M0; M0 is stored per group as its candidate index (`prior` buffer).
"""
from __future__ import annotations

import copy
import itertools
import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..sparsity import SparsityError, count_violations, input_dim_of, nm_groups, param_mask, weight_of
from ..train import steps_for_budget, train_method
from . import get
from .gates import StepClock, distill_fn, freeze, linear, options, prepared_adam

DEFAULTS = get("maskllm").defaults()  # the registry's (cast/methods/__init__.py)
PRIORS = ("magnitude", "wanda", "sparsegpt", "none")


def candidate_masks(n: int, m: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """S: the C(m, n) masks with n ones among m, one per row, in itertools.combinations order."""
    if not 0 < n < m:
        raise ValueError(f"N:M candidates need 0 < N < M, got {n}:{m}")
    rows = list(itertools.combinations(range(m), n))
    s = torch.zeros(len(rows), m, dtype=dtype, device=device)
    for i, keep in enumerate(rows):
        s[i, list(keep)] = 1
    return s


class Schedule:
    """tau, kappa and sampling mode shared by all of a model's GumbelNMMask parametrizations."""

    def __init__(self, clock: StepClock, tau=(4.0, 0.05), kappa=(100.0, 500.0)):
        self.clock, self.tau_range, self.kappa_range = clock, tau, kappa
        self.hard = False  # True: the forward uses the argmax mask (evaluation / export)

    @property
    def tau(self) -> float:
        return linear(*self.tau_range, self.clock.progress)

    @property
    def kappa(self) -> float:
        return linear(*self.kappa_range, self.clock.progress)


class GumbelNMMask(nn.Module):
    """Parametrization W -> W ⊙ M~ with M~ = softmax((kappa pi + g) / tau) @ S per N:M group.

    Groups follow cast.sparsity.nm_groups: M consecutive inputs, i.e. along dim 1 of an nn.Linear
    weight (out, in) and along dim 0 of GPT-2's Conv1D weight (in, out) (input_dim=0). `logits`
    (groups, C(M, N)) is a parameter (in the state dict); `prior` holds M0's candidate index."""

    def __init__(self, shape, n: int, m: int, schedule: Schedule, index: int, input_dim: int = 1):
        super().__init__()
        self.shape, self.n, self.m, self.index = tuple(shape), n, m, index
        self.a, self.b = nm_groups(shape, m, input_dim)  # (A, M, B) layout
        self.schedule = schedule
        self.register_buffer("candidates", candidate_masks(n, m), persistent=False)
        self.logits = nn.Parameter(torch.zeros(self.a * self.b, len(self.candidates)))
        self.register_buffer("prior", torch.zeros(self.a * self.b, dtype=torch.long))
        self.last_reg = None  # ||W ⊙ M~||^2 of the last soft forward (graph to the logits)

    def groups(self, t: torch.Tensor) -> torch.Tensor:
        """Weight layout -> (groups, M)."""
        return t.reshape(self.a, self.m, self.b).transpose(1, 2).reshape(-1, self.m)

    def ungroup(self, g: torch.Tensor) -> torch.Tensor:
        """(groups, M) -> weight layout."""
        return g.reshape(self.a, self.b, self.m).transpose(1, 2).reshape(self.shape)

    def probs(self) -> torch.Tensor:
        """p = softmax(kappa * pi): the categorical over candidates, per group."""
        return torch.softmax(self.logits.detach().float() * self.schedule.kappa, dim=-1)

    def hard_mask(self) -> torch.Tensor:
        """Boolean keep mask of the argmax candidate of every group, in the weight's layout."""
        return self.ungroup(self.candidates[self.logits.detach().argmax(-1)]).bool()

    def soft_mask(self) -> torch.Tensor:
        clock, logits = self.schedule.clock, self.logits
        gen = torch.Generator(device=logits.device).manual_seed(clock.seed_for(self.index))
        u = torch.rand(logits.shape, generator=gen, device=logits.device, dtype=torch.float32)
        gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))
        y = torch.softmax((logits.float() * self.schedule.kappa + gumbel) / self.schedule.tau, dim=-1)
        return self.ungroup(y @ self.candidates)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.schedule.hard:
            return w.masked_fill(~self.hard_mask(), 0.0)
        mask = self.soft_mask()
        self.last_reg = (w.detach().float().pow(2) * mask).sum()
        return w * mask.to(w.dtype)


def prior_masks(model, targets, cfg, mcfg, *, tokens=None, method="maskllm", accelerator=None) -> dict | None:
    """Keep masks M0 (weight layout, N per group) of the configured prior; None for `none`."""
    n, m, kind = cfg["sparsity"]["n"], cfg["sparsity"]["m"], mcfg["prior"]
    if kind not in PRIORS:
        raise ValueError(f"config key 'methods.{method}.prior': {kind!r} is not one of {', '.join(PRIORS)}")
    if kind == "none":
        return None
    if kind == "magnitude":
        return {name: param_mask(weight_of(mod), n, m, input_dim_of(mod)) for name, mod in targets.items()}
    from . import oneshot  # the one-shot baselines prune a copy; their kept entries are M0

    clone = copy.deepcopy(model)
    mods = dict(clone.named_modules())
    twins = {name: mods[name] for name in targets}
    getattr(oneshot, kind)(clone, twins, cfg, mcfg, tokens=tokens, method=method, accelerator=accelerator)
    masks = {name: param_mask(weight_of(mod), n, m, input_dim_of(mod)).to(weight_of(targets[name]).device)
             for name, mod in twins.items()}
    del clone
    return masks


@torch.no_grad()
def init_logits_(p: GumbelNMMask, prior: torch.Tensor | None, strength: float, std: float, seed: int) -> None:
    """pi ~ N(0, std); with a prior M0: pi_i += strength * std(pi) * (<M0, S_i> - N^2 / M)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(p.logits.shape, generator=gen) * std
    if prior is not None:
        overlap = p.groups(prior.cpu().float()) @ p.candidates.cpu().t()  # (groups, C): shared kept slots
        logits += strength * logits.std() * (overlap - p.n * p.n / p.m)
    # M0's candidate (the one overlapping it in all N slots); without a prior, the initial argmax
    p.prior.copy_(overlap.argmax(-1) if prior is not None else logits.argmax(-1))
    p.logits.copy_(logits.to(p.logits.device))


def attach_masks(targets: dict, n: int, m: int, schedule: Schedule, priors: dict | None = None,
                 strength: float = 3.0, std: float = 0.01, seed: int = 0) -> dict[str, GumbelNMMask]:
    """Register a GumbelNMMask on every target (layer i seeds its init and noise with i)."""
    out = {}
    for i, (name, mod) in enumerate(targets.items()):
        w = weight_of(mod)
        p = GumbelNMMask(w.shape, n, m, schedule, i, input_dim_of(mod)).to(w.device)
        init_logits_(p, None if priors is None else priors[name], strength, std, seed * 1_000_003 + i)
        parametrize.register_parametrization(mod, "weight", p)
        out[name] = p
    return out


@torch.no_grad()
def mask_stats(params: dict[str, GumbelNMMask]) -> dict[str, float]:
    """Mean max-probability and entropy (nats) of the categoricals, and the share of groups whose
    argmax differs from the prior's candidate."""
    groups = max_p = ent = changed = 0.0
    for p in params.values():
        prob = p.probs()
        max_p += float(prob.max(-1).values.sum())
        ent += float(-(prob * prob.clamp_min(1e-30).log()).sum())
        changed += float((p.logits.argmax(-1) != p.prior).sum())
        groups += prob.shape[0]
    return {"mask/max_prob": max_p / groups, "mask/entropy": ent / groups, "mask/changed_vs_prior": changed / groups}


@torch.no_grad()
def export_(targets: dict, params: dict[str, GumbelNMMask]) -> dict[str, torch.Tensor]:
    """Remove the parametrizations and zero the pruned entries of the original weights (+0.0 by
    masked_fill, never -0.0); returns the boolean keep masks."""
    masks = {}
    for name, mod in targets.items():
        masks[name] = params[name].hard_mask()
        parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
        mod.weight.masked_fill_(~masks[name], 0.0)
    return masks


def train_maskllm(model, targets, cfg, mcfg, *, teacher, tokens, budget, method, accelerator, tracker=None,
                  ckpt_dir=None, lr=None, fingerprint="", **_):
    """Learn MaskLLM masks for `targets` within the token budget; the model leaves exact N:M."""
    tcfg, sp, o = cfg["train"], cfg["sparsity"], options(mcfg, DEFAULTS)
    n, m = sp["n"], sp["m"]
    steps = steps_for_budget(budget, tcfg["batch_size"], tcfg["seqlen"])  # batch_size is the global batch
    mask_lr = o["mask_lr"] or lr or tcfg["lr"]
    priors = prior_masks(model, targets, cfg, o, tokens=tokens, method=method, accelerator=accelerator)
    restore = freeze(model)
    clock = StepClock(steps, cfg["seed"])
    schedule = Schedule(clock, (o["gumbel_tau_start"], o["gumbel_tau_end"]), (o["kappa_start"], o["kappa_end"]))
    params = attach_masks(targets, n, m, schedule, priors, o["prior_strength"], o["logit_init_std"], cfg["seed"])
    model, opt, sched, sampler = prepared_adam(model, [p.logits for p in params.values()], mask_lr, cfg, steps, tokens, accelerator)
    distill = distill_fn(teacher, o["eta"], o["temperature"])

    def loss_fn(student, ids):
        clock.tick(sched.last_epoch)  # optimizer steps done = this step's index (restored on resume)
        loss, parts = distill(student, ids)
        reg = sum(p.last_reg for p in params.values())
        lam = o["weight_reg"] * (1 - clock.progress)  # Sec. 3.3, removed linearly (public scripts)
        return loss - lam * reg, {**parts, "mask_reg": reg.detach()}

    def stats(_done):
        return {**mask_stats(params), "mask/tau": schedule.tau, "mask/kappa": schedule.kappa}

    last, history = train_method(model, opt, sched, sampler, steps, loss_fn, tcfg=tcfg, accelerator=accelerator,
                                 ckpt_dir=ckpt_dir, tracker=tracker, stats=stats, method=method, fingerprint=fingerprint)
    model = accelerator.unwrap_model(model)
    final = mask_stats(params)
    masks = export_(targets, params)
    restore()
    bad = {name: v for name, mod in targets.items() if (v := count_violations(mod.weight, n, m, input_dim_of(mod)))}
    if bad:  # cannot happen: every candidate has N ones
        raise SparsityError(f"maskllm export is not exact {n}:{m}: {bad}")
    kept = sum(int(k.sum()) for k in masks.values()) / sum(k.numel() for k in masks.values())
    return {"steps": steps, "final": last, "history": history, "mask_lr": mask_lr, "prior": o["prior"],
            "kept_share": kept, "groups_changed_vs_prior": final["mask/changed_vs_prior"],
            "final_max_prob": final["mask/max_prob"], "final_entropy": final["mask/entropy"],
            "logits_per_weight": math.comb(m, n) / m}
