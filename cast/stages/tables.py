"""`cast table`: the result and eval JSONs of every model folder as tables, one per purpose.

  models.csv          every model folder (plain, fine-tuned, quantized), every metric: for machines
  ppl.{csv,md,html}   the plain models' perplexity per held-out domain (bits per byte where the
                      models' tokenizers differ)
  zeroshot.*          the plain models' zero-shot accuracies, `acc ± stderr` (lm-eval's standard error)
  quant.*             each quantized model beside its unquantized source (when quantization ran)
  finetune.*          each fine-tuned model beside its source (when fine-tuning ran)

The .md and .html tables show only the columns that vary (constant ones become a note), numbers
right-aligned with fixed decimals per column (cast.report.format); the CSVs keep raw values.
"""
from __future__ import annotations

from pathlib import Path

from ..config import results_dir
from ..io import read_json
from ..layout import Layout, Prefix, parse_tokens
from ..report.format import METRIC_RE, frame_table

# result.json figures kept in the tables: a quantized folder's bits and weight error (also columns of
# the quant table); a structured export's real parameter count and its forward time relative to the
# dense teacher (measured in the job; models.csv only)
QUANT_KEYS = ("avg_bits", "rel_weight_err")
RESULT_KEYS = (*QUANT_KEYS, "params_kept", "forward_time_ratio")


def collect(cfg: dict, prefixes: list[str]):
    """One row per model folder: its place in the grid, tokens, wall time and every eval metric."""
    import pandas as pd

    from ..tokenizers import id_of

    L = Layout(results_dir(cfg))
    rows = []
    for prefix in map(Prefix.parse, prefixes):
        res, ev = read_json(L.result(prefix)), read_json(L.eval(prefix))
        teacher = read_json(L.result(Prefix(prefix.size)))
        tok = id_of(cfg, prefix.size)
        data = L.data_dir(tok) / "result.json"
        unigram = read_json(data).get("unigram_ppl_test") if data.exists() else None
        row = {"size": prefix.size, "method": prefix.method, "budget": prefix.budget, "replicate": prefix.replicate,
               "finetune": prefix.finetune or "-", "quant": prefix.quant or "-", "tokenizer": tok,
               "non_embedding_params": teacher.get("non_embedding_params"),
               "tokens": res.get("tokens", 0), "wall_s": round(res.get("wall_s", float("nan")), 1)}
        row.update({k: res[k] for k in RESULT_KEYS if k in res})
        row.update(ev["metrics"])
        row["unigram_ppl"] = unigram
        rows.append(row)
    return pd.DataFrame(rows)


def ordered(df, cfg: dict):
    """Rows in reading order: run.sizes, the teacher first then run.methods, budgets ascending, replicate."""
    sizes = {s: i for i, s in enumerate(cfg["run"]["sizes"])}
    methods = {m: i for i, m in enumerate(["dense", *cfg["run"]["methods"]])}
    key = df.assign(_s=df["size"].map(lambda s: sizes.get(s, len(sizes))),
                    _m=df["method"].map(lambda m: methods.get(m, len(methods))),
                    _b=df["budget"].map(lambda b: -1 if b == "-" else parse_tokens(b)))
    by = ["_s", "_m", "_b"] + [c for c in ("replicate", "finetune", "quant") if c in df.columns]
    return key.sort_values(by, kind="stable").drop(columns=["_s", "_m", "_b"]).reset_index(drop=True)


def metric_headers(columns) -> dict:
    """'ppl/wiki_test/s128' -> 'wiki ppl' when every such column shares its split and window length
    (the note then says which), else the full name; 'zs/cast_mc/acc' -> 'cast_mc acc'."""
    found = {c: METRIC_RE.match(c) for c in columns}
    found = {c: m for c, m in found.items() if m}
    shared = len({(m["split"], m["seqlen"]) for m in found.values()}) == 1
    out = {c: f"{m['domain']} {m['kind']}" if shared else c for c, m in found.items()}
    out.update({c: c[3:].replace("/", " ") for c in columns if c.startswith("zs/")})  # 'cast_mc acc'
    return out


def ppl_columns(df, cfg: dict) -> list:
    """ppl/* columns (the training corpus' first, the other domains by name), then bpb/* likewise
    where the models' tokenizers differ (else bits per byte only restate perplexity)."""
    from ..report.results import primary_metric

    first = primary_metric(cfg, df.columns) or ""
    out = []
    for kind in ("ppl/", "bpb/") if df["tokenizer"].nunique() > 1 else ("ppl/",):
        cols = sorted(c for c in df.columns if c.startswith(kind))
        lead = kind + first[4:]
        out += [c for c in cols if c == lead] + [c for c in cols if c != lead]
    return out


def zeroshot_columns(df) -> list:
    """Zero-shot scores (accuracy-like: no perplexity / bits-per-byte cross-checks) and their stderr."""
    cols = [c for c in df.columns if c.startswith("zs/") and not c.endswith("_stderr")
            and "perplexity" not in c and "bits_per_byte" not in c]
    return [x for c in cols for x in (c, f"{c}_stderr") if x in df.columns]


def purpose_tables(df, cfg: dict) -> dict:
    """{name: (raw DataFrame, columns always shown)}: the tables above, raw values, unformatted."""
    import pandas as pd

    df = ordered(df, cfg)
    ids = ["size", "method", "budget"] + (["replicate"] if (df["replicate"] > 0).any() else [])
    plain = df[(df["finetune"] == "-") & (df["quant"] == "-")]
    out = {"ppl": (plain[ids + ["tokens"] + ppl_columns(plain, cfg) + ["unigram_ppl"]], ids)}
    zs = zeroshot_columns(plain)
    if zs:  # only the models that were scored (zeroshot.models / zeroshot.sizes)
        scored = plain[plain[zs].notna().any(axis=1)]
        out["zeroshot"] = (scored[ids + zs], ids)
    model = ["size", "method", "budget", "replicate"]
    for name in ("quant", "finetune"):
        groups = df[df[name] != "-"][model + (["finetune"] if name == "quant" else [])].drop_duplicates()
        if not len(groups):
            continue
        rows = df if name == "quant" else df[df["quant"] == "-"]
        table = ordered(pd.merge(rows, groups, on=list(groups.columns)), cfg)
        extra = [k for k in QUANT_KEYS if k in table.columns] if name == "quant" else ["tokens"]
        out[name] = (table[ids + ["finetune", "quant"] + extra + ppl_columns(table, cfg)], ids + [name])
    return out


def readable(name: str, table, keep):
    """The formatted Table of a purpose table (cast.report.format.frame_table) with its metric note."""
    t = frame_table(name, table, keep=keep, headers=metric_headers(table.columns))
    where = {(m["split"], m["seqlen"]) for m in map(METRIC_RE.match, table.columns) if m}
    if len(where) == 1:
        split, seqlen = where.pop()
        t.notes.insert(0, f"Perplexity (ppl) and bits per byte (bpb) on each domain's {split} split, "
                          f"{seqlen}-token windows; lower is better.")
    return t


def write(df, out_dir: str | Path, cfg: dict) -> dict:
    """models.csv and, per purpose, a CSV (raw values), a Markdown and an HTML table (readable)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ordered(df, cfg).to_csv(out / "models.csv", index=False)
    files = ["models.csv"]
    for name, (table, keep) in purpose_tables(df, cfg).items():
        table.to_csv(out / f"{name}.csv", index=False)
        t = readable(name, table, keep)
        (out / f"{name}.md").write_text(t.markdown())
        (out / f"{name}.html").write_text(t.page(f"{name} table"))
        files += [f"{name}.csv", f"{name}.md", f"{name}.html"]
    return {"rows": int(len(df)), "files": files}


def cli(cfg: dict, args, tracker=None) -> dict:
    res = write(collect(cfg, args.prefixes), args.out_dir, cfg)
    for f in res["files"]:
        tracker.log_artifact(Path(args.out_dir) / f)
    return res
