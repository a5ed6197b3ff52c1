# Helpers, validation and the results layout. No torch import here: every job re-parses this.
import hashlib
import json
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(workflow.basedir)))  # the repo root holds the cast package
from cast.config import ConfigError, budget_label, config_hash, method_sizes, resolve_config, result_section
from cast.methods import KINDS
from cast.stages.tables import parse_prefix

try:
    CFG = resolve_config(config)
except ConfigError as e:
    sys.stderr.write(f"cast: invalid config: {e}\n")
    sys.exit(1)

R = Path(CFG["results_dir"])
PY = sys.executable
CAST = f"{PY} -m cast.cli"


def launcher(processes):
    """`cast` under torchrun when a job asks for several processes (DDP; gloo on CPU, nccl on GPU)."""
    if processes > 1:
        return f"{PY} -m torch.distributed.run --standalone --nproc_per_node {int(processes)} -m cast.cli"
    return CAST


def _write_resolved_config():
    """The validated config, content-addressed, handed to every job (`--config`)."""
    text = yaml.safe_dump(CFG, sort_keys=True)
    path = R / ".config" / f"{config_hash(CFG)}.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


CONFIG_FILE = _write_resolved_config()


def section_hash(*keys, **extra):
    """Fingerprint of the config slices a job depends on: a rule reruns when these change."""
    return config_hash({"sections": {k: result_section(CFG, k) for k in keys}, **extra})


def method_kind(method):
    return KINDS[CFG["methods"][method]["algorithm"]]


def budgets_of(method):
    """One-shot methods spend no tokens (budget label '0'); sweep methods train at every budget,
    the other training methods at the largest one (the comparison point)."""
    if method_kind(method) == "oneshot":
        return ["0"]
    budgets = [budget_label(b) for b in CFG["run"]["budgets"]]
    return budgets if method in CFG["run"]["sweep_methods"] else budgets[-1:]


def sparse_prefixes():
    return [f"{s}/{m}/{b}" for s in CFG["run"]["sizes"] for m in CFG["run"]["methods"]
            if s in method_sizes(CFG, m) for b in budgets_of(m)]


def model_prefixes():
    return [f"{s}/teacher" for s in CFG["run"]["sizes"]] + sparse_prefixes()


def eval_tags(prefix):
    """CLI tags of a model folder (a teacher has no budget)."""
    return " ".join(f"--{k} {v}" for k, v in parse_prefix(prefix).items() if v != "-")


def gpus(size, training=False, processes=1):
    """GPUs a job asks a cluster for (`resources: gpu`, e.g. the SLURM profile's --gpus): training
    jobs one per process; inference (one-shot pruning, evaluation, quantization) one for a pretrained
    checkpoint and none for the small embedded presets; none at all with `device: cpu`."""
    if CFG["device"] == "cpu":
        return 0
    return int(processes) if training else int("pretrained" in CFG["models"][size])


def variant_prefixes():
    """Fine-tuned and quantized model folders (finetune.smk / quantize.smk decide which)."""
    return finetune_prefixes() + [f"{b}/quant/{s}" for b in quant_bases() for s in CFG["quantize"]["schemes"]]


def table_prefixes():
    return model_prefixes() + variant_prefixes()


def all_targets():
    """Every model's evaluation, the tables, the scaling-law fit and the report."""
    return ([R / p / "eval.json" for p in table_prefixes()] + [R / "tables" / "ppl.md"]
            + [R / "scaling" / "fit.json", R / "report" / "index.html", R / "report" / "report.md"])


wildcard_constraints:
    size="|".join(CFG["models"]),
    method="|".join(CFG["methods"]),
    budget=r"[0-9]+(\.[0-9]+)?[kMGT]?",
    prefix=r"[A-Za-z0-9_]+/(teacher|[A-Za-z0-9_]+/[0-9.]+[kMGT]?)(/finetune/[A-Za-z0-9_]+)?(/quant/[A-Za-z0-9_]+)?",


rule mlflow_init:
    output:
        R / ".mlflow_initialized",
    log:
        R / "logs/mlflow_init.log",
    benchmark:
        R / "benchmarks/mlflow_init.tsv"
    localrule: True
    shell:
        "{CAST} init --config {CONFIG_FILE} --flag {output} > {log} 2>&1"
