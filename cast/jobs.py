"""What each job depends on: one definition per stage (config slices + wildcards) that feeds
  - the Snakemake rerun fingerprint (a rule's `params: fingerprint`): a job reruns when it changes,
  - the checkpoint fingerprint (a training job resumes only a checkpoint written with the same one),
  - the MLflow params of the job's run.
Grid-selection keys (run.sizes/methods/budgets, quantize/finetune sizes/methods/apply_to, the other
datasets and schemes) are never part of a job's slice: changing them adds or drops jobs, it never
reruns a finished one. Light: no torch.
"""
from __future__ import annotations

from .config import config_hash, method_config
from .layout import Prefix

# keys that change how a job runs, never what it computes: left out of every slice, so switching
# them neither reruns finished jobs nor makes their checkpoints unusable. strategy, nodes and
# activation_checkpointing decide where and how a training job runs (sharding, placement,
# recomputation): its numbers agree up to float rounding, so a finished job is not rerun; a
# checkpoint is resumed only in its own format (cast.train.train: the checkpointer's tag)
RUNTIME_ONLY = {"train": ("malloc", "checkpoint_every", "strategy", "nodes", "activation_checkpointing"),
                "teacher": ("checkpoint_every", "strategy", "nodes", "activation_checkpointing"),
                "finetune": ("checkpoint_every",), "evaluate": ("group", "shards")}
# grid selection: which jobs exist, not what one computes
SELECTION = {"run": ("group",), "finetune": ("datasets", "sizes", "methods", "apply_to"), "quantize": ("schemes", "sizes", "methods", "apply_to"),
             "zeroshot": ("on_variants", "models")}
TASK_KEYS = ("mc_items", "lastword_items", "ppl_docs")  # what the `tasks` job builds from
FINETUNE_TRAIN_KEYS = ("betas", "eps", "precision", "teacher_dtype", "processes", "log_every")


PER_SIZE = {("run", "group"): "method", ("evaluate", "shards"): 1}  # keys also given per size; unlisted sizes get this


def per_size(cfg: dict, sec: str, key: str, size: str):
    """cfg[sec][key], a setting given once or per size ({size: value}, PER_SIZE's value for a size
    the mapping leaves out)."""
    value = cfg[sec][key]
    return value.get(size, PER_SIZE[sec, key]) if isinstance(value, dict) else value


def section(cfg: dict, key: str, keep: tuple | None = None) -> dict:
    """cfg[key] without its runtime-only and grid-selection keys (or only `keep`)."""
    drop = RUNTIME_ONLY.get(key, ()) + SELECTION.get(key, ())
    return {k: v for k, v in cfg[key].items() if (k in keep if keep else k not in drop)}


def _sparsify(cfg, size, method, budget="0", replicate=0, **_):
    from . import methods

    mcfg = method_config(cfg, method)
    out = {"method": mcfg, "sparsity": cfg["sparsity"], "seed": cfg["seed"], "replicate": int(replicate)}
    if methods.kind_of(mcfg["algorithm"]) == "train":
        out.update(train=section(cfg, "train"), lambda_rule=cfg["lambda_rule"], model=cfg["models"][size], budget=budget)
    else:  # calibration windows: seed and length (calib_seqlen, else train.seqlen)
        out["calib_seqlen"] = mcfg.get("calib_seqlen") or cfg["train"]["seqlen"]
    return out


def zeroshot_wanted(cfg: dict, prefix) -> bool:
    """Whether a model folder gets zero-shot: zeroshot.enabled, at zeroshot.sizes (null: all); variants
    only with on_variants; with `models: comparison` only teachers and each method at its largest
    budget, first seed."""
    from . import methods

    z, p = cfg["zeroshot"], (prefix if isinstance(prefix, Prefix) else Prefix.parse(prefix))
    if not z["enabled"] or ((p.finetune or p.quant) and not z["on_variants"]) or \
            (z["sizes"] is not None and p.size not in z["sizes"]):
        return False
    if z["models"] == "all" or p.is_teacher or p.method not in cfg["methods"]:
        return True
    oneshot = methods.kind_of(cfg["methods"][p.method]["algorithm"]) == "oneshot"
    return p.budget == ("0" if oneshot else cfg["run"]["budgets"][-1]) and p.replicate == 0


def _evaluate(cfg, prefix, **_):
    zs = zeroshot_wanted(cfg, prefix)
    return {"evaluate": section(cfg, "evaluate"), "zeroshot": section(cfg, "zeroshot") if zs else {"enabled": False}}


def _finetune(cfg, dataset, **_):
    return {"finetune": section(cfg, "finetune"), "dataset": cfg["finetune"]["datasets"][dataset],
            "train": section(cfg, "train", FINETUNE_TRAIN_KEYS), "sparsity": cfg["sparsity"], "seed": cfg["seed"]}


def _quantize(cfg, scheme, **_):
    return {"scheme": cfg["quantize"]["schemes"][scheme], "sparsity": cfg["sparsity"], "seed": cfg["seed"],
            "calib_seqlen": cfg["train"]["seqlen"], "calib_batch": cfg["evaluate"]["batch_size"]}


JOBS = {
    "data": lambda cfg, **_: {"data": cfg["data"], "seed": cfg["seed"]},
    "tasks": lambda cfg, **_: {"zeroshot": section(cfg, "zeroshot", TASK_KEYS), "seed": cfg["seed"]},
    "teacher": lambda cfg, size, **_: {"model": cfg["models"][size], "teacher": section(cfg, "teacher"), "seed": cfg["seed"]},
    "sparsify": _sparsify,
    "evaluate": _evaluate,
    "downstream": lambda cfg, dataset, **_: {"dataset": {**cfg["evaluate"]["domains"], **cfg["finetune"]["datasets"]}[dataset],
                                             "seed": cfg["seed"]},
    "finetune": _finetune,
    "quantize": _quantize,
    "table": lambda cfg, **_: {},
    "scaling_law": lambda cfg, **_: {"scaling_law": cfg["scaling_law"], "run": cfg["run"], "evaluate": cfg["evaluate"],
                                     "seed": cfg["seed"]},
    "report": lambda cfg, **_: {},
}


def job_config(cfg: dict, stage: str, **wildcards) -> dict:
    """The config slice one job of `stage` depends on (its MLflow params)."""
    return JOBS[stage](cfg, **wildcards)


def fingerprint(cfg: dict, stage: str, **wildcards) -> str:
    """Hash of the job's slice and its wildcards: the rerun and checkpoint fingerprint."""
    return config_hash({"stage": stage, "config": job_config(cfg, stage, **wildcards),
                        "wildcards": {k: str(v) for k, v in sorted(wildcards.items())}})
