"""Config loading: JSON-schema validation, default filling, cross-field rules, budget labels.

Light imports only (yaml, jsonschema): Snakemake imports this at parse time on every job.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


class ConfigError(ValueError):
    """A bad config value; the message names the key path."""


def load_schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def parse_tokens(label: int | str) -> int:
    """'256k' -> 256000, '1.5M' -> 1500000, 500000 -> 500000."""
    if isinstance(label, int):
        return label
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([kMGT]?)", str(label))
    if not m:
        raise ConfigError(f"bad token budget {label!r}: expected e.g. 500000, '256k', '1.5M'")
    return int(round(float(m.group(1)) * _SUFFIX[m.group(2)]))


def budget_label(label: int | str) -> str:
    """Canonical wildcard form of a budget: the label as written ('256k'), ints as digits."""
    return str(label)


def _resolve_ref(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        ref = schema["$ref"]
        node = root
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def fill_defaults(value: Any, schema: dict, root: dict) -> Any:
    """Recursively insert `default:` values of object properties (also inside maps)."""
    schema = _resolve_ref(schema, root)
    if not isinstance(value, dict):
        return value
    for key, sub in schema.get("properties", {}).items():
        sub = _resolve_ref(sub, root)
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            value[key] = fill_defaults(value[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in value:
            if key not in schema.get("properties", {}):
                value[key] = fill_defaults(value[key], extra, root)
    return value


def _key_path(err) -> str:
    path = ".".join(str(p) for p in err.absolute_path)
    return path or "<top level>"


def validate_schema(cfg: dict) -> None:
    import jsonschema

    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        err = errors[0]
        # oneOf failures are cryptic: explain the model-preset rule directly
        if err.validator == "oneOf" and "models" in list(err.absolute_path):
            msg = "a model preset needs either 'pretrained' or all of hidden_size, num_layers, num_heads, intermediate_size (not both)"
        elif err.validator == "additionalProperties":
            allowed = sorted(_resolve_ref(err.schema, schema).get("properties", {}))
            msg = f"{err.message}; allowed keys: {', '.join(allowed)}"
        elif err.validator == "enum":
            msg = f"{err.instance!r} is not one of {err.validator_value}"
        else:
            msg = err.message
        raise ConfigError(f"config key '{_key_path(err)}': {msg}")


def check_cross_fields(cfg: dict) -> None:
    """Rules a JSON schema cannot express. Model-dependent checks (M divides inputs) run once
    the model is built (cast.sparsity.find_targets)."""
    sp = cfg["sparsity"]
    if sp["n"] >= sp["m"]:
        raise ConfigError(f"config key 'sparsity.n': N={sp['n']} must be smaller than M={sp['m']} (sparsity.m)")
    for key in ("targets", "exclude"):
        for i, pat in enumerate(sp[key]):
            try:
                re.compile(pat)
            except re.error as e:
                raise ConfigError(f"config key 'sparsity.{key}.{i}': invalid regex {pat!r}: {e}") from None
    run = cfg["run"]
    for i, size in enumerate(run["sizes"]):
        if size not in cfg["models"]:
            raise ConfigError(f"config key 'run.sizes.{i}': unknown size preset {size!r}; defined in 'models': {', '.join(cfg['models'])}")
    methods = cfg.get("methods", {})
    for i, name in enumerate(run["methods"]):
        if name not in methods:
            raise ConfigError(f"config key 'run.methods.{i}': unknown method {name!r}; defined in 'methods': {', '.join(methods) or '(none)'}")
    for i, name in enumerate(run["sweep_methods"]):
        if name not in methods:
            raise ConfigError(f"config key 'run.sweep_methods.{i}': unknown method {name!r}; defined in 'methods': {', '.join(methods) or '(none)'}")
    for name, sizes in run["method_sizes"].items():
        if name not in run["methods"]:
            raise ConfigError(f"config key 'run.method_sizes.{name}': {name!r} is not in run.methods {run['methods']}")
        for i, size in enumerate(sizes):
            if size not in run["sizes"]:
                raise ConfigError(f"config key 'run.method_sizes.{name}.{i}': {size!r} is not in run.sizes {run['sizes']}")
    swept = cfg.get("scaling_law", {}).get("method")
    if swept in run["method_sizes"] and set(run["method_sizes"][swept]) != set(run["sizes"]):
        raise ConfigError(f"config key 'run.method_sizes.{swept}': the scaling-law method (scaling_law.method) "
                          f"must run at every size of run.sizes")
    for section in ("quantize", "finetune"):
        bad = [n for n in cfg.get(section, {}).get("methods") or [] if n not in run["methods"]]
        if bad:
            raise ConfigError(f"config key '{section}.methods': {bad} are not in run.methods {run['methods']}")
    tokens = [parse_tokens(b) for b in run["budgets"]]
    if tokens != sorted(tokens) or len(set(tokens)) != len(tokens):
        raise ConfigError(f"config key 'run.budgets': budgets must be strictly increasing, got {run['budgets']}")
    for name, m in cfg["models"].items():
        if "hidden_size" in m:
            heads = m["num_heads"]
            if m["hidden_size"] % heads:
                raise ConfigError(f"config key 'models.{name}.num_heads': hidden_size {m['hidden_size']} is not divisible by num_heads {heads}")
            kv = m.get("num_kv_heads", heads)
            if heads % kv:
                raise ConfigError(f"config key 'models.{name}.num_kv_heads': num_heads {heads} is not divisible by num_kv_heads {kv}")
            for key in ("hidden_size", "intermediate_size"):
                if m[key] % sp["m"]:
                    raise ConfigError(f"config key 'models.{name}.{key}': {m[key]} is not divisible by M={sp['m']} (sparsity.m); N:M groups need it")
            for j, s in enumerate(cfg["evaluate"]["ppl_seqlens"]):
                if s > m["max_position_embeddings"]:
                    raise ConfigError(f"config key 'evaluate.ppl_seqlens.{j}': {s} exceeds models.{name}.max_position_embeddings={m['max_position_embeddings']}")
            for sec in ("teacher", "train"):
                if cfg[sec]["seqlen"] > m["max_position_embeddings"]:
                    raise ConfigError(f"config key '{sec}.seqlen': {cfg[sec]['seqlen']} exceeds models.{name}.max_position_embeddings={m['max_position_embeddings']}")
    for name, m in cfg["models"].items():
        if "pretrained" in m and looks_local(m["pretrained"]):
            mdir = Path(m["pretrained"]).expanduser()
            if not mdir.is_dir():
                raise ConfigError(f"config key 'models.{name}.pretrained': model directory not found: {m['pretrained']}")
            _check_positions(cfg, name, mdir / "config.json")
    tok_path = cfg["data"]["tokenizer"]["path"]
    if tok_path and looks_local(tok_path) and not Path(tok_path).expanduser().is_dir():
        raise ConfigError(f"config key 'data.tokenizer.path': tokenizer directory not found: {tok_path}")
    src = cfg["data"]
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


def _check_positions(cfg: dict, name: str, config_json: Path) -> None:
    """Sequence lengths against a local checkpoint's maximum positions (read from its config.json)."""
    import json

    try:
        mc = json.loads(config_json.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"config key 'models.{name}.pretrained': unreadable {config_json}") from None
    limit = mc.get("max_position_embeddings") or mc.get("n_positions")
    checks = [(f"evaluate.ppl_seqlens.{j}", s) for j, s in enumerate(cfg["evaluate"]["ppl_seqlens"])]
    checks += [("train.seqlen", cfg["train"]["seqlen"])]
    for key, value in checks:
        if limit and value > limit:
            raise ConfigError(f"config key '{key}': {value} exceeds models.{name} max_position_embeddings={limit} ({config_json})")


def looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id ('name' or 'org/name')."""
    return str(path).startswith(("/", ".", "~")) or str(path).count("/") > 1 or Path(path).exists()


def resolve_config(raw: dict) -> dict:
    """Validate, fill defaults and check cross-field rules. Raises ConfigError naming the key."""
    cfg = copy.deepcopy(raw)
    validate_schema(cfg)
    schema = load_schema()
    cfg = fill_defaults(cfg, schema, schema)
    check_cross_fields(cfg)
    return cfg


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    return resolve_config(raw)


# keys that change how a job runs, never what it computes: fingerprints leave them out, so that
# changing them neither reruns finished jobs nor makes their checkpoints unusable
RUNTIME_ONLY = {"train": ("malloc", "checkpoint_every"), "teacher": ("checkpoint_every",),
                "finetune": ("checkpoint_every",)}


def result_section(cfg: dict, key: str):
    """cfg[key] without its RUNTIME_ONLY keys: what a fingerprint of that section should see."""
    drop = RUNTIME_ONLY.get(key, ())
    return {k: v for k, v in cfg[key].items() if k not in drop} if drop else cfg[key]


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def method_config(cfg: dict, name: str) -> dict:
    if name not in cfg["methods"]:
        raise ConfigError(f"unknown method {name!r}; defined in 'methods': {', '.join(cfg['methods'])}")
    return cfg["methods"][name]


def lambda_for_budget(cfg: dict, method: str, budget: int | str) -> float:
    """Decay coefficient for a token budget (paper App. D: lambda adjusted to the budget).
    Our rule: lambda * (D / D_ref) ** exponent; exponent 0 keeps lambda fixed."""
    rule = cfg["lambda_rule"]
    ratio = parse_tokens(budget) / parse_tokens(rule["reference_tokens"])
    return float(cfg["methods"][method]["lambda"]) * ratio ** float(rule["exponent"])


def method_sizes(cfg: dict, method: str) -> list[str]:
    """The sizes a method runs at: run.sizes, or its run.method_sizes subset (in run.sizes order)."""
    only = cfg["run"]["method_sizes"].get(method)
    return [s for s in cfg["run"]["sizes"] if only is None or s in only]


def results_dir(cfg: dict) -> Path:
    return Path(cfg["results_dir"]).resolve()


# as the job was started: mlflow.set_tracking_uri() rewrites this variable inside the process
ENV_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(cfg: dict) -> str:
    """Config `mlflow.tracking_uri`, else $MLFLOW_TRACKING_URI, else sqlite under results_dir."""
    uri = cfg["mlflow"]["tracking_uri"] or ENV_TRACKING_URI
    return uri or f"sqlite:///{results_dir(cfg) / 'mlflow.db'}"
