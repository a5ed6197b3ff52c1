"""`cast teacher`: pretrain a LLaMA preset for a token budget, or export a pretrained checkpoint."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from .. import distributed
from ..distill import causal_ce
from ..errors import ConfigError
from ..jobs import fingerprint
from ..layout import parse_tokens
from ..models import build_llama, export_dtype, load_model, non_embedding_params, save_model
from ..train import BlockSampler, make_scheduler, steps_for_budget, train
from .common import setup, tokenizer_of, train_tokens


def run(cfg: dict, size: str, data_dir: str | Path, out_dir: str | Path, tracker=None) -> dict:
    spec = cfg["models"][size]
    tcfg = cfg["teacher"]
    out_dir = Path(out_dir)
    tok = tokenizer_of(data_dir, cfg)
    t0 = time.time()
    if "pretrained" in spec:  # a dense checkpoint: export it as safetensors, no training
        model = load_model(spec["pretrained"], dtype=export_dtype(cfg, size), trust_remote_code=cfg["trust_remote_code"])
        save_model(model, tok, out_dir)
        return {"pretrained": spec["pretrained"], "non_embedding_params": non_embedding_params(model),
                "params": sum(p.numel() for p in model.parameters()), "wall_s": time.time() - t0}

    strat = distributed.strategy(distributed.resolve(cfg, "teacher", f"teacher {size}"), setup(cfg),
                                 activation_checkpointing=tcfg["activation_checkpointing"])
    acc = strat.acc
    model = strat.shard(build_llama(spec, len(tok), tok, seed=cfg["seed"]))
    tokens = parse_tokens(spec.get("tokens", tcfg["tokens"]))
    steps = steps_for_budget(tokens, tcfg["batch_size"], tcfg["seqlen"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tcfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=tcfg["lr"], betas=tuple(tcfg["betas"]))
    if tcfg["lr_schedule"] == "plateau":
        sched, should_stop = _plateau(cfg, opt, steps, data_dir, model, acc, tracker)
    else:
        sched, should_stop = make_scheduler(opt, tcfg["lr_schedule"], tcfg["warmup_steps"], steps, tcfg["min_lr_ratio"]), None
    model, opt = strat.prepare(model, opt)
    sampler = BlockSampler(train_tokens(data_dir), tcfg["seqlen"], tcfg["batch_size"], cfg["seed"],
                           acc.process_index, acc.num_processes)

    def loss_fn(m, ids):
        ce = causal_ce(m(ids).logits, ids)
        return ce, {"ce": ce.detach()}

    log = (lambda step, metrics: tracker.log_metrics(metrics, step)) if tracker else None
    ckpt = out_dir.parent / ".ckpt"  # Layout.checkpoint of the teacher folder
    last = train(model, opt, sched, sampler, steps, loss_fn, accelerator=acc, grad_clip=tcfg["grad_clip"],
                 ckpt_dir=ckpt, ckpt_every=tcfg["checkpoint_every"], on_log=log, desc=f"teacher {size}",
                 fingerprint=fingerprint(cfg, "teacher", size=size), checkpointer=strat.checkpointer,
                 should_stop=should_stop)
    done = sched.last_epoch  # optimizer steps taken (the plateau schedule may end early)
    model = strat.export(model)  # fsdp2: gathered on the main process only (None elsewhere)
    if acc.is_main_process:
        save_model(model, tok, out_dir)
        shutil.rmtree(ckpt, ignore_errors=True)
    acc.wait_for_everyone()
    main = model is not None
    out = {"non_embedding_params": non_embedding_params(model) if main else None,
           "params": sum(p.numel() for p in model.parameters()) if main else None, "strategy": strat.name,
           "tokens": done * tcfg["batch_size"] * tcfg["seqlen"], "steps": done,
           "final_train_ce": last.get("train/ce"), "wall_s": time.time() - t0}
    if should_stop is not None:  # the validation curve and why training ended
        out.update(plateaued=sched.plateaued, cooldown_from_step=sched.stop_step, val_curve=sched.curve,
                   best_val_loss=min((c["val_loss"] for c in sched.curve), default=None))
    return out


def _plateau(cfg, opt, max_steps: int, data_dir, model, acc, tracker):
    """The plateau schedule (cast.plateau) and its stop test: every eval_every steps the mean NLL of
    the first eval_windows validation windows."""
    from ..data import blocks, load_tokens
    from ..perplexity import perplexity
    from ..plateau import PlateauSchedule

    tcfg, p = cfg["teacher"], cfg["teacher"]["plateau"]
    per_step = tcfg["batch_size"] * tcfg["seqlen"]
    min_tokens = parse_tokens(p["min_tokens"]) if p["min_tokens"] else 4 * max(map(parse_tokens, cfg["run"]["budgets"]))
    sched = PlateauSchedule(opt, warmup=tcfg["warmup_steps"], max_steps=max_steps, min_steps=-(-min_tokens // per_step),
                            patience=p["patience"], min_delta=p["min_delta"], cooldown=p["cooldown"],
                            min_lr_ratio=tcfg["min_lr_ratio"])
    windows = blocks(load_tokens(data_dir, "validation"), tcfg["seqlen"])[:p["eval_windows"]]
    val = windows.reshape(-1)

    def should_stop(done: int) -> bool:
        if sched.stop_step is None and (done % p["eval_every"] == 0 or done == max_steps):
            loss = perplexity(model, val, tcfg["seqlen"], tcfg["batch_size"], acc.device, desc="")["nll"]
            model.train()
            sched.observe(done, loss)
            if tracker is not None and acc.is_main_process:
                tracker.log_metrics({"teacher/val_loss": loss, "teacher/tokens": done * per_step}, done)
        if sched.finished(done):  # the cooled-down teacher's validation loss closes the curve
            sched.curve.append({"step": done, "val_loss": perplexity(model, val, tcfg["seqlen"], tcfg["batch_size"],
                                                                     acc.device, desc="")["nll"], "best": sched.best})
            return True
        return False

    return sched, should_stop


def cli(cfg: dict, args, tracker=None) -> dict:
    if args.size not in cfg["models"]:
        raise ConfigError(f"unknown size {args.size!r}; defined in 'models': {', '.join(cfg['models'])}")
    return run(cfg, args.size, args.data, args.out, tracker=tracker)
