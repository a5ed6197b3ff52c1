"""Config loading: JSON-schema validation, default filling, canonical budget labels and the
cross-field rules (cast.validation), so that a bad value stops `cast validate` and `snakemake -n`
alike, with one line naming the key.

Light imports only (yaml, jsonschema): Snakemake imports this at parse time on every job.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .layout import BUDGET_FORMS, budget_label, parse_tokens

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent  # in a source checkout: the repository
SCHEMA_PATH = PACKAGE_DIR / "resources" / "config.schema.yaml"

__all__ = ["ConfigError", "budget_label", "parse_tokens", "load_config", "resolve_config", "config_hash"]


@functools.cache
def _schema_file() -> dict:
    """The schema file, parsed once per process (libyaml where available: ~10x pure Python's 0.25 s)."""
    with open(SCHEMA_PATH) as fh:
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_schema() -> dict:
    """The config schema, with `methods.<entry>` built from the method registry (cast.methods)."""
    from .methods import entry_schema

    schema = copy.deepcopy(_schema_file())
    schema["$defs"]["method"] = {**entry_schema(), "description": schema["$defs"]["method"]["description"]}
    return schema


def _resolve_ref(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _active_branches(value: dict, schema: dict) -> list[dict]:
    """`then` schemas of `allOf: [{if: {properties: {k: {const: v}}}, then: ...}]` whose condition holds."""
    out = []
    for sub in schema.get("allOf", []):
        cond = sub.get("if", {}).get("properties", {})
        if "then" in sub and all(value.get(k) == c.get("const") for k, c in cond.items()):
            out.append(sub["then"])
    return out


def fill_defaults(value: Any, schema: dict, root: dict) -> Any:
    """Recursively insert `default:` values of object properties (also inside maps and in the
    registry's per-method branches)."""
    schema = _resolve_ref(schema, root)
    if not isinstance(value, dict):
        return value
    props = dict(schema.get("properties", {}))
    for branch in _active_branches(value, schema):
        props.update(branch.get("properties", {}))
    for key, sub in props.items():
        sub = _resolve_ref(sub, root)
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            value[key] = fill_defaults(value[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in value:
            if key not in props:
                value[key] = fill_defaults(value[key], extra, root)
    return value


def _key_path(err) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<top level>"


def _message(err, schema: dict) -> str:
    path = list(err.absolute_path)
    if err.validator == "oneOf" and "models" in path:
        return ("a model preset needs either 'pretrained' or all of hidden_size, num_layers, num_heads, "
                "intermediate_size (not both)")
    if err.validator == "anyOf" and err.schema.get("description", "").startswith("token count"):
        return f"{err.instance!r} is not a token count; accepted forms: {BUDGET_FORMS}"
    if err.validator == "additionalProperties":
        allowed = sorted(_resolve_ref(err.schema, schema).get("properties", {}))
        return f"{err.message}; allowed keys: {', '.join(allowed)}"
    if err.validator == "enum":
        return f"{err.instance!r} is not one of {err.validator_value}"
    return err.message


def validate_schema(cfg: dict, schema: dict | None = None) -> None:
    import jsonschema

    schema = schema or load_schema()
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(cfg),
                    key=lambda e: (len(list(e.absolute_path)), str(list(e.absolute_path))))
    if errors:
        raise ConfigError(f"config key '{_key_path(errors[0])}': {_message(errors[0], schema)}")


def canonical_budgets(cfg: dict) -> None:
    """Every token count becomes its canonical label (cast.layout.budget_label): one folder per value."""
    run = cfg["run"]
    labels = [budget_label(b) for b in run["budgets"]]
    tokens = [parse_tokens(b) for b in labels]
    if tokens != sorted(tokens) or len(set(tokens)) != len(tokens):
        raise ConfigError(f"config key 'run.budgets': budgets must be strictly increasing token counts, got "
                          f"{run['budgets']} (= {labels})")
    run["budgets"] = labels
    for section, key in (("teacher", "tokens"), ("finetune", "tokens"), ("lambda_rule", "reference_tokens")):
        cfg[section][key] = budget_label(cfg[section][key])
    for spec in cfg["models"].values():
        if "tokens" in spec:
            spec["tokens"] = budget_label(spec["tokens"])
        if "pretrained" not in spec:
            spec.setdefault("max_position_embeddings", 512)


def resolve_config(raw: dict) -> dict:
    """Validate, fill defaults, canonicalise budgets and check the cross-field rules. Raises
    ConfigError naming the key."""
    from .validation import check_cross_fields

    cfg = copy.deepcopy(raw)
    schema = load_schema()
    validate_schema(cfg, schema)
    cfg = fill_defaults(cfg, schema, schema)
    canonical_budgets(cfg)
    check_cross_fields(cfg)
    return cfg


def read_yaml(path: str | Path) -> dict:
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
    return raw


def merge_configs(base: dict, over: dict) -> dict:
    """`over` on top of `base`, recursively for mappings (lists and values are replaced)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge_configs(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_config(*paths: str | Path) -> dict:
    """The resolved config of one YAML file, or of several merged in order (as Snakemake merges
    `--configfile a.yaml b.yaml`)."""
    raw = {}
    for path in paths:
        raw = merge_configs(raw, read_yaml(path))
    return resolve_config(raw)


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def method_config(cfg: dict, name: str) -> dict:
    """A `methods:` entry with its registered keys' defaults filled (also for an entry a caller
    added to a resolved config)."""
    from . import methods

    if name not in cfg["methods"]:
        raise ConfigError(f"unknown method {name!r}; defined in 'methods': {', '.join(cfg['methods'])}")
    entry = cfg["methods"][name]
    keys = methods.get(entry["algorithm"]).keys
    return {**{k: copy.deepcopy(s["default"]) for k, s in keys.items() if "default" in s}, **entry}


def lambda_for_budget(cfg: dict, method: str, budget) -> float:
    """Decay coefficient for a token budget (paper App. D: lambda adjusted to the budget).
    Our rule: lambda * (D / D_ref) ** exponent; exponent 0 keeps lambda fixed."""
    rule = cfg["lambda_rule"]
    ratio = parse_tokens(budget) / parse_tokens(rule["reference_tokens"])
    return float(cfg["methods"][method]["lambda"]) * ratio ** float(rule["exponent"])


def method_sizes(cfg: dict, method: str) -> list[str]:
    """The sizes a method runs at: run.sizes, or its run.method_sizes subset (in run.sizes order)."""
    only = cfg["run"]["method_sizes"].get(method)
    return [s for s in cfg["run"]["sizes"] if only is None or s in only]


def looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id ('name' or 'org/name')."""
    return str(path).startswith(("/", ".", "~")) or str(path).count("/") > 1 or Path(path).exists()


def results_dir(cfg: dict) -> Path:
    return Path(cfg["results_dir"]).resolve()


# as the job was started: mlflow.set_tracking_uri() rewrites this variable inside the process
ENV_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(cfg: dict) -> str:
    """Config `mlflow.tracking_uri`, else $MLFLOW_TRACKING_URI, else sqlite under results_dir."""
    uri = cfg["mlflow"]["tracking_uri"] or ENV_TRACKING_URI
    return uri or f"sqlite:///{results_dir(cfg) / 'mlflow.db'}"
