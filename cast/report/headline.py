"""The report's first screen: the size x method table at the largest budget (mean ± sd over seeds,
difference to the dense control and to the teacher, best marked), the per-domain table, the
ablation table and one sentence per scaling-law fit."""
from __future__ import annotations

import math

from .format import Table, fmt, is_missing, short_tokens, signed_pct
from .results import ROLE_TEXT, at_largest, domain_of, over_seeds, plain, reference_of, role

SPARSE = ("train", "oneshot")  # the N:M competitors (the best mark goes to one of these)
ORDER = {"teacher": 0, "control": 1, "train": 2, "oneshot": 3, "ablation": 4}


def _cell(row, usual_n: int = 1, budget_note: str = "") -> str:
    """'84.09', '84.09 ± 0.12' (several seeds; '(n=k)' where k is not the usual count), '–' if none."""
    if row is None:
        return "–"
    text = fmt(row["mean"], 2)
    if not is_missing(row["sd"]):
        text += f" ± {fmt(row['sd'], 2)}" + ("" if row["n"] == usual_n else f" (n={row['n']})")
    return text + budget_note


def _rows_by_method(best, cfg, roles_kept):
    """Teacher, dense control, then the others by their mean at the largest size (best first)."""
    methods = [m for m in dict.fromkeys(best["method"]) if role(cfg, m) in roles_kept]
    return sorted(methods, key=lambda m: (ORDER[role(cfg, m)], _largest_mean(best, cfg, m)))


def _largest_mean(best, cfg, method):
    for s in reversed(cfg["run"]["sizes"]):
        r = best[(best["size"] == s) & (best["method"] == method)]
        if len(r):
            return float(r["mean"].iloc[0])
    return math.inf


def _best(cands):
    """Index of the lowest mean among (mean, index) pairs, or None."""
    return min(cands)[1] if cands else None


def headline_table(cfg: dict, df, metric: str) -> tuple[Table | None, str]:
    """Rows = methods (teacher, dense control, N:M methods by perplexity at the largest size), per
    size: the metric at each method's largest budget, its change vs the dense control at the same
    tokens (one-shot methods: the control's largest budget) and vs the teacher; best N:M marked.
    Returns the table and a one-line summary for the job's log."""
    agg = over_seeds(df, metric)
    best = at_largest(agg)
    if not len(best):
        return None, ""
    sizes = [s for s in cfg["run"]["sizes"] if s in set(best["size"])]
    top = max(int(t) for t in best["tokens"])
    ns = [int(n) for n in best["n"]]
    usual = max(set(ns), key=ns.count)
    methods = _rows_by_method(best, cfg, ("teacher", "control", "train", "oneshot"))
    controls = [m for m in methods if role(cfg, m) == "control"]
    at = {(r.size, r.method, r.budget): r._asdict() for r in agg.itertuples()}
    lookup = {(r.size, r.method): r._asdict() for r in best.itertuples()}
    columns, groups, cells = ["method", "kind"], [("", 2)], []
    for s in sizes:
        columns += ["ppl", "vs control", "vs teacher"]
        groups.append((s, 3))
    for m in methods:
        kind = role(cfg, m)
        row = [m if m != "dense" else "teacher", ROLE_TEXT[kind]]
        for s in sizes:
            r, teach = lookup.get((s, m)), lookup.get((s, "dense"))
            ctrl = next((lookup[(s, c)] for c in controls if (s, c) in lookup), None)
            if r is not None and ctrl is not None and kind == "train":  # equal tokens where the control has them
                ctrl = at.get((s, ctrl["method"], r["budget"]), ctrl)
            note = f" (@{r['budget']})" if r and kind in ("train", "control") and r["tokens"] != top else ""
            row += [_cell(r, usual, note), "–" if kind == "control" else signed_pct(r and r["mean"], ctrl and ctrl["mean"]),
                    "–" if m == "dense" else signed_pct(r and r["mean"], teach and teach["mean"])]
        cells.append(row)
    marks = set()
    for j, s in enumerate(sizes):
        i = _best([(lookup[(s, m)]["mean"], i) for i, m in enumerate(methods) if role(cfg, m) in SPARSE and (s, m) in lookup])
        if i is not None:
            marks.add((i, 2 + 3 * j))
    keep = [j for j, c in enumerate(columns) if j < 2 or any(r[j] != "–" for r in cells)]
    t = Table("headline", [columns[j] for j in keep], [[r[j] for j in keep] for r in cells],
              [j >= 2 for j in keep], {(i, keep.index(j)) for i, j in marks if j in keep})
    t.groups = _regroup(groups, keep)
    seeds = f"mean ± sd over {usual} seeds (n = another count)" if usual > 1 else \
        "one seed per model" if max(ns) == 1 else "mean ± sd (n = seeds) where several seeds ran"
    t.notes = [f"{domain_of(metric)} perplexity ({metric}); trained models at {short_tokens(top)} tokens, one-shot "
               f"at 0 (@ marks another budget); {seeds}; 'vs' = relative change of perplexity (lower is better)."]
    if not controls:
        t.notes.append("No dense control (a `dense_kd` method) in these results: the 'vs control' columns are left out.")
    return t, _summary(cfg, lookup, sizes, methods)


def _regroup(groups, keep):
    out, j = [], 0
    for label, span in groups:
        n = sum(1 for k in range(j, j + span) if k in keep)
        if n:
            out.append((label, n))
        j += span
    return out


def _summary(cfg, lookup, sizes, methods) -> str:
    """'m: best N:M cast 84.09 (teacher 86.00)' for the job's log line."""
    if not sizes:
        return ""
    s = sizes[-1]
    cand = [(lookup[(s, m)]["mean"], m) for m in methods if role(cfg, m) in SPARSE and (s, m) in lookup]
    if not cand:
        return ""
    v, m = min(cand)
    teach = lookup.get((s, "dense"))
    return f"{s}: best N:M {m} ppl {v:.2f}" + (f" (teacher {teach['mean']:.2f})" if teach else "")


def domain_table(cfg: dict, df, metrics: list[str]) -> Table | None:
    """Methods x held-out domains at the largest size (only when several domains were evaluated)."""
    if len(metrics) < 2:
        return None
    per = {m: at_largest(over_seeds(df, m)) for m in metrics}
    size = next((s for s in reversed(cfg["run"]["sizes"]) if s in set(per[metrics[0]]["size"])), None)
    if size is None:
        return None
    first = per[metrics[0]]
    methods = _rows_by_method(first[first["size"] == size], cfg, ("teacher", "control", "train", "oneshot"))
    rows, marks = [], set()
    for m in methods:
        row = [m if m != "dense" else "teacher"]
        for metric in metrics:
            r = per[metric][(per[metric]["size"] == size) & (per[metric]["method"] == m)]
            row.append(_cell(r.iloc[0].to_dict()) if len(r) else "–")
        rows.append(row)
    for j, metric in enumerate(metrics):
        p = per[metric][per[metric]["size"] == size].set_index("method")["mean"]
        i = _best([(float(p[m]), i) for i, m in enumerate(methods) if role(cfg, m) in SPARSE and m in p.index])
        if i is not None:
            marks.add((i, j + 1))
    t = Table("domains", ["method", *(f"{domain_of(m)} ppl" for m in metrics)], rows, [False] + [True] * len(metrics), marks)
    t.notes = [f"Size {size}; each method at its largest budget."]
    return t


def _changes(cfg: dict, method: str, ref: str) -> str:
    """The config keys an ablation sets differently from its reference ('scaling: False')."""
    from ..config import method_config

    a, b = method_config(cfg, method), method_config(cfg, ref)
    diff = [f"{k}: {a.get(k)}" for k in a if k != "algorithm" and a.get(k) != b.get(k)]
    return ", ".join(diff) or "(same config)"


def ablation_table(cfg: dict, df, metrics: list[str]) -> Table | None:
    """Each ablation beside its full method, at the largest size and budget both ran."""
    rows, ablations = [], [m for m in dict.fromkeys(plain(df)["method"]) if role(cfg, m) == "ablation"]
    if not ablations:
        return None
    per = {m: over_seeds(df, m) for m in metrics}
    agg = per[metrics[0]]
    for ref in dict.fromkeys(reference_of(cfg, a) for a in ablations):
        mine = [a for a in ablations if reference_of(cfg, a) == ref]
        sub = agg[agg["method"].isin(mine)]
        if not len(sub):
            continue
        size = next(s for s in reversed(cfg["run"]["sizes"]) if s in set(sub["size"]))
        budget = max(sub[sub["size"] == size]["budget"], key=lambda b: int(agg.loc[agg["budget"] == b, "tokens"].iloc[0]))
        for m in [ref, *mine]:
            cells = []
            for metric in metrics:
                p = per[metric]
                r = p[(p["size"] == size) & (p["method"] == m) & (p["budget"] == budget)]
                base = p[(p["size"] == size) & (p["method"] == ref) & (p["budget"] == budget)]
                cells += [_cell(r.iloc[0].to_dict()) if len(r) else "–",
                          "–" if m == ref or not len(r) or not len(base) else signed_pct(r["mean"].iloc[0], base["mean"].iloc[0])]
            rows.append([m, size, budget, "(full method)" if m == ref else _changes(cfg, m, ref), *cells])
    if not rows:
        return None
    cols = ["method", "size", "budget", "what changes"]
    for metric in metrics:
        cols += [f"{domain_of(metric)} ppl", f"vs {rows[0][0]}" if len(metrics) == 1 else f"{domain_of(metric)} vs full"]
    return Table("ablation", cols, rows, [False] * 4 + [True] * (len(cols) - 4))


def seeds_table(cfg: dict, df, metrics: list[str]) -> Table | None:
    """Which differences between methods run with several seeds exceed two standard errors: every
    pair among them at the largest size, on each domain (SE of a difference of means =
    sqrt(sd_a^2/n_a + sd_b^2/n_b); '*' where |difference| > 2 SE)."""
    per = {m: at_largest(over_seeds(df, m)) for m in metrics}
    first = per[metrics[0]]
    multi = first[first["n"] > 1]
    if not len(multi):
        return None
    size = next(s for s in reversed(cfg["run"]["sizes"]) if s in set(multi["size"]))
    names = [m for m in _rows_by_method(multi[multi["size"] == size], cfg, ("control", "train", "oneshot"))]
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            row = [f"{a} − {b}"]
            for metric in metrics:
                p = per[metric][per[metric]["size"] == size].set_index("method")
                if a not in p.index or b not in p.index:
                    row.append("–")
                    continue
                ra, rb = p.loc[a], p.loc[b]
                diff = float(ra["mean"] - rb["mean"])
                se = math.sqrt(float(ra["sd"]) ** 2 / int(ra["n"]) + float(rb["sd"]) ** 2 / int(rb["n"]))
                row.append(f"{diff:+.2f} ± {se:.2f}" + (" *" if abs(diff) > 2 * se else ""))
            rows.append(row)
    t = Table("seeds", ["difference of mean ppl", *(f"{domain_of(m)}" for m in metrics)], rows,
              [False] + [True] * len(metrics))
    t.notes = [f"Size {size}, each method at its largest budget, {int(multi['n'].max())} seeds: mean difference ± its "
               "standard error; * = more than two standard errors apart (lower is better for the first named)."]
    return t
