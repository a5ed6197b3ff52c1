"""`cast table`: the method comparison table (one row per model) from the result/eval JSONs."""
from __future__ import annotations

from pathlib import Path

from ..config import results_dir
from ..io import read_json


def collect(cfg: dict, prefixes: list[str]):
    import pandas as pd

    R = results_dir(cfg)
    unigram = read_json(R / "data" / "result.json").get("unigram_ppl_test")
    rows = []
    for prefix in prefixes:
        parts = prefix.split("/")
        res = read_json(R / prefix / "result.json")
        ev = read_json(R / prefix / "eval.json")
        teacher = read_json(R / parts[0] / "teacher" / "result.json")
        row = {"size": parts[0], "method": "dense" if parts[1] == "teacher" else parts[1],
               "budget": "-" if parts[1] == "teacher" else parts[2],
               "non_embedding_params": teacher.get("non_embedding_params"),
               "tokens": res.get("tokens", 0), "wall_s": round(res.get("wall_s", float("nan")), 1)}
        row.update({k: v for k, v in ev["metrics"].items()})
        row["unigram_ppl"] = unigram
        rows.append(row)
    return pd.DataFrame(rows)


def write(df, out_dir: str | Path) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "ppl.csv", index=False)
    (out / "ppl.md").write_text(df.to_markdown(index=False, floatfmt=".4g") + "\n")
    return {"rows": len(df), "csv": str(out / "ppl.csv")}
