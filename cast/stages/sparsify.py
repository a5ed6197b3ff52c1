"""`cast sparsify --method NAME`: any registered method (cast.methods) -> an HF model folder: exact N:M
(checked), the dense control, or a smaller dense model (structured pruning), as the method's
`export` says."""
from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import torch

from .. import distributed, methods
from ..config import method_config
from ..io import write_json
from ..jobs import fingerprint
from ..layout import budget_label, parse_tokens
from ..models import export_dtype, save_model
from ..sparsity import assert_exact_nm, check_model, find_targets
from .common import load_dense, setup, tokenizer_of, train_tokens


def run(cfg: dict, size: str, method: str, budget, teacher_dir: str | Path, data_dir: str | Path,
        out_dir: str | Path, tracker=None, replicate: int = 0) -> dict:
    mcfg = method_config(cfg, method)
    entry = methods.get(mcfg["algorithm"])
    sp = cfg["sparsity"]
    out_dir = Path(out_dir)
    tokens_budget = parse_tokens(budget) if entry.kind == "train" else 0
    seed = cfg["seed"] + int(replicate)  # replicate k: data order and scale init of seed + k
    t0 = time.time()
    tr = cfg["train"]
    strategy = distributed.resolve(cfg, "train", f"sparsify {size}/{method}") if entry.kind == "train" else "ddp"
    acc = setup({**cfg, "seed": seed}, distributed.autocast_precision(tr["precision"], strategy) if entry.kind == "train" else "no")
    tok = tokenizer_of(data_dir, cfg)
    strat = distributed.strategy(strategy, acc, tr["precision"], tr["activation_checkpointing"]) if entry.kind == "train" else None
    model = strat.load_model(teacher_dir, cfg) if strat else load_dense(teacher_dir, cfg)  # fsdp2: rank 0 reads it
    targets = find_targets(model, sp["targets"], sp["exclude"], sp["m"])
    kw = dict(tokens=train_tokens(data_dir))
    if entry.kind == "train":
        tdtype = getattr(torch, cfg["train"]["teacher_dtype"])
        teacher = copy.deepcopy(model).to(dtype=tdtype, device=None if strat.sharded else acc.device)  # fsdp2 moves it
        teacher = teacher.eval().requires_grad_(False)
        kw.update(teacher=teacher, budget=tokens_budget, ckpt_dir=out_dir / ".ckpt", lr=cfg["models"][size].get("lr"),
                  fingerprint=fingerprint(cfg, "sparsify", size=size, method=method, budget=budget_label(budget),
                                          replicate=int(replicate)), strategy=strat)
    info = entry.load()(model, targets, {**cfg, "seed": seed}, mcfg, method=method, accelerator=acc, tracker=tracker, **kw)
    exported = info.pop("model", model)  # `smaller`: a new, smaller model; fsdp2: gathered on the main process
    if exported is None:  # fsdp2: the full model exists on the main process only
        acc.wait_for_everyone()
        return {"algorithm": mcfg["algorithm"], "kind": entry.kind, "strategy": strategy}
    if exported is not model and entry.export == "nm":
        targets = find_targets(exported, sp["targets"], sp["exclude"], sp["m"])
    model = exported.to("cpu")
    if entry.export == "nm":
        assert_exact_nm(targets, sp["n"], sp["m"], f"the {method} export")
    violations = check_model(model, targets, sp["n"], sp["m"]) if entry.export == "nm" else {}
    history = info.pop("history", [])
    if acc.is_main_process:
        save_model(model, tok, out_dir / "model", dtype=export_dtype(cfg, size))
        shutil.rmtree(out_dir / ".ckpt", ignore_errors=True)  # finished: nothing left to resume
        write_json(out_dir / "mask_stats.json", {"history": history, "export": entry.export, "targets": len(targets),
                                                  "violations": sum(violations.values()) if violations else None})
    acc.wait_for_everyone()
    if entry.export == "smaller":  # the share of the gated projection weights removed
        zeros, total = info["proj_params_dense"] - info["proj_params_kept"], info["proj_params_dense"]
    else:
        zeros = sum(int((mod.weight == 0).sum()) for mod in targets.values())
        total = sum(mod.weight.numel() for mod in targets.values())
    # tokens actually trained: whole global batches (the budget label stays in the path)
    trained = info.get("steps", 0) * cfg["train"]["batch_size"] * cfg["train"]["seqlen"] if entry.kind == "train" else 0
    return {"algorithm": mcfg["algorithm"], "kind": entry.kind, "export": entry.export, "tokens": trained,
            "budget_tokens": tokens_budget, "seed": seed, "strategy": strategy, "wall_s": time.time() - t0,
            "nm_violations": 0 if entry.export == "nm" else None, "target_sparsity": zeros / total,
            "targets": len(targets), "params": sum(p.numel() for p in model.parameters()), **info}


def cli(cfg: dict, args, tracker=None) -> dict:
    return run(cfg, args.size, args.method, budget_label(args.budget), args.teacher, args.data, args.out,
               tracker=tracker, replicate=int(args.replicate or 0))


def group_cli(cfg: dict, args, _tracker=None) -> int:
    """`cast sparsify-group` (run.group: method or size): runs at one size, each `method/run` (a budget,
    `_r{k}` for seed + k), in one process, which pays the imports once; one MLflow run and one folder
    per run, as `cast sparsify`."""
    from ..cli import run_job
    from ..config import results_dir
    from ..jobs import job_config
    from ..layout import Layout, Prefix
    from . import STAGES

    L = Layout(results_dir(cfg))
    for label in args.runs:
        p = Prefix.parse(f"{args.size}/{label}")  # the label is the folder under the size: method/run
        run_job(cfg, STAGES["sparsify"], {k: str(v) for k, v in p.tags().items()}, job_config(cfg, "sparsify", **p.job_wildcards()),
                lambda tr, p=p: run(cfg, p.size, p.method, p.budget, args.teacher, args.data, L.folder(p), tracker=tr,
                                    replicate=p.replicate), L.result(p), out=L.folder(p))
    return 0
