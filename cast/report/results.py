"""What the report reads from the models table (tables/models.csv, written by `cast table`): the
role of each method, the held-out domains, and each model's metric over its seeds (the base
folder and its `_r{k}` replicates)."""
from __future__ import annotations

import math

from ..layout import parse_tokens
from .format import METRIC_RE

CONTROL = "dense_kd"  # the dense control's algorithm: the trainer, data and teacher of CAST, no sparsity
ROLE_TEXT = {"teacher": "dense teacher", "control": "dense control (no sparsity)",
             "train": "N:M, trained", "oneshot": "N:M, one-shot", "ablation": "ablation"}


def load_models(L):
    """tables/models.csv as a DataFrame (budgets as labels), or None when the table stage has not run."""
    import pandas as pd

    path = L.tables / "models.csv"
    if not path.exists():
        return None
    df = pd.read_csv(path, dtype={"budget": str, "finetune": str, "quant": str})
    if "replicate" not in df.columns:
        df["replicate"] = 0
    return df


def algorithm(cfg: dict, method: str) -> str | None:
    entry = cfg["methods"].get(method)
    return entry.get("algorithm") if entry else None


def reference_of(cfg: dict, method: str) -> str | None:
    """The full method an ablation varies: the run.methods entry named after its algorithm."""
    alg = algorithm(cfg, method)
    return alg if alg and alg != method and alg in cfg["run"]["methods"] else None


def role(cfg: dict, method: str, budget: str = "") -> str:
    """teacher | control | ablation | train | oneshot."""
    from .. import methods

    if method == "dense":
        return "teacher"
    alg = algorithm(cfg, method)
    if CONTROL in (method, alg):
        return "control"
    if reference_of(cfg, method):
        return "ablation"
    try:
        return methods.kind_of(alg)
    except Exception:  # noqa: BLE001 - a method this checkout does not register: its budget says
        return "oneshot" if str(budget) == "0" else "train"


def primary_metric(cfg: dict, columns) -> str | None:
    """The training corpus' held-out perplexity at the first window length (the name
    cast.stages.evaluate.ppl_key gives it), found among the columns; else the first ppl/ column."""
    from ..stages.data import dataset_name

    want = (dataset_name(cfg), cfg["evaluate"]["ppl_split"], str(cfg["evaluate"]["ppl_seqlens"][0]))
    for c in columns:
        m = METRIC_RE.match(c)
        if m and m["kind"] == "ppl" and (m["domain"], m["split"], m["seqlen"]) == want:
            return c
    return next((c for c in columns if c.startswith("ppl/")), None)


def domain_metrics(primary: str, df) -> list[str]:
    """ppl/{domain}_{split}/s{seqlen} columns with the primary's split and window length that plain
    models were evaluated on (not only the fine-tuned ones), primary first."""
    m = METRIC_RE.match(primary or "")
    if not m:
        return [primary] if primary else []
    base = plain(df)
    same = [c for c in df.columns if (x := METRIC_RE.match(c)) and x["kind"] == "ppl"
            and (x["split"], x["seqlen"]) == (m["split"], m["seqlen"]) and base[c].notna().any()]
    return [primary] + [c for c in same if c != primary]


def domain_of(metric: str) -> str:
    m = METRIC_RE.match(metric)
    return m["domain"] if m else metric


def plain(df):
    """Models that are neither fine-tuned nor quantized."""
    return df[(df["finetune"].fillna("-") == "-") & (df["quant"].fillna("-") == "-")]


def over_seeds(df, metric: str):
    """One row per (size, method, budget): mean, sd (ddof 1; NaN for one seed) and n of `metric`."""
    rows = []
    for (size, method, budget), g in plain(df).groupby(["size", "method", "budget"], sort=False):
        vals = [float(v) for v in g[metric] if not _nan(v)] if metric in g else []
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else float("nan")
        rows.append({"size": size, "method": method, "budget": budget, "tokens": _tokens(budget),
                     "mean": mean, "sd": sd, "n": len(vals)})
    import pandas as pd

    return pd.DataFrame(rows, columns=["size", "method", "budget", "tokens", "mean", "sd", "n"])


def at_largest(agg):
    """Each (size, method) at its largest budget (one-shot methods: their only one, 0)."""
    if not len(agg):
        return agg
    idx = agg.groupby(["size", "method"], sort=False)["tokens"].idxmax()
    return agg.loc[idx].reset_index(drop=True)


def _tokens(budget) -> int:
    try:
        return parse_tokens(budget)
    except Exception:  # noqa: BLE001 - the teacher's "-"
        return -1


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
