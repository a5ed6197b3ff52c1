"""`cast report`: one self-contained HTML page (report/index.html, plots inline) and its Markdown
twin, plus every figure (report/plots/) and table (report/tables/, HTML) as files for the
Snakemake report.

The page opens on the results: per size, each method at its largest budget (mean ± sd over seeds,
change vs the dense control and the teacher, best N:M model marked); perplexity vs tokens per
held-out domain; the ablations; one sentence per scaling-law fit. Then the details: the tables of
`cast table`, the fits, the training curves from MLflow, the data licence. Every input is optional:
what is missing becomes a one-line note. Modules: format (tables), results (roles, domains, seeds),
headline, plots, scaling, doc (HTML + Markdown), captions (light; Snakemake reads it).
"""
from __future__ import annotations

import sys
from pathlib import Path


def build(cfg: dict, out_dir: str | Path) -> dict:
    """Write index.html, report.md, plots/*.png and tables/*.html under out_dir."""
    import datetime

    import matplotlib

    matplotlib.use("Agg")
    from ..config import config_hash, results_dir, tracking_uri
    from ..layout import Layout
    from . import details, results, scaling
    from .doc import Doc

    L = Layout(results_dir(cfg))
    doc = Doc(Path(out_dir))
    doc.h(1, f"cast report: {cfg['experiment']}")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.p(f"{cfg['sparsity']['n']}:{cfg['sparsity']['m']} sparsity; sizes {', '.join(cfg['run']['sizes'])}; "
          f"budgets {', '.join(map(str, cfg['run']['budgets']))}; config {config_hash(cfg)}; built {now}. "
          f"Details below the headline: tables, scaling law, training curves, data.", "caption")

    df = results.load_models(L)
    summary = ""
    doc.h(2, "Headline", "headline")
    if df is None:
        doc.p(f"No results table ({L.tables / 'models.csv'} missing): run `cast table` first.", "note")
    else:
        summary = details.headline_section(doc, cfg, df, L)
    details.tables_section(doc, L, cfg)
    scaling.section(doc, L)
    details.curves_section(doc, cfg)
    details.attribution_section(doc, cfg, L)
    out = doc.write(f"cast report: {cfg['experiment']}")
    return {**out, "headline": summary, "mlflow": tracking_uri(cfg)}


def where_to_look(cfg: dict) -> str:
    """What a finished pipeline prints (Snakefile onsuccess): the report and how to open MLflow."""
    from ..config import results_dir, tracking_uri
    from ..layout import Layout

    page, uri = Layout(results_dir(cfg)).report / "index.html", tracking_uri(cfg)
    lines = [f"cast: report {page.resolve()}"] if page.exists() else []
    if uri.startswith("sqlite:///"):
        lines.append(f"cast: MLflow UI: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {uri}")
    else:
        lines.append(f"cast: MLflow runs at {uri}, experiment {cfg['experiment']!r}")
    return "\n".join(lines)
