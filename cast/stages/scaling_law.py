"""`cast fit`: read the sweep back from MLflow and fit the scaling laws (cast.scaling_law).

Points come from the tracking store, not from files: per (size, method, budget) the newest FINISHED
`evaluate` run (no finetune/quant tag) gives the perplexity; the newest finished `teacher` run per
size gives N (non-embedding parameters); the dense teacher's own `evaluate` run gives the reference
loss of the gap law. Only while an http tracking server is down does it read the result JSONs of
the grid's folders instead (fit.json `source` says which). Writes {out_dir}/fit.json and points.csv.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..config import results_dir, tracking_uri
from ..io import InputError, read_json, write_json
from ..layout import Layout, Prefix, parse_tokens

GRID_KEYS = ("size", "method", "budget")
TRAINED = "model/trained_tokens"  # logged by `cast evaluate` from the model folder's result.json


def _col(df, name):
    """A column of search_runs' frame, all-None when no run carries that tag/metric."""
    return df[name] if name in df.columns else [None] * len(df)


def finished_runs(cfg: dict, stage: str):
    """FINISHED runs of one stage in the config's experiment, newest first, tags as plain columns."""
    import mlflow
    import pandas as pd

    from ..tracking import reachable, use_uri, warn_offline

    uri = tracking_uri(cfg)
    if not reachable(uri):
        warn_offline(uri, "reading the points from the result JSONs instead")
        return runs_from_results(cfg, stage)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise InputError(f"MLflow store not found: {uri[len('sqlite:///'):]} (config keys 'results_dir', "
                         f"'mlflow.tracking_uri'); run the pipeline first")
    use_uri(uri)
    if mlflow.get_experiment_by_name(cfg["experiment"]) is None:
        raise InputError(f"MLflow experiment {cfg['experiment']!r} not found in {tracking_uri(cfg)} "
                         f"(config key 'experiment'); run the pipeline first")
    df = mlflow.search_runs(experiment_names=[cfg["experiment"]], filter_string=f"tags.stage = '{stage}'")
    if len(df) == 0:
        return pd.DataFrame(columns=["run_id", "start_time", *GRID_KEYS, "replicate", "finetune", "quant"])
    df = df[df["status"] == "FINISHED"].sort_values("start_time", ascending=False)
    out = pd.DataFrame({"run_id": df["run_id"], "start_time": df["start_time"]})
    for tag in (*GRID_KEYS, "replicate", "finetune", "quant", "non_embedding_params"):
        out[tag] = list(_col(df, f"tags.{tag}"))
    for c in df.columns:
        if c.startswith("metrics."):
            out[c[len("metrics."):]] = df[c].astype(float)
    return out.reset_index(drop=True)


def runs_from_results(cfg: dict, stage: str):
    """finished_runs' frame rebuilt from the grid's folders: {size}/teacher/result.json (stage
    'teacher') or {size}/teacher and {size}/{method}/{budget} eval.json (stage 'evaluate')."""
    import pandas as pd

    L, rows = Layout(results_dir(cfg)), []
    for size in cfg["run"]["sizes"]:
        if stage == "teacher":
            files = [L.result(Prefix(size))]
        else:
            files = [L.eval(Prefix(size)), *L.sparse_evals(size)]
        for f in (f for f in files if f.exists()):
            doc, tags = read_json(f), L.prefix_of(f).tags()
            rows.append({"run_id": doc.get("run_id"), "start_time": f.stat().st_mtime, **tags,
                         "budget": None if tags["budget"] == "-" else tags["budget"], "finetune": None, "quant": None,
                         "replicate": tags.get("replicate"),
                         "non_embedding_params": doc.get("non_embedding_params"), **doc.get("metrics", {})})
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "start_time", *GRID_KEYS, "replicate", "finetune",
                                                          "quant", "non_embedding_params"])


def _newest(df, keys):
    """First (= newest: finished_runs sorts) row per key."""
    return df.drop_duplicates(subset=list(keys), keep="first")


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def load_points(cfg: dict):
    """One row per (size, budget) of the fit's method: N, D, ppl, L = log ppl, dense L and the gap.

    Raises InputError naming every missing grid point (sizes x budgets of run.*) or teacher."""
    import pandas as pd

    from ..validation import check_grid
    from .evaluate import ppl_key

    check_grid(cfg)  # the config-time rules of the grid (a caller may have edited cfg since)
    method = cfg["scaling_law"]["method"]
    seqlen = cfg["evaluate"]["ppl_seqlens"][0]
    metric = ppl_key(cfg, seqlen)

    ev = finished_runs(cfg, "evaluate")
    ev = ev[ev["finetune"].map(_is_missing) & ev["quant"].map(_is_missing) & ev["replicate"].map(_is_missing)]
    ev = ev[ev["size"].isin(cfg["run"]["sizes"])]
    ev = ev.assign(metric=ev[metric] if metric in ev.columns else float("nan"))
    ref = cfg["scaling_law"]["reference"]  # the gap law's dense model: the teacher, or a control at equal tokens
    swept = ev[ev["method"].isin([method, ref]) & ev["budget"].notna()].copy()
    swept["D"] = [parse_tokens(b) for b in swept["budget"]]
    swept = _newest(swept, ("size", "method", "D"))
    sparse, control = swept[swept["method"] == method], swept[swept["method"] == ref]
    dense = _newest(ev[ev["method"] == "dense"], ("size",))
    teach = finished_runs(cfg, "teacher")
    teach = _newest(teach[teach["size"].isin(cfg["run"]["sizes"])], ("size",))

    budgets = [(str(b), parse_tokens(b)) for b in cfg["run"]["budgets"]]
    missing, rows = [], []
    for size in cfg["run"]["sizes"]:
        t = teach[teach["size"] == size]
        n_params = None
        if len(t):
            tag = t["non_embedding_params"].iloc[0]
            n_params = int(float(tag)) if not _is_missing(tag) else t.get("model/non_embedding_params", pd.Series([None])).iloc[0]
        if _is_missing(n_params):
            missing.append(f"teacher run of size {size!r} (stage 'teacher' with non_embedding_params)")
        d = dense[dense["size"] == size]
        if not len(d) or _is_missing(d["metric"].iloc[0]):
            missing.append(f"evaluate run of the dense teacher {size}/teacher (metric {metric})")
        for label, D in budgets:
            s = sparse[(sparse["size"] == size) & (sparse["D"] == D)]
            if not len(s) or _is_missing(s["metric"].iloc[0]):
                missing.append(f"evaluate run of {size}/{method}/{label} (metric {metric})")
                continue
            if missing:
                continue
            c = control[(control["size"] == size) & (control["D"] == D)] if ref != "teacher" else d
            if not len(c) or _is_missing(c["metric"].iloc[0]):
                missing.append(f"evaluate run of {size}/{ref}/{label}, the gap law's reference (metric {metric})")
                continue
            ppl, ppl_dense, ppl_ref = float(s["metric"].iloc[0]), float(d["metric"].iloc[0]), float(c["metric"].iloc[0])
            seen = s[TRAINED].iloc[0] if TRAINED in s.columns else None  # tokens actually trained (whole batches)
            rows.append({"size": size, "method": method, "budget": label, "N": int(n_params),
                         "D": int(seen) if not _is_missing(seen) else D, "D_nominal": D,
                         "ppl": ppl, "L": math.log(ppl), "ppl_dense": ppl_dense, "L_dense": math.log(ppl_dense),
                         "dL": math.log(ppl) - math.log(ppl_ref), "dL_teacher": math.log(ppl) - math.log(ppl_dense),
                         "reference": ref, "ppl_ref": ppl_ref, "run_id": s["run_id"].iloc[0],
                         "ref_run_id": c["run_id"].iloc[0], "dense_run_id": d["run_id"].iloc[0],
                         "teacher_run_id": t["run_id"].iloc[0]})
    if missing:
        raise InputError(f"scaling-law grid incomplete in MLflow experiment {cfg['experiment']!r} "
                         f"({tracking_uri(cfg)}): no FINISHED " + "; ".join(missing))
    return pd.DataFrame(rows)


def run(cfg: dict, out_dir: str | Path, tracker=None) -> dict:
    from ..scaling_law import NOTE, fit_law

    sl = cfg["scaling_law"]
    seed = cfg["seed"] if sl["seed"] is None else sl["seed"]
    pts = load_points(cfg)
    kw = dict(loss=sl["loss"], f_scale=sl["f_scale"], n_bootstrap=sl["bootstrap"], seed=seed)
    fits = {"loss_law": fit_law("loss", pts["N"], pts["D"], pts["L"], **kw),
            "gap_law": {**fit_law("gap", pts["N"], pts["D"], pts["dL"], **kw), "reference": sl["reference"]}}
    if sl["reference"] != "teacher":  # the gap to the teacher too (confounded by the extra training)
        fits["gap_teacher_law"] = {**fit_law("gap", pts["N"], pts["D"], pts["dL_teacher"], **kw), "reference": "teacher"}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pts.to_csv(out / "points.csv", index=False)
    from ..tracking import reachable
    from .evaluate import ppl_key

    uri = tracking_uri(cfg)
    source = f"MLflow {uri}" if reachable(uri) else "result JSONs (tracking server unreachable)"
    doc = {"note": NOTE, "method": sl["method"], "experiment": cfg["experiment"], "source": source,
           "metric": ppl_key(cfg, cfg["evaluate"]["ppl_seqlens"][0]), "target": "L = log(perplexity)",
           "N": "dense non-embedding parameters", "D": "sparse-training tokens", "n_points": len(pts),
           "settings": {**sl, "seed": seed}, **fits}
    write_json(out / "fit.json", doc)
    summary = {}
    for name, f in fits.items():
        if f["status"] != "ok":
            continue
        summary[f"fit/{name}/r2"] = f["r2"]
        summary[f"fit/{name}/rmse"] = f["rmse"]
        for check in ("loo", "extrapolation", "extrapolation_N"):
            if f[check]["status"] == "ok":
                summary[f"fit/{name}/{check}_mean_abs"] = f[check]["mean_abs"]
                summary[f"fit/{name}/{check}_max_abs"] = f[check]["max_abs"]
        for p, v in f["params"].items():
            summary[f"fit/{name}/{p}"] = v["value"]
    return {"fit": str(out / "fit.json"), "points": str(out / "points.csv"), "n_points": len(pts),
            "status": {k: f["status"] for k, f in fits.items()}, "metrics": summary}


def cli(cfg: dict, args, tracker=None) -> dict:
    res = run(cfg, args.out_dir, tracker=tracker)
    for f in ("fit.json", "points.csv"):
        tracker.log_artifact(Path(args.out_dir) / f)
    return res
