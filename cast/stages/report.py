"""`cast report`: one self-contained HTML page (plots as base64 PNG) and a Markdown twin.

Reads what exists under results_dir: tables/*.csv (method comparison; quantization, fine-tuning and
zero-shot tables when those stages ran), scaling_law/fit.json + points.csv, data/ATTRIBUTION.md, and the
training curves of the sparsify runs from MLflow. Missing optional inputs become a one-line note.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import math
import os
from pathlib import Path

from ..config import config_hash, parse_tokens, results_dir, tracking_uri
from ..io import InputError, read_json
from ..layout import Layout

CURVES = {"train/ce": "cross-entropy (student vs data)", "train/kl": "KL (teacher || student)",
          "mask/flips": "mask flips per refresh", "mask/masked_over_kept": "masked / kept |w| (mean)",
          "mask/masked_below_tol": "masked weights below tolerance (fraction)"}
TABLE_TITLES = {"quant": "Quantization", "finetune": "Fine-tuning", "zeroshot": "Zero-shot"}
ID_COLS = ("size", "method", "budget", "finetune", "quant", "non_embedding_params", "tokens")


class _Doc:
    """Builds the HTML page and the Markdown file side by side."""

    def __init__(self, plots_dir: Path):
        self.html, self.md, self.plots = [], [], plots_dir

    def h(self, level: int, text: str):
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append(f"{'#' * level} {text}\n")

    def p(self, text: str, cls: str = ""):
        self.html.append(f"<p class='{cls}'>{html.escape(text)}</p>")
        self.md.append(("> " if cls == "note" else "") + text + "\n")

    def pre(self, text: str):
        self.html.append(f"<pre>{html.escape(text)}</pre>")
        self.md.append(text.strip() + "\n")

    def table(self, df):
        self.html.append(df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-", border=0))
        self.md.append(df.to_markdown(index=False, floatfmt=".4g") + "\n")

    def figure(self, fig, name: str, caption: str):
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.plots.mkdir(parents=True, exist_ok=True)
        (self.plots / f"{name}.png").write_bytes(buf.getvalue())
        b64 = base64.b64encode(buf.getvalue()).decode()
        self.html.append(f"<figure><img src='data:image/png;base64,{b64}' alt='{html.escape(name)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.md.append(f"![{caption}](plots/{name}.png)\n\n*{caption}*\n")


def _short(tokens: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if tokens >= div:
            return f"{tokens / div:.3g}{suffix}"
    return f"{tokens:.3g}"


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _tables(doc: _Doc, L: Layout):
    import pandas as pd

    doc.h(2, "Method comparison")
    ppl = L.tables / "ppl.csv"
    if not ppl.exists():
        doc.p(f"No method comparison table ({ppl} missing).", "note")
    else:
        df = pd.read_csv(ppl)
        zs = [c for c in df.columns if c.startswith("zs/")]
        doc.p("Perplexity on the held-out split (lower is better); budget = sparse-training tokens "
              "(0 for one-shot methods); unigram_ppl = add-one unigram baseline of the same tokenizer.")
        doc.table(df[[c for c in df.columns if c not in zs]])
        if zs:
            doc.h(3, "Zero-shot")
            doc.table(df[[c for c in df.columns if c in ID_COLS[:5]] + zs])
    for csv in sorted((L.tables).glob("*.csv")) if (L.tables).is_dir() else []:
        if csv.name == "ppl.csv":
            continue
        title = next((t for k, t in TABLE_TITLES.items() if csv.stem.startswith(k)), csv.stem)
        doc.h(3, f"{title} ({csv.name})")
        doc.table(pd.read_csv(csv))


def _law_table(fit: dict):
    import pandas as pd

    from ..scaling_law import LAWS

    rows = []
    for name in LAWS[fit["law"]].params:  # formula order (fit.json stores keys sorted)
        p = fit["params"][name]
        ci = p.get("ci95")
        rows.append({"parameter": name, "value": p["value"], "stderr (covariance)": p["stderr"],
                     "bootstrap 95% CI": f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "-",
                     "at bound": "yes" if name in fit.get("at_bound", []) else ""})
    return pd.DataFrame(rows)


def _law_stats(fit: dict) -> str:
    parts = [f"R^2 = {fit['r2']:.4f}, RMSE = {fit['rmse']:.4g} (log-ppl), n = {fit['n']}, dof = {fit['dof']}"]
    for key, label in (("loo", "leave-one-out"), ("extrapolation", "extrapolation to the largest budget")):
        c = fit.get(key, {})
        if c.get("status") == "ok":
            extra = f" (fit without D = {c['held_out_D']:.4g})" if key == "extrapolation" else ""
            parts.append(f"{label}: mean |error| = {c['mean_abs']:.4g}, max |error| = {c['max_abs']:.4g}{extra}")
        elif c:
            parts.append(f"{label}: skipped ({c.get('reason')})")
    return "; ".join(parts) + "."


def _scaling_plots(doc: _Doc, fitdoc: dict, pts):
    import matplotlib.pyplot as plt
    import numpy as np

    from ..scaling_law import predict

    sizes = list(dict.fromkeys(pts["size"]))
    colors = dict(zip(sizes, plt.cm.viridis(np.linspace(0, 0.85, len(sizes)))))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    Dg = np.geomspace(pts["D"].min() / 1.5, pts["D"].max() * 1.5, 100)
    for ax, (key, col, ylabel) in zip(axes, (("loss_law", "L", "test loss L = log ppl"),
                                             ("gap_law", "dL", "gap L_sparse - L_dense"))):
        fit = fitdoc.get(key, {})
        for s in sizes:
            sub = pts[pts["size"] == s]
            N = int(sub["N"].iloc[0])
            ax.plot(sub["D"], sub[col], "o", color=colors[s], label=f"{s} (N={N:,})")
            if fit.get("status") == "ok":
                ax.plot(Dg, predict(fit, np.full_like(Dg, N), Dg), "-", color=colors[s], lw=1)
            if col == "L":
                ax.axhline(sub["L_dense"].iloc[0], color=colors[s], ls=":", lw=1)
        if col == "dL":
            ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(sorted(set(pts["D"])), [_short(d) for d in sorted(set(pts["D"]))])
        ax.minorticks_off()
        ax.set_xlabel("sparse-training tokens D")
        ax.set_ylabel(ylabel)
        ax.set_title(fit.get("formula", key) if fit.get("status") == "ok" else f"{key}: not fitted")
        ax.legend(fontsize=8)
    fig.tight_layout()
    doc.figure(fig, "loss_vs_tokens", "Observed points and fitted laws per model size (dotted: dense teacher).")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, (key, col) in zip(axes, (("loss_law", "L"), ("gap_law", "dL"))):
        fit = fitdoc.get(key, {})
        obs = pts[col].to_numpy()
        if fit.get("status") == "ok":
            ax.plot(obs, predict(fit, pts["N"], pts["D"]), "o", label="in-sample fit")
            loo = fit.get("loo", {})
            if loo.get("status") == "ok":
                ax.plot([q["observed"] for q in loo["points"]], [q["predicted"] for q in loo["points"]],
                        "x", label="leave-one-out")
            ex = fit.get("extrapolation", {})
            if ex.get("status") == "ok":
                ax.plot([q["observed"] for q in ex["points"]], [q["predicted"] for q in ex["points"]],
                        "s", mfc="none", label="extrapolated (largest D held out)")
        lo, hi = obs.min(), obs.max()
        pad = 0.05 * (hi - lo + 1e-9)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        ax.set_xlabel(f"observed {col}")
        ax.set_ylabel(f"predicted {col}")
        ax.set_title(key.replace("_", " ") + ("" if fit.get("status") == "ok" else ": not fitted"))
        if fit.get("status") == "ok":
            ax.legend(fontsize=8)
    fig.tight_layout()
    doc.figure(fig, "predicted_vs_observed", "Predicted vs observed (in-sample, leave-one-out, extrapolated).")


def _scaling(doc: _Doc, L: Layout):
    import pandas as pd

    doc.h(2, "Scaling law")
    fit_path, pts_path = L.scaling_law / "fit.json", L.scaling_law / "points.csv"
    if not fit_path.exists() or not pts_path.exists():
        doc.p(f"No scaling-law fit ({fit_path} missing).", "note")
        return
    fitdoc, pts = read_json(fit_path), pd.read_csv(pts_path)
    doc.p(f"Note: {fitdoc['note']} Both forms are stand-ins chosen here (see cast/scaling_law.py); "
          f"N = {fitdoc['N']}, D = {fitdoc['D']}, target {fitdoc['target']} from MLflow metric "
          f"{fitdoc['metric']}, method {fitdoc['method']!r}, {fitdoc['n_points']} points.", "note")
    _scaling_plots(doc, fitdoc, pts)
    for key in ("loss_law", "gap_law"):
        fit = fitdoc[key]
        doc.h(3, fit["formula"])
        if fit["status"] != "ok":
            doc.p(f"Not fitted: {fit['reason']}.", "note")
            continue
        doc.p(_law_stats(fit))
        doc.table(_law_table(fit))
        if fit.get("at_bound"):
            doc.p(f"Parameters stopped at a bound of the search ({', '.join(fit['at_bound'])}): their "
                  "covariance-based errors are not reliable; see the bootstrap interval.", "note")
    doc.h(3, "Points")
    doc.table(pts[[c for c in ("size", "budget", "N", "D", "ppl", "L", "ppl_dense", "dL") if c in pts.columns]])


def _curves(doc: _Doc, cfg: dict):
    import matplotlib.pyplot as plt
    import numpy as np
    from mlflow.tracking import MlflowClient

    from .scaling_law import finished_runs

    doc.h(2, "Training curves")
    try:
        runs = finished_runs(cfg, "sparsify")
    except InputError as e:
        doc.p(f"No training curves: {e}", "note")
        return
    runs = runs[runs["size"].isin(cfg["run"]["sizes"])].drop_duplicates(["size", "method", "budget"], keep="first")
    runs = runs[runs["train/ce"].notna()] if "train/ce" in runs.columns else runs.iloc[:0]
    if not len(runs):
        doc.p("No finished training runs (stage 'sparsify' with train/ce) in MLflow.", "note")
        return
    client = MlflowClient(tracking_uri(cfg))
    hist = {(r.size, r.method, r.budget): {k: client.get_metric_history(r.run_id, k) for k in CURVES}
            for r in runs.itertuples()}
    keys = [k for k in CURVES if any(h[k] for h in hist.values())]
    sizes = [s for s in cfg["run"]["sizes"] if s in set(runs["size"])]
    fig, axes = plt.subplots(len(keys), len(sizes), figsize=(3.6 * len(sizes), 2.4 * len(keys)), squeeze=False)
    styles = ["-", "--", ":", "-."]
    methods = list(dict.fromkeys(runs["method"]))
    budgets = sorted(set(runs["budget"]), key=parse_tokens)
    colors = dict(zip(budgets, plt.cm.plasma(np.linspace(0, 0.85, len(budgets)))))
    for (size, method, budget), h in sorted(hist.items(), key=lambda kv: (kv[0][1], parse_tokens(kv[0][2]))):
        j = sizes.index(size)
        for i, k in enumerate(keys):
            pts = sorted((m.step, m.value) for m in h[k])
            if pts:
                axes[i][j].plot(*zip(*pts), styles[methods.index(method) % 4], color=colors[budget], lw=1,
                                label=f"{method} {budget}")
    for i, k in enumerate(keys):
        axes[i][0].set_ylabel(k, fontsize=8)
        for j, s in enumerate(sizes):
            axes[i][j].tick_params(labelsize=7)
            if i == 0:
                axes[i][j].set_title(s)
            if i == len(keys) - 1:
                axes[i][j].set_xlabel("optimizer step", fontsize=8)
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    doc.figure(fig, "training_curves", "Training curves from MLflow (" + "; ".join(f"{k}: {CURVES[k]}" for k in keys) + ").")


def _attribution(doc: _Doc, cfg: dict, L: Layout):
    doc.h(2, "Data and licence")
    from ..tokenizers import ids

    att = L.data_dir(next(iter(ids(cfg)))) / "ATTRIBUTION.md"
    if att.exists():
        doc.pre(att.read_text())
    else:
        doc.p(f"Corpus source {cfg['data']['source']!r}: see its own licence ({att} not written for it).", "note")


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
       "th{text-align:left}.note{background:#fff6dd;padding:.4em .8em}pre{white-space:pre-wrap;background:#f6f6f6;padding:.8em}"
       "img{max-width:100%}figcaption{font-size:.85em;color:#555}")


def run(cfg: dict, out_dir: str | Path, tracker=None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    L, out = Layout(results_dir(cfg)), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = _Doc(out / "plots")
    doc.h(1, f"cast report: {cfg['experiment']}")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.p(f"Config hash {config_hash(cfg)}, sizes {', '.join(cfg['run']['sizes'])}, methods "
          f"{', '.join(cfg['run']['methods'])}, budgets {', '.join(map(str, cfg['run']['budgets']))}, "
          f"{cfg['sparsity']['n']}:{cfg['sparsity']['m']} sparsity. MLflow store {tracking_uri(cfg)}. Built {now}.")
    _tables(doc, L)
    _scaling(doc, L)
    _curves(doc, cfg)
    _attribution(doc, cfg, L)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cast report: {html.escape(cfg['experiment'])}"
            f"</title><style>{CSS}</style></head><body>\n" + "\n".join(doc.html) + "\n</body></html>\n")
    for name, text in (("index.html", page), ("report.md", "\n".join(doc.md))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)  # atomic: a half-written page never looks complete
    return {"html": str(out / "index.html"), "markdown": str(out / "report.md"),
            "plots": sorted(p.name for p in (out / "plots").glob("*.png"))}


def cli(cfg: dict, args, tracker=None) -> dict:
    res = run(cfg, args.out_dir, tracker=tracker)
    for f in ("index.html", "report.md"):
        tracker.log_artifact(Path(args.out_dir) / f)
    return res
