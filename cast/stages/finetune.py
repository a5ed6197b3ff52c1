"""`cast downstream` and `cast finetune`: downstream token streams, then fine-tuning of a dense or
sparse model on them. Sparse (exact N:M) models keep their mask frozen: pruned weights are exactly
zero after every step (cast.frozen_mask); dense models are fine-tuned the same way without a mask."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from .. import downstream as DS
from ..config import results_dir
from ..distill import distill_loss, teacher_targets
from ..errors import ConfigError, SparsityError
from ..frozen_mask import freeze_zeros, freeze_zeros_sharded
from ..io import atomic_dir
from ..jobs import fingerprint
from ..layout import Layout, parse_tokens
from ..models import checkpoint_dtype, load_model, pick_device, save_model
from ..sparsity import assert_exact_nm, assert_zeros_kept, find_targets, nm_status, revived
from ..train import BlockSampler, make_scheduler, steps_for_budget, train
from .common import load_dense, setup, tokenizer_of


def dataset_config(cfg: dict, dataset: str) -> dict:
    """An extra corpus: a finetune.datasets entry, or an evaluate.domains one (the same name is the same
    corpus, checked at config time)."""
    ds = {**cfg["evaluate"]["domains"], **cfg["finetune"]["datasets"]}
    if dataset not in ds:
        raise ConfigError(f"unknown corpus {dataset!r}; defined in 'finetune.datasets' and 'evaluate.domains': {', '.join(ds)}")
    return ds[dataset]


def downstream_dir(cfg: dict, dataset: str, data_dir: str | Path) -> Path:
    """The dataset's tokens in the tokenizer of data_dir (results/data/{tokenizer})."""
    return Layout(results_dir(cfg)).downstream(dataset, Path(data_dir).name)


def prepare(cfg: dict, dataset: str, data_dir: str | Path, out_dir: str | Path) -> dict:
    """results/downstream/{dataset}: tokens_train.npy, tokens_test.npy with the pipeline tokenizer."""
    d = dataset_config(cfg, dataset)
    splits = DS.split_train_test(DS.load_texts(d, dataset), d["test_fraction"], cfg["seed"])
    tokens = DS.tokenize_splits(tokenizer_of(data_dir, cfg), splits)
    with atomic_dir(out_dir) as tmp:
        for k, arr in tokens.items():
            np.save(tmp / f"tokens_{k}.npy", arr)
    from ..data import joined_text

    return {"dataset": dataset, "source": d["source"], "documents": {k: len(v) for k, v in splits.items()},
            "tokens": {k: int(len(v)) for k, v in tokens.items()}, "bytes": {"test": len(joined_text(splits["test"]).encode())}}


def load_split(ddir: str | Path, split: str) -> np.ndarray:
    from ..data import load_tokens

    return load_tokens(ddir, split)


def downstream_ppl(cfg: dict, model, dataset: str, ddir: str | Path) -> dict:
    """Perplexity and bits per byte on an extra corpus' test split at every evaluate.ppl_seqlens:
    {"ppl/{dataset}_test/s{seqlen}": ..., "bpb/...": ...}. model: a model object or a model folder."""
    from ..perplexity import perplexity
    from .evaluate import bits_per_byte

    dev = pick_device(cfg["device"])
    if not isinstance(model, torch.nn.Module):
        model = load_model(str(model), trust_remote_code=cfg["trust_remote_code"])
    model = model.to(dev)
    tokens = load_split(ddir, "test")
    out = {}
    for s in cfg["evaluate"]["ppl_seqlens"]:
        r = perplexity(model, tokens, s, cfg["evaluate"]["batch_size"], dev, desc="")
        out[f"ppl/{dataset}_test/s{s}"] = r["ppl"]
        if (bpb := bits_per_byte(r["nll"], ddir, "test")) is not None:
            out[f"bpb/{dataset}_test/s{s}"] = bpb
    return out


def run(cfg: dict, model_dir: str | Path, data_dir: str | Path, dataset: str, out_dir: str | Path,
        teacher_dir: str | Path | None = None, tracker=None, ddir: str | Path | None = None, size: str | None = None) -> dict:
    dataset_config(cfg, dataset)
    ft, sp, tr = cfg["finetune"], cfg["sparsity"], cfg["train"]
    out_dir = Path(out_dir)
    ddir = Path(ddir) if ddir else downstream_dir(cfg, dataset, data_dir)
    t0 = time.time()
    name = distributed.resolve(cfg, "train", f"finetune {size}")
    acc = setup(cfg, distributed.autocast_precision(tr["precision"], name))
    strat = distributed.strategy(name, acc, tr["precision"], tr["activation_checkpointing"])
    tok = tokenizer_of(data_dir, cfg)
    model = strat.load_model(model_dir, cfg)  # fsdp2: rank 0 reads it, the others build it on the meta device
    targets = find_targets(model, sp["targets"], sp["exclude"])
    sparse, _ = nm_status(targets, sp["n"], sp["m"]) if acc.is_main_process or not strat.sharded else (False, 0)
    sparse = bool(strat.all_sum([float(sparse)])[0]) if strat.sharded else sparse  # rank 0's verdict
    ppl_before = downstream_ppl(cfg, model, dataset, ddir) if acc.is_main_process else {}
    model.train()
    model = strat.shard(model)
    steps = steps_for_budget(parse_tokens(ft["tokens"]), ft["batch_size"], ft["seqlen"])
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": ft["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=ft["lr"], betas=tuple(cfg["train"]["betas"]), eps=cfg["train"]["eps"])
    sched = make_scheduler(opt, "cosine", ft["warmup_steps"], steps, ft["min_lr_ratio"])
    model, wrapped = strat.prepare(model, opt)
    mask_grads = None
    if strat.sharded:  # fsdp2: local masks, gradients masked before clipping
        masks, mask_grads, count_revived = freeze_zeros_sharded(targets, opt, strat.local, strat.all_sum) if sparse \
            else ({}, None, lambda: 0)
    else:
        masks = freeze_zeros(targets, opt)[0] if sparse else {}  # after prepare: masks on the training device
        count_revived = lambda: revived(targets, masks)  # noqa: E731
    teacher = None
    if ft["eta"] > 0:
        if teacher_dir is None:
            raise ConfigError("config key 'finetune.eta': distillation needs a teacher model (--teacher)")
        tdtype = getattr(torch, cfg["train"]["teacher_dtype"])
        if strat.sharded:
            teacher = strat.shard(strat.load_model(teacher_dir, cfg, tdtype).eval().requires_grad_(False), frozen=True)
        else:
            teacher = load_dense(teacher_dir, cfg, dtype=tdtype).to(acc.device).eval().requires_grad_(False)
    sampler = BlockSampler(load_split(ddir, "train"), ft["seqlen"], ft["batch_size"], cfg["seed"],
                           acc.process_index, acc.num_processes)

    def loss_fn(student, ids):
        s_logits = student(ids).logits
        targets = teacher_targets(teacher, ids, ft["temperature"]) if teacher is not None else None
        loss, ce, kl = distill_loss(s_logits, None, ids, ft["eta"], ft["temperature"], targets=targets)
        return loss, {"ce": ce.detach(), **({"kl": kl.detach()} if kl is not None else {})}

    history = []

    def stats(done):  # the frozen mask, checked at every logged step
        st = {"finetune/revived": count_revived() if sparse else 0}
        history.append({"step": done, **st})
        return st

    log = (lambda step, metrics: tracker.log_metrics(metrics, step)) if tracker else None
    ckpt = out_dir / ".ckpt"
    job = fingerprint(cfg, "finetune", dataset=dataset, model=str(Path(model_dir).resolve()))
    last = train(model, wrapped, sched, sampler, steps, loss_fn, accelerator=acc, grad_clip=ft["grad_clip"],
                 ckpt_dir=ckpt, ckpt_every=ft["checkpoint_every"], log_every=cfg["train"]["log_every"],
                 on_log=log, stats_fn=stats, desc=f"finetune {dataset}", fingerprint=job,
                 checkpointer=strat.checkpointer, after_backward=mask_grads)
    if strat.sharded:
        lost = count_revived() if sparse else 0
        if lost:
            raise SparsityError(f"fine-tuning made pruned weights non-zero: {lost} revived entries")
        model = strat.export(model)  # the main process only
        if model is None:
            acc.wait_for_everyone()
            return {"dataset": dataset, "sparse": sparse, "steps": steps, "strategy": strat.name}
        targets = find_targets(model, sp["targets"], sp["exclude"])
    model = acc.unwrap_model(model).to("cpu").eval()
    if sparse:
        if not strat.sharded:
            assert_zeros_kept(targets, masks, "fine-tuning")
        assert_exact_nm(targets, sp["n"], sp["m"], "the fine-tuned model")
    result = {"dataset": dataset, "sparse": sparse, "steps": steps, "strategy": strat.name, "tokens": steps * ft["batch_size"] * ft["seqlen"],
              "distilled": teacher is not None, "final_train_ce": last.get("train/ce"), "nm_violations": 0 if sparse else None,
              "revived_max": max((h["finetune/revived"] for h in history), default=0), "history": history}
    if acc.is_main_process:
        save_model(model, tok, out_dir / "model", dtype=checkpoint_dtype(model_dir))  # the input's dtype
        shutil.rmtree(ckpt, ignore_errors=True)
        after = downstream_ppl(cfg, model, dataset, ddir)
        result.update(ppl_before=ppl_before, ppl_after=after)
    acc.wait_for_everyone()
    result["wall_s"] = time.time() - t0
    return result


def downstream_cli(cfg: dict, args, tracker=None) -> dict:
    return prepare(cfg, args.dataset, args.data, args.out)


def cli(cfg: dict, args, tracker=None) -> dict:
    return run(cfg, args.model, args.data, args.dataset, args.out, teacher_dir=args.teacher, tracker=tracker,
               ddir=args.downstream, size=args.size)
