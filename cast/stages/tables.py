"""`cast table`: comparison tables from the result/eval JSONs of every model folder.

ppl.csv: one row per model (dense teachers, every method and budget); quant.csv and finetune.csv:
the quantized and fine-tuned variants (columns `quant`, `finetune`), next to their fp32 / pre-fine-tune
source. Zero-shot metrics (zs/...) appear as extra columns when the evaluate stage produced them.
"""
from __future__ import annotations

from pathlib import Path

from ..config import results_dir
from ..io import read_json


def parse_prefix(prefix: str) -> dict:
    """{size}/teacher or {size}/{method}/{budget}, then optional /finetune/{ds} and /quant/{scheme}."""
    parts = prefix.split("/")
    tags = {"size": parts[0]}
    if parts[1] == "teacher":
        tags.update(method="dense", budget="-")
        rest = parts[2:]
    else:
        tags.update(method=parts[1], budget=parts[2])
        rest = parts[3:]
    tags.update(dict(zip(rest[::2], rest[1::2])))
    return tags


def collect(cfg: dict, prefixes: list[str]):
    import pandas as pd

    R = results_dir(cfg)
    unigram = read_json(R / "data" / "result.json").get("unigram_ppl_test")
    rows = []
    for prefix in prefixes:
        tags = parse_prefix(prefix)
        res = read_json(R / prefix / "result.json")
        ev = read_json(R / prefix / "eval.json")
        teacher = read_json(R / tags["size"] / "teacher" / "result.json")
        row = {"size": tags["size"], "method": tags["method"], "budget": tags["budget"],
               "finetune": tags.get("finetune", "-"), "quant": tags.get("quant", "-"),
               "non_embedding_params": teacher.get("non_embedding_params"),
               "tokens": res.get("tokens", 0), "wall_s": round(res.get("wall_s", float("nan")), 1)}
        row.update(ev["metrics"])
        row["unigram_ppl"] = unigram
        rows.append(row)
    return pd.DataFrame(rows)


def _save(df, out: Path, name: str, drop: list[str]) -> None:
    df = df.drop(columns=[c for c in drop if c in df.columns]).dropna(axis=1, how="all")
    df.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(df.to_markdown(index=False, floatfmt=".4g") + "\n")


def write(df, out_dir: str | Path) -> dict:
    """ppl.* holds the plain models; quant.* (fp32 source + its quantized variants) and finetune.*
    (before + after fine-tuning) are written when such variants exist."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = (df["finetune"] == "-") & (df["quant"] == "-")
    _save(df[plain], out, "ppl", ["finetune", "quant"])
    files = ["ppl.csv", "ppl.md"]
    model = ["size", "method", "budget"]
    quantized = df[df["quant"] != "-"][model + ["finetune"]].drop_duplicates()
    tuned = df[df["finetune"] != "-"][model].drop_duplicates()
    for name, keys, rows in (("quant", model + ["finetune"], df),
                             ("finetune", model, df[df["quant"] == "-"])):
        groups = quantized if name == "quant" else tuned
        if len(groups):
            table = pd.merge(rows, groups, on=keys).sort_values(model + ["finetune", "quant"])
            _save(table, out, name, [])
            files += [f"{name}.csv", f"{name}.md"]
    return {"rows": int(len(df)), "files": files}
