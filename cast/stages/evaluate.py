"""`cast evaluate`: perplexity (and, when configured, zero-shot) of any exported model directory."""
from __future__ import annotations

import time
from pathlib import Path

from ..config import looks_local
from ..data import load_tokens
from ..io import read_json
from ..models import check_model_dir, load_model, pick_device
from .data import dataset_name


def ppl_key(cfg: dict, seqlen: int, metric: str = "ppl") -> str:
    """MLflow name of the perplexity (or `bpb`, bits per byte) at one window length."""
    return f"{metric}/{dataset_name(cfg)}_{cfg['evaluate']['ppl_split']}/s{seqlen}"


def bits_per_byte(nll: float, data_dir: str | Path, split: str) -> float | None:
    """Bits per byte of the evaluated text: the mean NLL per scored token (nats) / ln 2, times the
    split's tokens per UTF-8 byte (its whole joined stream; cast.data.joined_text). Comparable
    across tokenizers, unlike perplexity. None for data folders written before bytes were counted."""
    import math

    from ..io import read_json

    info = read_json(Path(data_dir) / "result.json") if (Path(data_dir) / "result.json").exists() else {}
    tokens, nbytes = info.get("tokens", {}).get(split), info.get("bytes", {}).get(split)
    return nll / math.log(2) * tokens / nbytes if tokens and nbytes else None


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
        split = cfg["evaluate"]["ppl_split"]
        tokens = load_tokens(data_dir, split)
        metrics, details = {}, {}
        for s in cfg["evaluate"]["ppl_seqlens"]:
            r = perplexity(model, tokens, s, cfg["evaluate"]["batch_size"], dev)
            key = ppl_key(cfg, s)
            metrics[key] = r["ppl"]
            bpb = bits_per_byte(r["nll"], data_dir, split)
            if bpb is not None:
                metrics[ppl_key(cfg, s, "bpb")] = bpb
            details[key] = r
        if cfg["evaluate"]["timing_runs"]:
            import numpy as np

            from ..data import blocks
            from ..perplexity import forward_ms

            ids = torch.from_numpy(np.asarray(blocks(tokens, cfg["evaluate"]["ppl_seqlens"][0])[:cfg["evaluate"]["batch_size"]],
                                              dtype=np.int64)).to(dev)
            # one batch, median of timing_runs: the export's CPU/GPU cost
            metrics["speed/forward_ms"] = forward_ms(model, ids, cfg["evaluate"]["timing_runs"])
        result = {"metrics": metrics, "details": details, "tokenizer": Path(data_dir).resolve().name}
        made = Path(model_dir).parent / "result.json"  # the job that made this model: tokens it trained on
        trained = read_json(made).get("tokens") if made.exists() else None
        if isinstance(trained, int) and trained > 0:
            metrics["model/trained_tokens"] = trained
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


def evaluate_model(cfg: dict, model_dir, data_dir, tasks_dir=None, with_zeroshot=True, finetune=None) -> dict:
    """run(), plus perplexity on every evaluate.domains corpus and, for a model fine-tuned on dataset
    `finetune`, on that dataset's test split."""
    from .finetune import downstream_dir, downstream_ppl

    res = run(cfg, model_dir, data_dir, tasks_dir=tasks_dir, with_zeroshot=with_zeroshot)
    names = list(dict.fromkeys([*cfg["evaluate"]["domains"], *([finetune] if finetune else [])]))
    if names:
        model = load_model(str(model_dir), trust_remote_code=cfg["trust_remote_code"])
        for name in names:
            res["metrics"].update(downstream_ppl(cfg, model, name, downstream_dir(cfg, name, data_dir)))
    return res


def cli(cfg: dict, args, tracker=None) -> dict:
    return evaluate_model(cfg, args.model, args.data, args.tasks_dir, not args.no_zeroshot, args.finetune)


def group_cli(cfg: dict, args, _tracker=None) -> int:
    """`cast evaluate-group` (evaluate.group: size): the model folders of one size in one process,
    which pays the imports once; one MLflow run and one eval.json per model, as `cast evaluate`."""
    from ..cli import run_job
    from ..config import results_dir
    from ..jobs import job_config, zeroshot_wanted
    from ..layout import Layout, Prefix
    from . import STAGES

    L = Layout(results_dir(cfg))
    for p in map(Prefix.parse, args.prefixes):
        zs = zeroshot_wanted(cfg, p)
        tags = {k: str(v) for k, v in p.tags().items() if v != "-"}
        run_job(cfg, STAGES["evaluate"], tags, job_config(cfg, "evaluate", prefix=str(p)),
                lambda _tr, p=p, zs=zs: evaluate_model(cfg, L.model(p), args.data, args.tasks_dir, zs, p.finetune),
                L.eval(p), model=L.model(p))
    return 0
