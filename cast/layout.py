"""Where every result lives under results_dir, and the token-budget labels in its paths.

The one place that builds and parses result paths (rules, stages, tables, the fit and the report
all come here). Light: no torch; Snakemake imports it at parse time.

    data/{tokenizer}/                      corpus split (the same for every tokenizer), tokenizer, packed tokens
    tasks/                                 offline lm-eval tasks (zero-shot), built from the test split's text
    downstream/{dataset}/{tokenizer}/      fine-tuning token streams
    {size}/teacher/                        the dense teacher            \
    {size}/{method}/{run}/                 a sparse model                > a model folder ("prefix"):
    {base}/finetune/{dataset}/             a fine-tuned variant         |  model/, result.json,
    {base}/quant/{scheme}/                 a quantized variant          /  eval.json (+ mask_stats.json)
    tables/  scaling_law/  report/  logs/  benchmarks/  .config/  mlflow.db

{run} is a canonical budget label (`budget_label`: 256k, 1.5M, 0 for one-shot methods), with
`_r{k}` appended for the k-th extra replicate seed (seed = config seed + k).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .errors import ConfigError

# -- token budgets --------------------------------------------------------------------------------
_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
BUDGET_FORMS = ("an integer (500000), a decimal with a suffix k, M, G or T ('256k', '1.5M', '7.86432G'), "
                "or scientific notation ('1e6', '1.0e+6')")
_SUFFIXED = re.compile(r"([0-9]+(?:\.[0-9]+)?)([kMGT]?)")
_SCIENTIFIC = re.compile(r"[0-9]+(?:\.[0-9]*)?[eE][+-]?[0-9]+")
BUDGET_RE = r"[0-9]+(?:\.[0-9]+)?[kMGT]?"  # canonical labels (what budget_label returns)


def parse_tokens(label, key: str = "token budget") -> int:
    """'256k' -> 256000, '1.5M' -> 1500000, '1e6' / 1.0e+6 / 1000000 -> 1000000. Raises ConfigError
    naming `key` and listing the accepted forms."""
    bad = ConfigError(f"{key}: {label!r} is not a token count; accepted forms: {BUDGET_FORMS}")
    if isinstance(label, bool):
        raise bad
    if isinstance(label, int):
        value = Decimal(label)
    elif isinstance(label, float):
        value = Decimal(repr(label)) if label == label and abs(label) != float("inf") else Decimal(-1)
    else:
        text = str(label).strip()
        m = _SUFFIXED.fullmatch(text)
        try:
            value = Decimal(m.group(1)) * _SUFFIX[m.group(2)] if m else Decimal(text) if _SCIENTIFIC.fullmatch(text) else None
        except InvalidOperation:
            value = None
        if value is None:
            raise bad
    if value < 0 or value != value.to_integral_value():
        raise ConfigError(f"{key}: {label!r} is not a whole, non-negative number of tokens; accepted forms: {BUDGET_FORMS}")
    return int(value)


def budget_label(label) -> str:
    """One canonical label per token count: the largest suffix that keeps the number >= 1, shortest
    decimal (1000000, '1e6', 1.0e+6 and '1M' -> '1M'; 7864320000 -> '7.86432G'; 500 -> '500')."""
    n = parse_tokens(label)
    for suffix in ("T", "G", "M", "k"):
        if n >= _SUFFIX[suffix]:
            text = format((Decimal(n) / _SUFFIX[suffix]).normalize(), "f")
            return f"{text}{suffix}"
    return str(n)


# -- model folders --------------------------------------------------------------------------------
TEACHER = "teacher"
TEACHER_PATTERN = "{size}/" + TEACHER
SPARSE_PATTERN = "{size}/{method}/{run}"
FINETUNE_PATTERN = "{base}/finetune/{dataset}"
QUANT_PATTERN = "{base}/quant/{scheme}"
NAME_RE = r"[A-Za-z0-9_]+"  # sizes, methods, datasets, schemes
RUN_RE = rf"{BUDGET_RE}(?:_r[0-9]+)?"
BASE_RE = rf"{NAME_RE}/(?:{TEACHER}|{NAME_RE}/{RUN_RE})"  # a teacher or a sparse model
PREFIX_RE = rf"{BASE_RE}(?:/finetune/{NAME_RE})?(?:/quant/{NAME_RE})?"  # ... or a variant of one


@dataclass(frozen=True)
class Prefix:
    """A model folder relative to results_dir: a teacher or a sparse model, optionally fine-tuned
    and/or quantized. str(prefix) is the path; Prefix.parse reads one back."""
    size: str
    method: str = "dense"  # "dense" = the teacher
    budget: str = "-"  # canonical label; "-" for the teacher
    replicate: int = 0  # 0 = the config seed; k > 0 = seed + k
    finetune: str | None = None
    quant: str | None = None

    @property
    def is_teacher(self) -> bool:
        return self.method == "dense"

    @property
    def run(self) -> str:
        """The folder name of a sparse model under {size}/{method}/."""
        return self.budget + (f"_r{self.replicate}" if self.replicate else "")

    @property
    def base(self) -> Prefix:
        """The teacher or sparse model this variant came from (itself if it is one)."""
        return replace(self, finetune=None, quant=None)

    def __str__(self) -> str:
        path = TEACHER_PATTERN.format(size=self.size) if self.is_teacher else \
            SPARSE_PATTERN.format(size=self.size, method=self.method, run=self.run)
        if self.finetune:
            path = FINETUNE_PATTERN.format(base=path, dataset=self.finetune)
        if self.quant:
            path = QUANT_PATTERN.format(base=path, scheme=self.quant)
        return path

    def finetuned(self, dataset: str) -> Prefix:
        return replace(self, finetune=dataset)

    def quantized(self, scheme: str) -> Prefix:
        return replace(self, quant=scheme)

    def tags(self) -> dict:
        """MLflow / CLI tags: size, method, budget, and replicate, finetune, quant where set."""
        out = {"size": self.size, "method": self.method, "budget": self.budget}
        out.update({k: v for k, v in (("replicate", self.replicate), ("finetune", self.finetune),
                                      ("quant", self.quant)) if v})
        return out

    def job_wildcards(self) -> dict:
        """size, method, budget, replicate: what names a sparsify job (cast.jobs.job_config's keywords)."""
        return {"size": self.size, "method": self.method, "budget": self.budget, "replicate": self.replicate}

    @classmethod
    def from_tags(cls, tags: dict) -> Prefix:
        """The model folder named by MLflow / CLI tags (the inverse of tags(); no method: the teacher)."""
        method = tags.get("method") or "dense"
        budget = "-" if method == "dense" else budget_label(tags.get("budget") or 0)
        return cls(tags["size"], method, budget, int(tags.get("replicate") or 0), tags.get("finetune") or None,
                   tags.get("quant") or None)

    @classmethod
    def parse(cls, prefix: str | Path) -> Prefix:
        text = str(prefix).strip("/")
        if not re.fullmatch(PREFIX_RE, text):
            raise ValueError(f"not a model folder of the results layout: {text!r}")
        parts = text.split("/")
        if parts[1] == TEACHER:
            kw, rest = {"size": parts[0]}, parts[2:]
        else:
            kw, rest = {"size": parts[0], "method": parts[1], **cls.parse_run(parts[2])}, parts[3:]
        kw.update(dict(zip(rest[::2], rest[1::2])))  # finetune/{dataset}, quant/{scheme}
        return cls(**kw)

    @staticmethod
    def parse_run(run: str) -> dict:
        """'256k' -> budget 256k, replicate 0; '256k_r2' -> replicate 2."""
        budget, _, rep = run.partition("_r")
        return {"budget": budget, "replicate": int(rep or 0)}


def teacher(size: str) -> Prefix:
    return Prefix(size)


def sparse(size: str, method: str, budget, replicate: int = 0) -> Prefix:
    return Prefix(size, method, budget_label(budget), replicate)


# -- folders and files ----------------------------------------------------------------------------
class Layout:
    """Paths under one results folder (`Layout(cfg["results_dir"])`)."""

    def __init__(self, results_dir: str | Path):
        self.root = Path(results_dir)

    def __truediv__(self, other) -> Path:
        return self.root / str(other)

    data = property(lambda self: self.root / "data")
    tasks = property(lambda self: self.root / "tasks")
    tables = property(lambda self: self.root / "tables")
    scaling_law = property(lambda self: self.root / "scaling_law")
    report = property(lambda self: self.root / "report")
    logs = property(lambda self: self.root / "logs")
    benchmarks = property(lambda self: self.root / "benchmarks")
    configs = property(lambda self: self.root / ".config")
    mlflow_flag = property(lambda self: self.root / ".mlflow_initialized")
    mlflow_db = property(lambda self: self.root / "mlflow.db")

    def data_dir(self, tokenizer: str) -> Path:
        """The corpus split, one tokenizer and its packed tokens (cast.tokenizers names it)."""
        return self.data / tokenizer

    def downstream(self, dataset: str, tokenizer: str) -> Path:
        """A fine-tuning dataset's token streams in one tokenizer."""
        return self.root / "downstream" / dataset / tokenizer

    def folder(self, prefix) -> Path:
        return self.root / str(prefix)

    def model(self, prefix) -> Path:
        return self.folder(prefix) / "model"

    def result(self, prefix) -> Path:
        return self.folder(prefix) / "result.json"

    def eval(self, prefix) -> Path:
        return self.folder(prefix) / "eval.json"

    def mask_stats(self, prefix) -> Path:
        return self.folder(prefix) / "mask_stats.json"

    def checkpoint(self, prefix) -> Path:
        """A training job's resumable checkpoint (removed once the job has finished)."""
        return self.folder(prefix) / ".ckpt"

    def prefix_of(self, path: str | Path) -> Prefix:
        """The model folder a path under results_dir belongs to (its eval.json, model/, ...)."""
        rel = Path(path).resolve().relative_to(self.root.resolve())
        parts = rel.parts
        for n in range(len(parts), 0, -1):
            cand = "/".join(parts[:n])
            if re.fullmatch(PREFIX_RE, cand):
                return Prefix.parse(cand)
        raise ValueError(f"{path} is not inside a model folder of {self.root}")

    def sparse_evals(self, size: str) -> list[Path]:
        """eval.json of every sparse model (no variant) of one size that exists on disk."""
        return sorted(p for p in self.root.glob(f"{size}/*/*/eval.json")
                      if re.fullmatch(BASE_RE, str(p.parent.relative_to(self.root))))
