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
from ..models import build_llama, load_model, non_embedding_params, save_model
from ..train import BlockSampler, make_scheduler, steps_for_budget, train
from .common import setup, tokenizer_of, train_tokens


def run(cfg: dict, size: str, data_dir: str | Path, out_dir: str | Path, tracker=None) -> dict:
    spec = cfg["models"][size]
    tcfg = cfg["teacher"]
    out_dir = Path(out_dir)
    tok = tokenizer_of(data_dir, cfg)
    t0 = time.time()
    if "pretrained" in spec:  # a dense checkpoint: export it as safetensors, no training
        model = load_model(spec["pretrained"], trust_remote_code=cfg["trust_remote_code"])
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
    sched = make_scheduler(opt, tcfg["lr_schedule"], tcfg["warmup_steps"], steps, tcfg["min_lr_ratio"])
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
                 fingerprint=fingerprint(cfg, "teacher", size=size), checkpointer=strat.checkpointer)
    model = strat.export(model)  # fsdp2: gathered on the main process only (None elsewhere)
    if acc.is_main_process:
        save_model(model, tok, out_dir)
        shutil.rmtree(ckpt, ignore_errors=True)
    acc.wait_for_everyone()
    main = model is not None
    return {"non_embedding_params": non_embedding_params(model) if main else None,
            "params": sum(p.numel() for p in model.parameters()) if main else None, "strategy": strat.name,
            "tokens": steps * tcfg["batch_size"] * tcfg["seqlen"], "steps": steps,
            "final_train_ce": last.get("train/ce"), "wall_s": time.time() - t0}


def cli(cfg: dict, args, tracker=None) -> dict:
    if args.size not in cfg["models"]:
        raise ConfigError(f"unknown size {args.size!r}; defined in 'models': {', '.join(cfg['models'])}")
    return run(cfg, args.size, args.data, args.out, tracker=tracker)
