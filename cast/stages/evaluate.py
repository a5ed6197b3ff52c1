"""`cast evaluate`: perplexity (and, when configured, zero-shot) of any exported model directory."""
from __future__ import annotations

import time
from pathlib import Path

from ..config import looks_local
from ..data import load_tokens
from ..models import check_model_dir, load_model, pick_device
from .data import dataset_name


def ppl_key(cfg: dict, seqlen: int) -> str:
    return f"ppl/{dataset_name(cfg)}_{cfg['evaluate']['ppl_split']}/s{seqlen}"


def run(cfg: dict, model_dir: str | Path, data_dir: str | Path, tasks_dir: str | Path | None = None,
        with_zeroshot: bool = True) -> dict:
    """Perplexity at each evaluate.ppl_seqlens; with zeroshot.enabled also lm-eval 0-shot metrics
    "zs/<task>/<metric>" (task names are checked before any model loads)."""
    import tempfile

    import torch

    from ..perplexity import perplexity

    torch.set_num_threads(cfg["threads"])
    t0 = time.time()
    dev = pick_device(cfg["device"])
    if looks_local(str(model_dir)):
        check_model_dir(model_dir)
    with tempfile.TemporaryDirectory(prefix="cast_tasks_") as tmp:
        plan = zeroshot_plan(cfg, data_dir, tasks_dir, Path(tmp)) if cfg["zeroshot"]["enabled"] and with_zeroshot else None
        model = load_model(str(model_dir), trust_remote_code=cfg["trust_remote_code"]).to(dev)
        tokens = load_tokens(data_dir, cfg["evaluate"]["ppl_split"])
        metrics, details = {}, {}
        for s in cfg["evaluate"]["ppl_seqlens"]:
            r = perplexity(model, tokens, s, cfg["evaluate"]["batch_size"], dev)
            key = ppl_key(cfg, s)
            metrics[key] = r["ppl"]
            details[key] = r
        result = {"metrics": metrics, "details": details}
        if plan is not None:
            del model
            zs = zeroshot(cfg, model_dir, data_dir, plan, dev)
            metrics.update(zs.pop("metrics"))
            result["zeroshot"] = zs
    return {**result, "wall_s": time.time() - t0}


def zeroshot_plan(cfg: dict, data_dir: str | Path, tasks_dir: str | Path | None, tmp: Path) -> dict:
    """Task names, the tasks folder and lm-eval's TaskManager, checked before any model loads. Local
    tasks without tasks_dir (the `tasks` rule's folder) are built from data_dir's test split into
    tmp: same function, same seed, so the same items as the `tasks` rule writes."""
    from ..zeroshot import needs_local, resolve_task_names, task_manager_for

    names = resolve_task_names(cfg["zeroshot"]["tasks"])
    if tasks_dir is None and needs_local(names):
        from . import tasks as zs_tasks

        tasks_dir = tmp / "tasks"
        zs_tasks.run(cfg, data_dir, tasks_dir)
        where = f"built on the fly from {Path(data_dir).resolve() / 'corpus'}"
    else:
        where = str(Path(tasks_dir).resolve()) if tasks_dir else None
    return {"names": names, "tasks_dir": tasks_dir, "where": where, "task_manager": task_manager_for(names, tasks_dir)}


def zeroshot(cfg: dict, model_dir: str | Path, data_dir: str | Path, plan: dict, dev) -> dict:
    from ..zeroshot import run_zeroshot

    z = cfg["zeroshot"]
    t0 = time.time()
    tok = None if (Path(model_dir) / "tokenizer_config.json").exists() else str(Path(data_dir) / "tokenizer")
    res = run_zeroshot(model_dir, plan["names"], plan["tasks_dir"], z["batch_size"], str(dev), limit=z["limit"],
                       seed=cfg["seed"], tokenizer=tok, trust_remote_code=cfg["trust_remote_code"],
                       task_manager=plan["task_manager"])
    return {**res, "tasks": plan["names"], "tasks_dir": plan["where"], "wall_s": time.time() - t0}


def cli(cfg: dict, args, tracker=None) -> dict:
    res = run(cfg, args.model, args.data, tasks_dir=args.tasks_dir, with_zeroshot=not args.no_zeroshot)
    if args.finetune:  # fine-tuned models: also perplexity on their downstream test split
        from .finetune import downstream_ppl

        res["metrics"].update(downstream_ppl(cfg, args.model, args.finetune))
    return res
