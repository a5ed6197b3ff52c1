"""CAST (paper Alg. 2): dense forward with learnable weight scales, distillation from the frozen
dense teacher, AdamS on the sparsified weights; hard prune with the last mask and fold at the end.

The same trainer runs the training baselines, so that data, budget, teacher and LR schedule are
identical: `srste` (masked forward with a straight-through estimator, SR-STE decay, mask refresh
every T1, no scales) and the ablations as config entries (scaling: false; eta: 0; decay: srste)."""
from __future__ import annotations

import torch

from .. import distributed
from ..config import lambda_for_budget
from ..distill import distill_loss, teacher_targets
from ..optim.adams import AdamS, alpha_t
from ..sparsity import attach_ste_masks, hard_prune_, input_dim_of, prune_, weight_of
from ..train import BlockSampler, make_scheduler, steps_for_budget, train_method
from ..weight_scaling import attach_scales, fold_, fold_local_, scales_of


def param_groups(model, targets, scales, tcfg, mcfg):
    """Sparse targets (AdamS, one group per input axis), scales and the rest (plain Adam); no sparse
    group without targets (the dense control)."""
    sparse_ids, groups = set(), []
    for dim in (1, 0) if targets else ():
        ws = [weight_of(mod) for mod in targets.values() if input_dim_of(mod) == dim]
        if ws:
            groups.append({"params": ws, "sparse": True, "input_dim": dim})
            sparse_ids.update(id(w) for w in ws)
    scale_ids = {id(s) for s in scales.values()}
    if scales:
        groups.append({"params": list(scales.values()), "weight_decay": 0.0, "lr": mcfg["scaling_lr"] or tcfg["lr"]})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids | scale_ids]
    groups.append({"params": rest})
    return groups


def train_cast(model, targets, cfg, mcfg, **kw):
    """The `cast` method (and its ablations): dense forward, AdamS (or SR-STE) decay."""
    return train_sparse(model, targets, cfg, mcfg, masked_forward=False, decay=mcfg["decay"], **kw)


def train_srste(model, targets, cfg, mcfg, **kw):
    """The `srste` baseline: masked forward (straight-through), SR-STE decay, no scales."""
    return train_sparse(model, targets, cfg, {**mcfg, "scaling": False}, masked_forward=True, decay="srste", **kw)


def train_dense_kd(model, targets, cfg, mcfg, **kw):
    """The `dense_kd` control: this same trainer, data order, teacher, distillation and LR schedule,
    with no sparse group, no mask and no prune (AdamS without sparse groups is Adam)."""
    dense = {"t1": 1, "alpha_indexing": "alg2", "lambda": 0.0, "scaling": False, **mcfg}
    return train_sparse(model, {}, cfg, dense, masked_forward=False, decay="adams", **kw)


def train_sparse(model, targets, cfg, mcfg, *, masked_forward, decay, teacher, tokens, budget, method, accelerator,
                 tracker=None, ckpt_dir=None, lr=None, fingerprint="", strategy=None, **_):
    """Alg. 2, line by line:
      l.1  teacher <- frozen copy of the dense model         cast.stages.sparsify (passed in as `teacher`)
      l.4  A^k <- ones(R_k, n) for every sparse W^k           weight_scaling.attach_scales
      l.5  M^k <- N:M magnitude mask of W^k                   AdamS.step's first refresh (k = 0), Eq. 6
      l.7  for t = 1..T                                        train.train (steps from the token budget)
      l.8-10 every T1 steps: recompute M^k from |W^k|         AdamS.step -> _refresh_group (Eq. 6)
      l.11-13 dense student forward with W ⊙ expand(A),       loss_fn: student(ids) with the scale
              teacher forward without grad                      parametrization; distill.teacher_targets
      l.14 L = eta KL + (1 - eta) CE; backward                distill.distill_loss (Eq. 13)
      l.15-17 AdamS on every W^k (a_t = t/T), Adam on the rest AdamS.step (Alg. 1, Eq. 7-8)
      l.20 W^k <- W^k ⊙ M^k_T                                 sparsity.hard_prune_ (pruned entries +0.0)
      l.21 W^k <- W^k ⊙ expand(A^k); drop A^k                  weight_scaling.fold_
    (l.20-21 run as fold then prune: the same numbers, and no -0.0 from a negative scale.)
    `strategy` (cast.distributed; default: one process / DDP) shards the model and the teacher under
    fsdp2: AdamS then holds the local shards, and fold and prune run on them before the export.
    Returns the run's numbers and, as "model", the exported model (None on the other fsdp2 ranks)."""
    tcfg, sp = cfg["train"], cfg["sparsity"]
    strat = strategy or distributed.strategy("ddp", accelerator)
    steps = steps_for_budget(budget, tcfg["batch_size"], tcfg["seqlen"])  # batch_size is the global batch
    lr = lr or tcfg["lr"]
    scales = attach_scales(targets, mcfg["scaling_blocks"]) if mcfg["scaling"] else {}
    lam = lambda_for_budget(cfg, method, budget) if targets else 0.0  # dense_kd: no decay
    weights, adams = {}, None  # sharded weights (fsdp2), for the masked forward's mask
    if masked_forward and strat.sharded:  # fsdp2 shards the parametrization's original: attach it first
        attach_ste_masks(targets, lambda name: None if adams is None else
                         strat.full_mask(weights[name], adams.state[strat.local(weights[name])]["mask"]))
    if strat.sharded and teacher is not None:
        teacher = strat.shard(teacher, frozen=True)
    model = strat.shard(model)
    weights.update({name: weight_of(mod) for name, mod in targets.items()})
    scales = scales_of(targets)  # the same parameters, or their sharded replacements
    opt = AdamS(strat.localize(param_groups(model, targets, scales, {**tcfg, "lr": lr}, mcfg)), lr=lr,
                betas=tuple(tcfg["betas"]), eps=tcfg["eps"], weight_decay=tcfg["weight_decay"], lam=lam, total_steps=steps,
                t1=mcfg["t1"], n=sp["n"], m=sp["m"], alpha_indexing=mcfg["alpha_indexing"], decay=decay,
                second_moment=mcfg.get("second_moment", "mixed"), impl=tcfg.get("optimizer_impl", "foreach"))
    adams = opt  # the raw optimizer: accelerate wraps `opt`
    if strat.sharded:
        adams.sum_across = strat.all_sum
    if masked_forward:  # SR-STE: the forward sees W * M from the start (initial magnitude mask)
        adams.refresh_masks()
        if not strat.sharded:
            attach_ste_masks(targets, lambda name: adams.state[weight_of(targets[name])]["mask"])
    sched = make_scheduler(opt, tcfg["lr_schedule"], tcfg["warmup_steps"], steps, tcfg["min_lr_ratio"])
    sampler = BlockSampler(tokens, tcfg["seqlen"], tcfg["batch_size"], cfg["seed"], accelerator.process_index, accelerator.num_processes)
    model, opt = strat.prepare(model, opt)
    eta, temp = mcfg["eta"], mcfg["temperature"]

    def loss_fn(student, ids):
        s_logits = student(ids).logits
        soft = teacher_targets(teacher, ids, temp) if eta > 0 else None  # the teacher's distribution P_t
        loss, ce, kl = distill_loss(s_logits, None, ids, eta, temp, targets=soft)
        return loss, {"ce": ce.detach(), **({"kl": kl.detach()} if kl is not None else {})}


    def scale_mean() -> float:
        if not strat.sharded:
            return float(torch.cat([s.detach().flatten() for s in scales.values()]).mean())
        total, count = strat.all_sum([sum(float(strat.local(s).sum()) for s in scales.values()),
                                      sum(strat.local(s).numel() for s in scales.values())])
        return total / count

    def stats(done):
        st = {**adams.mask_stats(), "train/alpha": alpha_t(done, steps, mcfg["alpha_indexing"])}
        if scales:
            st["scale/mean"] = scale_mean()
        return st

    last, history = train_method(model, opt, sched, sampler, steps, loss_fn, tcfg=tcfg, accelerator=accelerator,
                                 ckpt_dir=ckpt_dir, tracker=tracker, stats=stats, method=method,
                                 fingerprint=fingerprint, checkpointer=strat.checkpointer)
    masks = {name: adams.state[strat.local(weight_of(mod))]["mask"] for name, mod in targets.items()}
    if strat.sharded:  # Alg. 2 l.21 then l.20 on the local shards, then one full copy on rank 0
        fold_local_(targets, strat.local)
        for name, mod in targets.items():
            prune_(strat.local(weight_of(mod)), masks[name])
        return {"steps": steps, "lambda": lam, "final": last, "history": history, "model": strat.export(model)}
    model = accelerator.unwrap_model(model)
    fold_(targets)  # Alg. 2 l.21, then l.20: exact N:M, same architecture
    hard_prune_(targets, sp["n"], sp["m"], masks)
    return {"steps": steps, "lambda": lam, "final": last, "history": history, "model": model}
