"""The report's figures. Conventions shared by all: colour = method (the same colour in every
figure), line style = budget, x = tokens, one legend outside the axes."""
from __future__ import annotations

from ..layout import parse_tokens
from .format import short_tokens
from .results import at_largest, domain_of, over_seeds, role

CURVES = {"train/ce": "cross-entropy (student vs data)", "train/kl": "KL (teacher || student)",
          "mask/flips": "mask flips per refresh", "mask/masked_over_kept": "masked / kept |w| (mean)"}
STYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)), (0, (3, 1, 1, 1))]


def palette(cfg: dict) -> dict:
    """One colour per method, in run.methods order (tab10, then tab20); the teacher black."""
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(cfg["run"]["methods"]))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {"dense": "black", **{m: cmap(i % cmap.N) for i, m in enumerate(names)}}


def budget_styles(budgets) -> dict:
    ordered = sorted(set(budgets), key=parse_tokens)
    return {b: STYLES[i % len(STYLES)] for i, b in enumerate(ordered)}


def legend_outside(fig, handles, labels, title: str | None = None):
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False, title=title)


def ppl_vs_tokens(cfg: dict, df, metrics: list[str]):
    """Rows = domains, columns = sizes. Trained methods and the dense control: curves over their
    budgets (mean, sd bars); one-shot methods: dashed horizontal lines; teacher: thin black line."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colors = palette(cfg)
    aggs = {m: over_seeds(df, m) for m in metrics}
    sizes = [s for s in cfg["run"]["sizes"] if s in set(aggs[metrics[0]]["size"])]
    if not sizes:
        return None
    fig, axes = plt.subplots(len(metrics), len(sizes), figsize=(3.4 * len(sizes), 2.8 * len(metrics)),
                             squeeze=False, sharex=True)
    seen, ticks = {}, set()
    for i, metric in enumerate(metrics):
        agg = aggs[metric]
        for j, size in enumerate(sizes):
            ax, sub = axes[i][j], agg[agg["size"] == size]
            for method, g in sub.groupby("method", sort=False):
                kind = role(cfg, method, g["budget"].iloc[0])
                c = colors.get(method, "grey")
                if kind == "ablation":
                    continue
                if kind in ("teacher", "oneshot"):
                    y = float(at_largest(g)["mean"].iloc[0])
                    h = ax.axhline(y, color=c, lw=0.9 if kind == "teacher" else 1.3, ls="-" if kind == "teacher" else "--")
                else:
                    g = g.sort_values("tokens")
                    ticks.update(int(t) for t in g["tokens"])
                    h = ax.errorbar(g["tokens"], g["mean"], yerr=g["sd"].fillna(0), color=c, marker="o", ms=4,
                                    lw=1.5, capsize=2)[0]
                seen.setdefault(method, Line2D([], [], color=c, ls=h.get_linestyle(), marker=h.get_marker(), lw=1.5))
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"size {size}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{domain_of(metric)} perplexity", fontsize=8)
            if i == len(metrics) - 1:
                ax.set_xlabel("sparse-training tokens", fontsize=8)
    if ticks:
        for ax in axes.flat:  # explicit limits: a single budget would collapse the log axis
            ax.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)
            ax.set_xticks(sorted(ticks), [short_tokens(t) for t in sorted(ticks)])
    labels = {m: ("teacher (dense)" if m == "dense" else m) for m in seen}
    legend_outside(fig, list(seen.values()), [labels[m] for m in seen], "method")
    fig.tight_layout()
    return fig


def training_curves(cfg: dict, runs, histories: dict):
    """Rows = metrics, columns = sizes; colour = method, line style = budget; x = step x tokens per step."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    keys = [k for k in CURVES if any(h.get(k) for h in histories.values())]
    sizes = [s for s in cfg["run"]["sizes"] if s in set(runs["size"])]
    if not keys or not sizes:
        return None, []
    per_step = cfg["train"]["batch_size"] * cfg["train"]["seqlen"]  # the global batch, shared by every trainer
    colors, styles = palette(cfg), budget_styles(runs["budget"])
    fig, axes = plt.subplots(len(keys), len(sizes), figsize=(3.6 * len(sizes), 2.3 * len(keys)), squeeze=False, sharex="col")
    for (size, method, budget), h in histories.items():
        j = sizes.index(size)
        for i, k in enumerate(keys):
            pts = sorted((m.step * per_step, m.value) for m in h.get(k, []))
            if pts:
                axes[i][j].plot(*zip(*pts), ls=styles[budget], color=colors.get(method, "grey"), lw=1.1)
    for i, k in enumerate(keys):
        axes[i][0].set_ylabel(k, fontsize=8)
        for j, s in enumerate(sizes):
            ax = axes[i][j]
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_formatter(lambda v, _: short_tokens(v))
            if i == 0:
                ax.set_title(f"size {s}", fontsize=9)
            if i == len(keys) - 1:
                ax.set_xlabel("training tokens", fontsize=8)
    methods = list(dict.fromkeys(runs["method"]))
    handles = [Line2D([], [], color=colors.get(m, "grey"), lw=2) for m in methods]
    handles += [Line2D([], [], color="black", ls=styles[b], lw=1.1) for b in styles]
    legend_outside(fig, handles, methods + [f"budget {b}" for b in styles], "colour = method, style = budget")
    fig.tight_layout()
    return fig, keys


def scaling_figures(fitdoc: dict, pts):
    """(loss and gap vs tokens with the fitted laws, predicted vs observed); colour = model size."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.lines import Line2D

    from ..scaling_law import predict

    sizes = list(dict.fromkeys(pts["size"]))
    colors = dict(zip(sizes, plt.cm.viridis(np.linspace(0, 0.85, len(sizes)))))
    fig1, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    Dg = np.geomspace(pts["D"].min() / 1.5, pts["D"].max() * 1.5, 100)
    for ax, (key, col, ylabel) in zip(axes, (("loss_law", "L", "test loss L = log ppl"),
                                             ("gap_law", "dL", "gap L - L_reference"))):
        fit = fitdoc.get(key, {})
        for s in sizes:
            sub = pts[pts["size"] == s]
            N = int(sub["N"].iloc[0])
            ax.plot(sub["D"], sub[col], "o", color=colors[s])
            if fit.get("status") == "ok":
                ax.plot(Dg, predict(fit, np.full_like(Dg, N), Dg), "-", color=colors[s], lw=1)
            if col == "L" and "L_dense" in sub:
                ax.axhline(sub["L_dense"].iloc[0], color=colors[s], ls=":", lw=1)
        if col == "dL":
            ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(sorted(set(pts["D"])), [short_tokens(d) for d in sorted(set(pts["D"]))])
        ax.minorticks_off()
        ax.set_xlabel("sparse-training tokens D")
        ax.set_ylabel(ylabel)
        ax.set_title(key.replace("_", " ") + ("" if fit.get("status") == "ok" else ": not fitted"), fontsize=9)
    legend_outside(fig1, [Line2D([], [], color=colors[s], marker="o", lw=1) for s in sizes],
                   [f"{s} (N={int(pts[pts['size'] == s]['N'].iloc[0]):,})" for s in sizes], "model size")
    fig1.tight_layout()

    fig2, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    marks = {"in-sample fit": ("o", "C0"), "leave-one-out": ("x", "C1"), "largest budget held out": ("s", "C2"),
             "largest size held out": ("^", "C3")}
    shown = {"in-sample fit"}
    for ax, (key, col) in zip(axes, (("loss_law", "L"), ("gap_law", "dL"))):
        fit, obs = fitdoc.get(key, {}), pts[col].to_numpy()
        if fit.get("status") == "ok":
            ax.plot(obs, predict(fit, pts["N"], pts["D"]), "o", color="C0", ms=4)
            for label, check in (("leave-one-out", "loo"), ("largest budget held out", "extrapolation"),
                                 ("largest size held out", "extrapolation_N")):
                c = fit.get(check, {})
                if c.get("status") == "ok":
                    shown.add(label)
                    m, color = marks[label]
                    ax.plot([q["observed"] for q in c["points"]], [q["predicted"] for q in c["points"]], m,
                            color=color, mfc="none")
        lo, hi = obs.min(), obs.max()
        pad = 0.05 * (hi - lo + 1e-9)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        ax.set_xlabel(f"observed {col}")
        ax.set_ylabel(f"predicted {col}")
        ax.set_title(key.replace("_", " ") + ("" if fit.get("status") == "ok" else ": not fitted"), fontsize=9)
    shown = [k for k in marks if k in shown]
    legend_outside(fig2, [Line2D([], [], color=marks[k][1], marker=marks[k][0], ls="", mfc=marks[k][1] if k == "in-sample fit"
                                 else "none") for k in shown], shown)
    fig2.tight_layout()
    return fig1, fig2
