"""The scaling-law part of the report: one plain sentence per fit (what it predicts, how well it
extrapolates) for the headline, and the details (figures, parameters, points)."""
from __future__ import annotations

import math

from .format import Table, frame_table, short_tokens

TITLES = {"loss_law": "Loss law", "gap_law": "Gap law", "gap_teacher_law": "Gap to the teacher"}
SKIPPED = {"extrapolation": "the largest-budget check was", "extrapolation_N": "the largest-size check was"}


def _pct(err: float) -> str:
    """An error in log-perplexity as a perplexity ratio in percent."""
    return f"{(math.exp(abs(err)) - 1) * 100:.1f}%"


def _size_of(pts, N: float) -> str:
    hit = pts[(pts["N"] - N).abs() < 0.5] if pts is not None and "N" in pts else []
    return str(hit["size"].iloc[0]) if len(hit) else f"N = {N:,.0f}"


def reference(fitdoc: dict) -> str:
    ref = fitdoc.get("gap_law", {}).get("reference") or fitdoc.get("reference")
    if ref and ref != "dense":
        return f"the dense control ({ref}) at equal tokens"
    return "the dense teacher of the same size"


def fit_sentences(fitdoc: dict, pts=None) -> list[str]:
    """One sentence per law: what it predicts, its fit and its held-out (extrapolation) errors."""
    method, out = fitdoc.get("method", "?"), []
    for key, title in TITLES.items():
        if key == "gap_teacher_law" and key not in fitdoc:
            continue  # fitted only when the gap law's reference is a dense control
        fit = fitdoc.get(key, {})
        if fit.get("status") != "ok":
            out.append(f"{title}: not fitted ({fit.get('reason', 'no fit')}).")
            continue
        what = (f"predicts the log-perplexity of {method} models from model size N and training tokens D"
                if key == "loss_law" else
                f"predicts how much higher the log-perplexity of {method} models is than that of "
                + (reference(fitdoc) if key == "gap_law" else "the dense teacher of the same size (the teacher did "
                   "not see the extra tokens: this gap mixes the sparsity cost with the extra training)"))
        checks = []
        for check, text in (("extrapolation", "fitted without the largest budget ({held}) it predicts those {n} "
                                              "models' perplexity within {mean} on average (max {max})"),
                            ("extrapolation_N", "fitted on the smaller sizes it predicts size {held} within {mean} "
                                                "(max {max})"),
                            ("loo", "leave-one-out errors are {mean} on average (max {max})")):
            c = fit.get(check, {})
            if c.get("status") == "skipped" and check != "loo":
                checks.append(f"{SKIPPED[check]} skipped ({c.get('reason')})")
            if c.get("status") != "ok":
                continue
            held = short_tokens(c.get("held_out_D")) if check == "extrapolation" and c.get("held_out_D") else \
                _size_of(pts, c.get("held_out_N") or max(q["N"] for q in c["points"])) if check == "extrapolation_N" else ""
            checks.append(text.format(held=held, n=len(c.get("points", [])), mean=_pct(c["mean_abs"]), max=_pct(c["max_abs"])))
        sentence = f"{title} ({fit['formula']}; {fit['n']} points, R² = {fit['r2']:.3f}) {what}"
        sentence += (": " + "; ".join(checks) + "." if checks else "; no held-out check could run.")
        bound = fit.get("at_bound") or []
        if key.startswith("gap") and "c0" in fit["params"] and not bound:
            c0 = fit["params"]["c0"]["value"]
            sentence += f" At unlimited tokens the gap tends to c0 = {c0:+.3f} ({(math.exp(c0) - 1) * 100:+.1f}% perplexity)."
        if bound:
            sentence += f" {', '.join(bound)} stopped at a search bound: not identified by these points."
        out.append(sentence)
    return out


def _law_table(key: str, fit: dict) -> Table:
    from ..scaling_law import LAWS

    rows = []
    for name in LAWS[fit["law"]].params:  # formula order (fit.json stores keys sorted)
        p = fit["params"][name]
        ci = p.get("ci95")
        rows.append([name, f"{p['value']:.4g}", f"{p['stderr']:.3g}", f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "–",
                     "yes" if name in fit.get("at_bound", []) else ""])
    return Table(f"fit_{key}", ["parameter", "value", "stderr (covariance)", "bootstrap 95% CI", "at bound"], rows,
                 [False, True, True, True, False])


def section(doc, L) -> None:
    """Details: the fit's note, figures, per-law parameters and checks, the points."""
    import pandas as pd

    from ..io import read_json
    from .plots import scaling_figures

    doc.h(2, "Scaling law", "scaling")
    fit_path, pts_path = L.scaling_law / "fit.json", L.scaling_law / "points.csv"
    if not fit_path.exists() or not pts_path.exists():
        doc.p(f"No scaling-law fit ({fit_path} missing).", "note")
        return
    fitdoc, pts = read_json(fit_path), pd.read_csv(pts_path)
    doc.p(f"Note: {fitdoc['note']} Both forms are stand-ins chosen here (see cast/scaling_law.py); "
          f"N = {fitdoc['N']}, D = {fitdoc['D']}, target {fitdoc['target']} from MLflow metric "
          f"{fitdoc['metric']}, method {fitdoc['method']!r}, {fitdoc['n_points']} points.", "note")
    fig1, fig2 = scaling_figures(fitdoc, pts)
    doc.figure(fig1, "loss_vs_tokens")
    doc.figure(fig2, "predicted_vs_observed")
    for key, sentence in zip([k for k in TITLES if k in fitdoc], fit_sentences(fitdoc, pts)):
        fit = fitdoc[key]
        doc.h(3, fit["formula"])
        doc.p(sentence)
        if fit["status"] == "ok":
            doc.p(f"R² = {fit['r2']:.4f}, RMSE = {fit['rmse']:.4g} (log-ppl), n = {fit['n']}, dof = {fit['dof']}.")
            doc.table(_law_table(key, fit), f"{TITLES[key]} parameters")
    cols = [c for c in ("size", "budget", "N", "D", "ppl", "L", "ppl_dense", "dL") if c in pts.columns]
    doc.h(3, "Points")
    doc.table(frame_table("scaling_points", pts[cols], keep=cols), "Scaling-law points")
