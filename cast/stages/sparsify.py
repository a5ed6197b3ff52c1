"""`cast sparsify --method NAME`: any registered method -> exact N:M HF model directory."""
from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import torch

from .. import methods
from ..config import config_hash, method_config, parse_tokens, result_section
from ..io import write_json
from ..models import save_model
from ..sparsity import SparsityError, check_model, find_targets
from .common import load_dense, setup, tokenizer_of, train_tokens


def run(cfg: dict, size: str, method: str, budget, teacher_dir: str | Path, data_dir: str | Path,
        out_dir: str | Path, tracker=None) -> dict:
    mcfg = method_config(cfg, method)
    algo = mcfg["algorithm"]
    kind = methods.kind_of(algo)
    sp = cfg["sparsity"]
    out_dir = Path(out_dir)
    tokens_budget = parse_tokens(budget) if kind == "train" else 0
    t0 = time.time()
    acc = setup(cfg, cfg["train"]["precision"] if kind == "train" else "no")
    tok = tokenizer_of(data_dir, cfg)
    model = load_dense(teacher_dir, cfg)
    targets = find_targets(model, sp["targets"], sp["exclude"], sp["m"])
    kw = {}
    if kind == "train":
        tdtype = getattr(torch, cfg["train"]["teacher_dtype"])
        teacher = copy.deepcopy(model).to(dtype=tdtype, device=acc.device).eval().requires_grad_(False)
        fingerprint = config_hash({k: result_section(cfg, k) for k in ("train", "sparsity", "lambda_rule")} |
                                  {"seed": cfg["seed"], "method": mcfg, "model": cfg["models"][size], "budget": tokens_budget})
        kw = dict(teacher=teacher, tokens=train_tokens(data_dir), budget=tokens_budget, fingerprint=fingerprint,
                  ckpt_dir=out_dir / ".ckpt", lr=cfg["models"][size].get("lr"))
    else:
        kw = dict(tokens=train_tokens(data_dir))
    info = methods.get(algo)(model, targets, cfg, mcfg, method=method, accelerator=acc, tracker=tracker, **kw)
    model = model.to("cpu")
    violations = check_model(model, targets, sp["n"], sp["m"])
    bad = {k: v for k, v in violations.items() if v}
    if bad:
        raise SparsityError(f"export is not exact {sp['n']}:{sp['m']}: violations {bad}")
    history = info.pop("history", [])
    if acc.is_main_process:
        save_model(model, tok, out_dir / "model")
        shutil.rmtree(out_dir / ".ckpt", ignore_errors=True)  # finished: nothing left to resume
        write_json(out_dir / "mask_stats.json", {"history": history, "violations": sum(violations.values()),
                                                  "targets": len(targets)})
    acc.wait_for_everyone()
    zeros = sum(int((mod.weight == 0).sum()) for mod in targets.values())
    total = sum(mod.weight.numel() for mod in targets.values())
    return {"algorithm": algo, "kind": kind, "tokens": tokens_budget, "wall_s": time.time() - t0,
            "nm_violations": 0, "target_sparsity": zeros / total, "targets": len(targets), **info}
