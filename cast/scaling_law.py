"""Scaling laws of sparse training: least-squares fits with uncertainty, leave-one-out and extrapolation.

THE FUNCTIONAL FORMS BELOW ARE OURS, NOT THE PAPER'S. CAST (arXiv 2509.25996) claims "an accurate and
robust empirical scaling law" but its form, variables and fitting method are not public. We fit two
stand-in forms over a (model size N, token budget D) grid:

  loss law  L(N, D)  = E + A * N^-alpha + B * D^-beta        (Chinchilla-style, Hoffmann et al. 2022)
  gap law   dL(N, D) = c0 + C * N^gamma * D^-delta           (sparse minus dense test loss)

with N the dense non-embedding parameter count, D the sparse-training tokens and L = log(perplexity).

Fitting (pure numpy/scipy): N and D are divided by reference scales N0, D0 (geometric means) so that
amplitudes are O(1); the model is linear in the amplitudes (E, A, B / c0, C) once the exponents are
fixed, so a grid over the exponents with a bounded linear least-squares solve at each node gives robust
starting points (variable projection); the best few are refined jointly with scipy.optimize.least_squares
(bounds, optional robust loss). Standard errors come from s^2 (J^T J)^-1 at the optimum and are carried
to the reported parameters (A = A' N0^alpha, ...) by the delta method; a residual bootstrap gives
percentile intervals. Pure functions: no file I/O, no MLflow.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, lsq_linear

NOTE = ("The functional forms of both laws are ours, not the paper's: CAST (arXiv 2509.25996) does not "
        "publish its scaling-law form, variables or fitting method.")


# Lower bound of the decay exponents: at 0 the power term is collinear with the constant (E, c0) and
# the fit runs off to infinite, cancelling amplitudes (seen on the tiny default, whose loss is close
# to linear in log D over the sweep). A fit stopped at this bound is flagged in `at_bound`.
EXP_MIN = 0.02


@dataclass(frozen=True)
class Law:
    name: str
    formula: str
    params: tuple[str, ...]          # order of theta (amplitudes at the reference scales N0, D0)
    lin: tuple[int, ...]             # indices of theta entering linearly
    exps: tuple[int, ...]            # indices of the exponents
    grids: tuple[np.ndarray, ...]    # starting grid per exponent
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    min_distinct: tuple[int, int]    # distinct N and distinct D needed to identify the parameters
    features: Callable               # (exponents, x=N/N0, y=D/D0) -> columns multiplying theta[lin]
    to_raw: Callable                 # (theta, N0, D0) -> parameters of the formula in raw N, D
    jac: Callable                    # (theta, x, y) -> d prediction / d theta (n x p)

    def predict(self, theta, x, y):
        theta = np.asarray(theta, float)
        return self.features(theta[list(self.exps)], x, y) @ theta[list(self.lin)]


def _loss_features(e, x, y):
    # L = E + A (N/N0)^-alpha + B (D/D0)^-beta
    return np.stack([np.ones_like(x), x ** -e[0], y ** -e[1]], axis=1)


def _loss_jac(t, x, y):
    xa, yb = x ** -t[2], y ** -t[4]
    return np.stack([np.ones_like(x), xa, -t[1] * xa * np.log(x), yb, -t[3] * yb * np.log(y)], axis=1)


def _gap_features(e, x, y):
    """dL = c0 + C (N/N0)^gamma (D/D0)^-delta.

    Why dL = c0 + C * N^gamma * D^-delta (our choice):
    * the gap is measured at matched N (same teacher), so the dense loss and the size-only terms of the
      loss law cancel; what is left is how far sparse training has recovered after D tokens;
    * recovery with data follows a power law D^-delta (delta > 0: the gap shrinks with more tokens), the
      usual form of loss-vs-data curves; the recoverable amount scales with size as N^gamma (gamma < 0 if
      larger models lose less to 2:4 pruning, as the N:M literature reports), sharing one data exponent
      across sizes (as the loss law shares beta);
    * c0 is the asymptotic gap at D -> infinity: the capacity cost of the N:M constraint (>= 0 when the
      teacher is converged). Its sign is left free: a student distilled from an UNDER-trained teacher (the
      tiny default) keeps learning from the extra tokens and can end below the teacher (c0 < 0); the fit
      reports it rather than hiding it.
    * Valid only inside the swept D range: the power law diverges as D -> 0 while the real gap tends to
      the one-shot pruning gap.
    """
    return np.stack([np.ones_like(x), x ** e[0] * y ** -e[1]], axis=1)


def _gap_jac(t, x, y):
    f = x ** t[2] * y ** -t[3]
    return np.stack([np.ones_like(x), f, t[1] * f * np.log(x), -t[1] * f * np.log(y)], axis=1)


LOSS_LAW = Law(
    name="loss", formula="L(N, D) = E + A * N^-alpha + B * D^-beta",
    params=("E", "A", "alpha", "B", "beta"), lin=(0, 1, 3), exps=(2, 4),
    grids=(np.linspace(0.05, 2.0, 12), np.linspace(0.05, 2.0, 12)),
    lower=(0.0, 0.0, EXP_MIN, 0.0, EXP_MIN), upper=(np.inf, np.inf, 3.0, np.inf, 3.0), min_distinct=(3, 3),
    features=_loss_features, jac=_loss_jac,
    to_raw=lambda t, N0, D0: np.array([t[0], t[1] * N0 ** t[2], t[2], t[3] * D0 ** t[4], t[4]]),
)

GAP_LAW = Law(
    name="gap", formula="dL(N, D) = L_sparse - L_dense = c0 + C * N^gamma * D^-delta",
    params=("c0", "C", "gamma", "delta"), lin=(0, 1), exps=(2, 3),
    grids=(np.linspace(-1.5, 1.5, 13), np.linspace(0.05, 2.0, 12)),
    lower=(-np.inf, 0.0, -3.0, EXP_MIN), upper=(np.inf, np.inf, 3.0, 3.0), min_distinct=(2, 3),
    features=_gap_features, jac=_gap_jac,
    to_raw=lambda t, N0, D0: np.array([t[0], t[1] * N0 ** -t[2] * D0 ** t[3], t[2], t[3]]),
)
LAWS = {"loss": LOSS_LAW, "gap": GAP_LAW}


def design_problem(law: Law, N, D) -> str | None:
    """Why these points cannot identify the law's parameters (None if they can)."""
    n, p = len(N), len(law.params)
    need_n, need_d = law.min_distinct
    if len(np.unique(N)) < need_n:
        return f"needs >= {need_n} distinct model sizes, got {len(np.unique(N))}"
    if len(np.unique(D)) < need_d:
        return f"needs >= {need_d} distinct token budgets, got {len(np.unique(D))}"
    if n <= p:
        return f"needs more points than its {p} parameters, got {n}"
    return None


def _grid_starts(law: Law, x, y, v, keep: int):
    """Variable projection: for each exponent pair solve the bounded linear problem; best `keep` nodes."""
    lo, hi = np.array(law.lower), np.array(law.upper)
    lin = list(law.lin)
    found = []
    for e in np.array(np.meshgrid(*law.grids, indexing="ij")).reshape(len(law.exps), -1).T:
        F = law.features(e, x, y)
        if not np.all(np.isfinite(F)):
            continue
        sol = lsq_linear(F, v, bounds=(lo[lin], hi[lin]))
        theta = np.empty(len(law.params))
        theta[lin], theta[list(law.exps)] = sol.x, e
        found.append((float(np.sum((F @ sol.x - v) ** 2)), theta))
    found.sort(key=lambda t: t[0])
    return [t for _, t in found[:keep]]


def _refine(law: Law, x, y, v, theta0, loss: str, f_scale: float):
    lo, hi = np.array(law.lower), np.array(law.upper)
    theta0 = np.clip(theta0, lo, hi)  # trf moves a start on the boundary strictly inside
    return least_squares(lambda t: law.predict(t, x, y) - v, theta0, jac=lambda t: law.jac(t, x, y),
                         bounds=(lo, hi), loss=loss, f_scale=f_scale, x_scale="jac", method="trf", max_nfev=500)


def fit_theta(law: Law, x, y, v, loss: str = "linear", f_scale: float = 0.01, starts=None, keep: int = 3):
    """Best least-squares theta (internal scales) and the scipy result, from grid starts or given ones."""
    starts = starts if starts is not None else _grid_starts(law, x, y, v, keep)
    best = None
    for t0 in starts:
        res = _refine(law, x, y, v, t0, loss, f_scale)
        if best is None or res.cost < best.cost:
            best = res
    return best.x, best


def _raw_jacobian(law: Law, theta, N0, D0):
    """d raw / d theta by central differences (delta method)."""
    G = np.zeros((len(theta), len(theta)))
    for j in range(len(theta)):
        h = 1e-6 * max(abs(theta[j]), 1e-3)
        tp, tm = theta.copy(), theta.copy()
        tp[j] += h
        tm[j] -= h
        G[:, j] = (law.to_raw(tp, N0, D0) - law.to_raw(tm, N0, D0)) / (2 * h)
    return G


def _errors(pred, obs, keys):
    err = np.asarray(pred) - np.asarray(obs)
    return {"mean_abs": float(np.mean(np.abs(err))), "max_abs": float(np.max(np.abs(err))),
            "points": [{"N": float(k[0]), "D": float(k[1]), "observed": float(o), "predicted": float(p),
                        "error": float(p - o)} for k, o, p in zip(keys, obs, pred)]}


def leave_one_out(law: Law, N, D, v, N0, D0, **kw) -> dict:
    """Refit without each point in turn and predict it; points whose removal breaks identifiability
    are skipped (counted)."""
    preds, obs, keys, skipped = [], [], [], 0
    for i in range(len(v)):
        m = np.arange(len(v)) != i
        if design_problem(law, N[m], D[m]):
            skipped += 1
            continue
        theta, _ = fit_theta(law, N[m] / N0, D[m] / D0, v[m], **kw)
        preds.append(float(law.predict(theta, N[i:i + 1] / N0, D[i:i + 1] / D0)[0]))
        obs.append(float(v[i]))
        keys.append((N[i], D[i]))
    if not preds:
        return {"status": "skipped", "reason": "no point can be left out without breaking identifiability"}
    return {"status": "ok", "skipped": skipped, **_errors(preds, obs, keys)}


def extrapolation(law: Law, N, D, v, N0, D0, axis: str = "D", **kw) -> dict:
    """Fit without the largest token budget (axis D) or the largest model (axis N) and predict every
    held-out point."""
    held = (D if axis == "D" else N) == (D if axis == "D" else N).max()
    why = design_problem(law, N[~held], D[~held])
    if why:
        return {"status": "skipped", "reason": f"without the largest {'budget' if axis == 'D' else 'size'} the law {why}"}
    theta, _ = fit_theta(law, N[~held] / N0, D[~held] / D0, v[~held], **kw)
    pred = law.predict(theta, N[held] / N0, D[held] / D0)
    return {"status": "ok", f"held_out_{axis}": float((D if axis == "D" else N).max()),
            **_errors(pred, v[held], list(zip(N[held], D[held])))}


def bootstrap(law: Law, theta, x, y, v, N0, D0, n: int, seed: int, loss: str, f_scale: float) -> dict:
    """Residual bootstrap: y* = fitted + resampled (centred, dof-inflated) residuals; refit from theta."""
    if n <= 0:
        return {"n": 0}
    rng = np.random.default_rng(seed)
    fitted = law.predict(theta, x, y)
    r = v - fitted
    r = (r - r.mean()) * np.sqrt(len(v) / max(len(v) - len(theta), 1))
    raws, failed = [], 0
    for _ in range(n):
        vb = fitted + rng.choice(r, size=len(r), replace=True)
        try:
            tb, res = fit_theta(law, x, y, vb, loss=loss, f_scale=f_scale, starts=[theta])
        except (ValueError, np.linalg.LinAlgError):
            failed += 1
            continue
        if not res.success or not np.all(np.isfinite(tb)):
            failed += 1
            continue
        raws.append(law.to_raw(tb, N0, D0))
    if not raws:
        return {"n": n, "failed": failed}
    raws = np.array(raws)
    return {"n": n, "failed": failed, "std": raws.std(axis=0, ddof=1).tolist(),
            "ci95": np.percentile(raws, [2.5, 97.5], axis=0).T.tolist()}


def fit_law(law: Law | str, N, D, v, loss: str = "linear", f_scale: float = 0.01, n_bootstrap: int = 0,
            seed: int = 0, checks: bool = True) -> dict:
    """Fit `law` to points (N, D, v); JSON-ready dict with parameters in the formula's raw units.

    params[name] = {value, stderr (covariance, delta method), boot_std, ci95 (bootstrap)}; r2, rmse,
    dof; loo and extrapolation (refits) when `checks`; theta/N0/D0 for `predict`."""
    law = LAWS[law] if isinstance(law, str) else law
    N, D, v = (np.asarray(a, float) for a in (N, D, v))
    out = {"law": law.name, "formula": law.formula, "n": int(len(v)), "note": NOTE}
    why = design_problem(law, N, D)
    if why:
        return {**out, "status": "skipped", "reason": f"{law.name} law {why}"}
    N0, D0 = float(np.exp(np.mean(np.log(N)))), float(np.exp(np.mean(np.log(D))))
    x, y = N / N0, D / D0
    kw = dict(loss=loss, f_scale=f_scale)
    theta, res = fit_theta(law, x, y, v, **kw)
    resid = law.predict(theta, x, y) - v
    p, dof = len(theta), len(v) - len(theta)
    s2 = float(np.sum(resid ** 2) / dof)
    H = res.jac.T @ res.jac
    try:  # inv, not pinv: a near-singular direction must show as a huge stderr, not be cut away
        cov_t = s2 * np.linalg.inv(H)
    except np.linalg.LinAlgError:
        cov_t = np.full_like(H, np.inf)
    G = _raw_jacobian(law, theta, N0, D0)
    cov = G @ cov_t @ G.T
    raw = law.to_raw(theta, N0, D0)
    boot = bootstrap(law, theta, x, y, v, N0, D0, n_bootstrap, seed, loss, f_scale)
    lo, hi = np.array(law.lower), np.array(law.upper)
    at_bound = [law.params[i] for i in range(p) if np.isclose(theta[i], lo[i]) or np.isclose(theta[i], hi[i])]
    params = {}
    for i, name in enumerate(law.params):
        params[name] = {"value": float(raw[i]), "stderr": float(np.sqrt(max(cov[i, i], 0.0)))}
        if "std" in boot:
            params[name].update(boot_std=boot["std"][i], ci95=boot["ci95"][i])
    sst = float(np.sum((v - v.mean()) ** 2))
    out.update(status="ok", params=params, param_order=list(law.params), at_bound=at_bound, dof=dof, loss=loss,
               r2=float(1 - np.sum(resid ** 2) / sst) if sst > 0 else float("nan"),
               rmse=float(np.sqrt(np.mean(resid ** 2))), max_abs_residual=float(np.max(np.abs(resid))),
               theta=theta.tolist(), N0=N0, D0=D0, cov=cov.tolist(),
               condition_number=float(np.linalg.cond(H)), bootstrap={k: boot[k] for k in ("n", "failed") if k in boot}, converged=bool(res.success))
    if checks:
        out["loo"] = leave_one_out(law, N, D, v, N0, D0, **kw)
        out["extrapolation"] = extrapolation(law, N, D, v, N0, D0, **kw)
        out["extrapolation_N"] = extrapolation(law, N, D, v, N0, D0, axis="N", **kw)
    return out


def predict(fit: dict, N, D) -> np.ndarray:
    """Evaluate a fit_law result (also as read back from JSON) at raw N, D."""
    if fit.get("status") != "ok":
        raise ValueError(f"{fit.get('law')} law was not fitted: {fit.get('reason')}")
    law = LAWS[fit["law"]]
    N, D = np.broadcast_arrays(np.asarray(N, float), np.asarray(D, float))
    return law.predict(fit["theta"], N.ravel() / fit["N0"], D.ravel() / fit["D0"]).reshape(N.shape)
