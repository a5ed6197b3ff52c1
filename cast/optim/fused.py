"""AdamS's fast path (`AdamS(impl="compiled")`, config `train.optimizer_impl: compiled`).

The update rule is the one of cast.optim.adams (its docstring, its foreach path: the readable
reference and the test oracle, tests/test_fused.py). Here torch.compile (inductor) turns each
rule into one pass per tensor: read w, g, m, v (and the mask), write w, m, v.

- Kernels see flat 1-D views and are compiled with dynamic=True. Same-shape tensors are updated
  CHUNK per compiled call (one Python dispatch, ~50-100 us on CPU, per chunk instead of per
  tensor): one graph per kernel kind, chunk length, dtype and device, whatever the shapes.
- Every per-step number (lr, bias corrections, a_t, lam) travels in one small tensor `s`, so
  neither the step count nor an LR schedule triggers a recompile.
- The N:M mask refresh (Eq. 6) is one pass too, and counts the flips against the old mask: on
  CPU a C kernel (cast.optim.native; inductor's code for its stride-M loads is a scalar loop,
  ~3.5x slower), elsewhere (CUDA, or no C compiler) the compiled nm_mask_kernel.
- Where compilation fails (no C++ compiler, unsupported platform) we warn once and the caller
  falls back to the foreach path.
"""
from __future__ import annotations

import math
import warnings

import torch

from ..sparsity import nm_groups
from . import native

# layout of `s`, filled once per group and step; scalar arithmetic stays in Python doubles, as in
# the foreach path, so both round the same numbers to the tensor dtype
DECAY, W1, B2, W2, ALPHA, LAM, INV_BC2_SQRT, EPS, STEP_SIZE = range(9)
# smaller tensors go to the foreach path: a compiled call costs ~60 us of Python and guards, foreach
# amortises its launches over the whole list (break-even measured near 4k entries on CPU)
MIN_NUMEL = 4096


def _adam_tail(p, v, u, src, s):
    """v_t = b2 v + (1 - b2) src^2;  w <- w - lr/(1 - b1^t) * u / (sqrt(v_t) / sqrt(1 - b2^t) + eps).
    One division per entry instead of the reference's two: sqrt(v_t) * (1 / sqrt(1 - b2^t)), equal
    up to float rounding (tests/test_fused.py: 1e-6 relative over 50 steps)."""
    v.mul_(s[B2]).add_(s[W2] * src * src)
    p.add_(s[STEP_SIZE] * u / (v.sqrt() * s[INV_BC2_SQRT] + s[EPS]))


def adam_kernel(p, g, m, v, s):
    """Plain Adam(W): groups without `sparse`, and lam = 0."""
    p.mul_(s[DECAY])  # decoupled weight decay, 1 - lr * wd
    m.lerp_(g, s[W1])
    _adam_tail(p, v, m, g, s)


def _mixed(p, g, m, mask, s):
    """Shared head of the AdamS kernels: decoupled decay, m_t, and u of Eq. 7. The mask comes as
    uint8 (a free view of the bool mask) and is compared as float: inductor's CPU code loads a bool
    vector element by element (a whole step ~3x slower, 21M entries, AVX-512)."""
    mask = mask.to(p.dtype) != 0
    p.mul_(s[DECAY])
    m.lerp_(g, s[W1])
    return mask, torch.where(mask, m, torch.lerp(m, torch.sign(p) * s[LAM], s[ALPHA]))  # Eq. 7


def adams_kernel(p, g, m, v, mask, s):
    """AdamS, second_moment='mixed' (Alg. 1): every entry steps with u and builds v from u^2 (Eq. 8)."""
    _, u = _mixed(p, g, m, mask, s)
    _adam_tail(p, v, u, u, s)


def adams_grad_kernel(p, g, m, v, mask, s):
    """AdamS, second_moment='grad' (our earlier variant): v from g^2 on kept entries, u^2 on masked."""
    mask, u = _mixed(p, g, m, mask, s)
    _adam_tail(p, v, u, torch.where(mask, g, u), s)


def srste_kernel(p, g, m, v, mask, s):
    """decay='srste': g <- g + lam (1 - M) w on the raw weight, then plain Adam."""
    mask = mask.to(p.dtype) != 0  # see _mixed
    adam_kernel(p, torch.where(mask, g, g + s[LAM] * p), m, v, s)


def nm_mask_kernel(a, old, n: int):
    """Eq. 6 on an (A, M, B) view whose dim 1 runs over the M inputs of a group: an entry's rank
    counts the group entries that beat it (larger |w|, or equal |w| at a lower index); rank < N is
    kept, so ties keep exactly N, lowest index first (as cast.sparsity.nm_mask). Also returns the
    number of entries that differ from `old`."""
    m = a.shape[1]
    cols = [a[:, i].abs() for i in range(m)]
    rank = [torch.zeros_like(c, dtype=torch.uint8) for c in cols]
    for i in range(m):
        for j in range(i + 1, m):
            i_wins = cols[i] >= cols[j]
            rank[j] = rank[j] + i_wins.to(torch.uint8)
            rank[i] = rank[i] + (~i_wins).to(torch.uint8)
    new = torch.stack([r < n for r in rank], 1)
    flips = (new != old).to(torch.uint8).sum(1, dtype=torch.uint8).sum(dtype=torch.int64)  # M < 256
    return new, flips


def _over_lists(kernel):
    """kernel applied to every tensor of equal-length lists, in one compiled call: one Python
    dispatch (guards, wrapper) per chunk instead of per tensor, which on CPU costs about as much
    as the update of a 1M-entry tensor."""
    def run(*lists_and_s):
        *lists, s = lists_and_s
        for tensors in zip(*lists):
            kernel(*tensors, s)
    run.__name__ = f"{kernel.__name__}_lists"
    return run


def nm_masks_kernel(As, olds, n: int):
    """nm_mask_kernel over lists: ([new masks], [flips])."""
    outs = [nm_mask_kernel(a, old, n) for a, old in zip(As, olds)]
    return [o[0] for o in outs], [o[1] for o in outs]


_RAW = {"adam": _over_lists(adam_kernel), "adams": _over_lists(adams_kernel),
        "adams_grad": _over_lists(adams_grad_kernel), "srste": _over_lists(srste_kernel), "mask": nm_masks_kernel}
# tensors per compiled call: chunks hold tensors of one shape, so every chunk of a given length
# reuses one graph (dynamic sizes); a longer chunk compiles longer
CHUNK = 32
_compiled: dict = {}
_worked: set = set()
_failed: str | None = None


def available() -> bool:
    """False once a compilation has failed in this process (then everything runs the foreach path)."""
    return _failed is None


UNAVAILABLE = object()  # what _run returns once compilation has failed


def _run(name, *args):
    """Call the compiled kernel `name`; UNAVAILABLE if torch.compile is unavailable (warned once)."""
    global _failed
    if _failed is not None:
        return UNAVAILABLE
    first = args[0][0] if isinstance(args[0], list) else args[0]
    key = (name, first.device.type, first.dtype)
    try:
        if name not in _compiled:
            _compiled[name] = torch.compile(_RAW[name], dynamic=True, fullgraph=True)
        out = _compiled[name](*args)
    except Exception as e:  # noqa: BLE001 - any compile failure means: use the reference path
        if key in _worked:  # this kernel ran before: a genuine error, not a missing compiler
            raise
        _failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        warnings.warn(f"AdamS impl='compiled': torch.compile failed ({_failed}); using impl='foreach'", stacklevel=3)
        return UNAVAILABLE
    _worked.add(key)
    return out


def _flat(t: torch.Tensor):
    """A flat alias of t's storage, or None if t is not contiguous. detach() drops the view's
    `_base`, which dynamo would otherwise guard on (a recompile per base shape)."""
    return t.view(-1).detach() if t.is_contiguous() else None


def _chunks(items: list, key) -> list[list]:
    """items grouped by key(item) (e.g. shape), then cut into runs of at most CHUNK: the
    argument lists of the compiled calls."""
    same: dict = {}
    for item in items:
        same.setdefault(key(item), []).append(item)
    return [group[i:i + CHUNK] for group in same.values() for i in range(0, len(group), CHUNK)]


def _flat_state(p, st, views: dict) -> list | None:
    """Flat aliases of p, m, v (and the uint8 view of the mask), reused between steps while the
    same storages back them (a refresh's new mask or a loaded state makes new ones). `views` is
    the optimizer's cache (id(p) -> ...), kept out of its state so checkpoints never see it.
    None if any tensor is not contiguous."""
    tensors = [p, st["exp_avg"], st["exp_avg_sq"]] + ([st["mask"]] if "mask" in st else [])
    key = tuple(t.data_ptr() for t in tensors)
    cached = views.get(id(p))
    if cached is None or cached[0] != key:
        flat = [_flat(t.view(torch.uint8) if t.dtype == torch.bool else t) for t in tensors]
        cached = views[id(p)] = (key, None if any(t is None for t in flat) else flat)
    return cached[1]


def update_group(group, params, state, step: int, alpha: float, views: dict) -> list:
    """One AdamS step of a param group (same rule and state keys as AdamS._update_group); views:
    the caller's cache of flat aliases (_flat_state).
    Returns the params it did not update: small (MIN_NUMEL) or non-contiguous ones, or all of
    them if compilation failed."""
    beta1, beta2 = group["betas"]
    lr, wd, lam = group["lr"], group["weight_decay"], group["lam"]
    mode = "adam"
    if group["sparse"] and lam > 0:  # the kernel variant is fixed per group: no recompile per step
        mode = "srste" if group["decay"] == "srste" else "adams" if group["second_moment"] == "mixed" else "adams_grad"
    vals = [0.0] * 9
    vals[DECAY], vals[W1], vals[B2], vals[W2] = 1 - lr * wd, 1 - beta1, beta2, 1 - beta2
    vals[ALPHA], vals[LAM], vals[EPS] = alpha, lam, group["eps"]
    vals[INV_BC2_SQRT], vals[STEP_SIZE] = 1 / math.sqrt(1 - beta2**step), -lr / (1 - beta1**step)
    rest, ready = [], []
    for p in params:
        cached = _flat_state(p, state[p], views) if p.numel() >= MIN_NUMEL else None
        if cached is None:
            rest.append(p)
            continue
        pf, mf, vf, *maskf = cached
        ready.append((p, [pf, p.grad.reshape(-1).detach(), mf, vf, *(maskf if mode != "adam" else [])]))
    todo = _chunks(ready, lambda item: (item[0].numel(), item[0].dtype, item[0].device, item[0].grad.dtype))
    scalars = {}
    for k, chunk in enumerate(todo):
        p = chunk[0][0]
        key = (p.device, torch.float64 if p.dtype == torch.float64 else torch.float32)
        if key not in scalars:
            scalars[key] = torch.tensor(vals, dtype=key[1], device=key[0])
        if _run(mode, *map(list, zip(*(flat for _, flat in chunk))), scalars[key]) is UNAVAILABLE:
            return rest + [q for c in todo[k:] for q, _ in c]
    return rest


def refresh_masks(ps: list, olds: list, n: int, m: int, input_dim: int = -1) -> list:
    """[(new mask, flips) or None] per tensor: the mask in p's layout, contiguous; None where p is
    not a contiguous 2-D tensor or no fast kernel is available (the caller then uses
    cast.sparsity.param_mask). fp32 CPU tensors go to the C kernel (cast.optim.native); the rest
    to the compiled one, same-shape tensors CHUNK per call."""
    out, ready = [None] * len(ps), []
    for i, (p, old) in enumerate(zip(ps, olds)):
        if p.dim() != 2 or not p.is_contiguous():
            continue
        a, b = nm_groups(p.shape, m, input_dim)  # raises before any work if M does not divide
        old = torch.zeros_like(p, dtype=torch.bool) if old is None else old.contiguous()
        if native.supports(p):
            new = torch.empty_like(p, dtype=torch.bool)
            out[i] = (new, native.nm_mask_(p.detach(), old, new, n, m, input_dim))
        elif available():  # the compiled kernel's groups run along dim 1 of the (A, M, B) view
            ready.append((i, p.view(a, m, b).detach(), old.view(a, m, b).detach()))
    for chunk in _chunks(ready, lambda item: (ps[item[0]].shape, item[1].dtype, item[1].device)):
        idx, views, old_views = zip(*chunk)
        res = _run("mask", list(views), list(old_views), n)
        if res is UNAVAILABLE:  # what is still None falls back to the reference
            break
        for i, new, flips in zip(idx, *res):
            out[i] = (new.view(ps[i].shape).detach(), flips)
    return out


def refresh_mask(p: torch.Tensor, old: torch.Tensor | None, n: int, m: int, input_dim: int = -1):
    """refresh_masks of one tensor."""
    return refresh_masks([p], [old], n, m, input_dim)[0]
