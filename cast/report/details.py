"""The report's sections: the headline (tables, figure, fit sentences), then the details (the
tables of `cast table`, the training curves, the data licence)."""
from __future__ import annotations

from ..io import InputError, read_json
from . import headline, results
from .plots import CURVES, ppl_vs_tokens, training_curves

DETAIL_TABLES = {"ppl": "Perplexity of every model", "zeroshot": "Zero-shot",
                 "quant": "Quantization", "finetune": "Fine-tuning"}


def headline_section(doc, cfg: dict, df, L) -> str:
    """The first screen; returns a one-line summary for the job's log."""
    from .scaling import fit_sentences

    metric = results.primary_metric(cfg, df.columns)
    if metric is None:
        doc.p("No perplexity metric (ppl/...) in the results table.", "note")
        return ""
    metrics = results.domain_metrics(metric, df)
    table, summary = headline.headline_table(cfg, df, metric)
    if table is not None:
        doc.table(table, "Headline")
    fig = ppl_vs_tokens(cfg, df, metrics)
    if fig is not None:
        doc.figure(fig, "ppl_vs_tokens")
    dom = headline.domain_table(cfg, df, metrics)
    if dom is not None:
        doc.h(3, "By domain")
        doc.table(dom, "Perplexity by domain")
    seeds = headline.seeds_table(cfg, df, metrics)
    if seeds is not None:
        doc.h(3, "Which differences exceed two standard errors")
        doc.table(seeds, "Differences over seeds")
    abl = headline.ablation_table(cfg, df, metrics[:1])  # the domains have their own table
    if abl is not None:
        doc.h(3, "Ablations")
        doc.table(abl, "Ablations")
    fit = L.scaling_law / "fit.json"
    if fit.exists():
        import pandas as pd

        pts = L.scaling_law / "points.csv"
        doc.h(3, "Scaling law in one sentence each")
        doc.bullets(fit_sentences(read_json(fit), pd.read_csv(pts) if pts.exists() else None), "lead")
    return summary


def tables_section(doc, L, cfg: dict) -> None:
    """The purpose tables of `cast table` (their HTML fragments are rebuilt from the CSVs here); a
    line saying so when zero-shot was switched off."""
    import pandas as pd

    from ..stages.tables import readable

    doc.h(2, "Tables", "tables")
    if not cfg["zeroshot"]["enabled"]:
        doc.p("Zero-shot: off in this run (zeroshot.enabled: false); perplexity only. The embedded default "
              "leaves it off to stay within 15 minutes on 2 cores; the overlay config/zeroshot.yaml turns it on.", "note")
    found = False
    for name, title in DETAIL_TABLES.items():
        csv = L.tables / f"{name}.csv"
        if not csv.exists():
            continue
        found = True
        df = pd.read_csv(csv, dtype={"budget": str, "finetune": str, "quant": str})
        ids = [c for c in ("size", "method", "budget", "replicate") if c in df.columns]
        keep = ids + ([name] if name in ("quant", "finetune") else [])
        doc.h(3, title)
        doc.table(readable(name, df, keep), title)
    if not found:
        doc.p(f"No tables ({L.tables} has no table CSVs).", "note")


def curves_section(doc, cfg: dict) -> None:
    """Training curves of the base-seed sparse-training runs, read from MLflow."""
    from mlflow.tracking import MlflowClient

    from ..config import tracking_uri
    from ..stages.scaling_law import finished_runs

    doc.h(2, "Training curves", "curves")
    try:
        runs = finished_runs(cfg, "sparsify")
    except InputError as e:
        doc.p(f"No training curves: {e}", "note")
        return
    runs = runs[runs["size"].isin(cfg["run"]["sizes"]) & runs["replicate"].isna()]
    runs = runs.drop_duplicates(["size", "method", "budget"], keep="first")
    runs = runs[runs["train/ce"].notna()] if "train/ce" in runs.columns else runs.iloc[:0]
    if not len(runs):
        doc.p("No finished training runs (stage 'sparsify' with train/ce) in MLflow.", "note")
        return
    client = MlflowClient(tracking_uri(cfg))
    hist = {(r.size, r.method, r.budget): {k: client.get_metric_history(r.run_id, k) for k in CURVES}
            for r in runs.itertuples()}
    fig, keys = training_curves(cfg, runs, hist)
    if fig is not None:
        doc.figure(fig, "training_curves")
        doc.p("; ".join(f"{k}: {CURVES[k]}" for k in keys) + ".", "caption")


def attribution_section(doc, cfg: dict, L) -> None:
    from ..tokenizers import ids

    doc.h(2, "Data and licence", "data")
    att = L.data_dir(next(iter(ids(cfg)))) / "ATTRIBUTION.md"
    if att.exists():
        doc.pre(att.read_text())
    else:
        doc.p(f"Corpus source {cfg['data']['source']!r}: see its own licence ({att} not written for it).", "note")


__all__ = ["headline_section", "tables_section", "curves_section", "attribution_section"]
