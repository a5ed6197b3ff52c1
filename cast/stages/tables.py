"""`cast table`: comparison tables from the result/eval JSONs of every model folder.

ppl.csv: one row per model (dense teachers, every method and budget); quant.csv and finetune.csv:
the quantized and fine-tuned variants (columns `quant`, `finetune`), next to their fp32 / pre-fine-tune
source. Zero-shot metrics (zs/...) appear as extra columns when the evaluate stage produced them.
"""
from __future__ import annotations

from pathlib import Path

from ..config import results_dir
from ..io import read_json
from ..layout import Layout, Prefix


def collect(cfg: dict, prefixes: list[str]):
    import pandas as pd

    from ..tokenizers import id_of

    L = Layout(results_dir(cfg))
    rows = []
    for prefix in map(Prefix.parse, prefixes):
        res, ev = read_json(L.result(prefix)), read_json(L.eval(prefix))
        teacher = read_json(L.result(Prefix(prefix.size)))
        tok = id_of(cfg, prefix.size)
        unigram = read_json(L.data_dir(tok) / "result.json").get("unigram_ppl_test")
        row = {"size": prefix.size, "method": prefix.method, "budget": prefix.budget,
               "finetune": prefix.finetune or "-", "quant": prefix.quant or "-", "tokenizer": tok,
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


def cli(cfg: dict, args, tracker=None) -> dict:
    res = write(collect(cfg, args.prefixes), args.out_dir)
    for f in res["files"]:
        tracker.log_artifact(Path(args.out_dir) / f)
    return res
