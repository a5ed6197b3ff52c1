"""AdamS against torch.optim.Adam, a scalar hand computation and its invariants."""
import math

import pytest
import torch

from cast.optim.adams import AdamS, alpha_t
from cast.sparsity import nm_mask


def _run(opt_factory, w0, grads):
    w = torch.nn.Parameter(w0.clone())
    opt = opt_factory([w])
    out = []
    for g in grads:
        w.grad = g.clone()
        opt.step()
        out.append(w.detach().clone())
    return out, opt


def test_lambda_zero_is_adam_step_for_step():
    torch.manual_seed(0)
    w0 = torch.randn(8, 16)
    grads = [torch.randn(8, 16) for _ in range(25)]
    ours, _ = _run(lambda p: AdamS([{"params": p, "sparse": True}], lr=1e-2, lam=0.0, total_steps=25, t1=3), w0, grads)
    ref, _ = _run(lambda p: torch.optim.Adam(p, lr=1e-2), w0, grads)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def _scalar_adams(w, grads, lr, b1, b2, eps, lam, T, t1):
    """Per-scalar oracle of Alg. 1 (2:4 masks by hand over the 1x8 row), written without tensors."""
    m = [0.0] * len(w)
    v = [0.0] * len(w)
    mask = None
    for t, g in enumerate(grads, start=1):
        if (t - 1) % t1 == 0:
            mask = []
            for s in range(0, len(w), 4):
                grp = w[s:s + 4]
                keep = sorted(range(4), key=lambda i: (-abs(grp[i]), i))[:2]
                mask += [i in keep for i in range(4)]
        a = t / T
        for i in range(len(w)):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            if mask[i]:
                u = m[i]
                v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            else:
                sign = (w[i] > 0) - (w[i] < 0)
                u = (1 - a) * m[i] + a * lam * sign
                v[i] = b2 * v[i] + (1 - b2) * u ** 2
            w[i] -= lr * (u / (1 - b1 ** t)) / (math.sqrt(v[i] / (1 - b2 ** t)) + eps)
    return w, m


def test_two_steps_on_a_1x8_weight_match_hand_computation():
    w0 = [0.5, -0.1, 0.3, 0.05, -0.4, 0.2, 0.01, -0.6]
    g = [[0.1, -0.2, 0.05, 0.3, -0.1, 0.2, -0.3, 0.05], [0.2, 0.1, -0.1, -0.2, 0.3, -0.05, 0.1, 0.2]]
    kw = dict(lr=0.01, b1=0.9, b2=0.999, eps=1e-8, lam=0.5, T=2, t1=10)
    want, want_m = _scalar_adams(list(w0), g, **kw)
    w = torch.nn.Parameter(torch.tensor([w0], dtype=torch.float64))
    opt = AdamS([{"params": [w], "sparse": True}], lr=0.01, betas=(0.9, 0.999), eps=1e-8, lam=0.5, total_steps=2, t1=10)
    for gi in g:
        w.grad = torch.tensor([gi], dtype=torch.float64)
        opt.step()
    torch.testing.assert_close(w.detach()[0], torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-7)
    # the stored momentum is the raw-gradient EMA: the decay never enters it
    torch.testing.assert_close(opt.state[w]["exp_avg"][0], torch.tensor(want_m, dtype=torch.float64), rtol=0, atol=1e-12)
    assert opt.state[w]["mask"].tolist() == [[True, False, True, False, True, False, False, True]]


def test_decay_touches_only_masked_entries_and_v_comes_from_mixed_moment():
    torch.manual_seed(1)
    w0 = torch.randn(4, 8)
    g = torch.randn(4, 8)
    lam, T = 0.3, 4
    opt_kw = dict(lr=1e-2, lam=lam, total_steps=T, t1=100)
    (w_s,), s_opt = _run(lambda p: AdamS([{"params": p, "sparse": True}], **opt_kw), w0, [g])
    (w_a,), a_opt = _run(lambda p: torch.optim.Adam(p, lr=1e-2), w0, [g])
    mask = nm_mask(w0, 2, 4)
    assert torch.equal(w_s[mask], w_a[mask])  # kept weights: plain Adam
    assert not torch.allclose(w_s[~mask], w_a[~mask])  # masked weights: decayed
    p = next(iter(s_opt.state))
    st = s_opt.state[p]
    torch.testing.assert_close(st["exp_avg"], 0.1 * g)  # raw gradient only
    a = alpha_t(1, T)
    u = (1 - a) * 0.1 * g + a * lam * torch.sign(w0)
    torch.testing.assert_close(st["exp_avg_sq"][~mask], 0.001 * u[~mask] ** 2)
    torch.testing.assert_close(st["exp_avg_sq"][mask], 0.001 * g[mask] ** 2)


def test_masks_refresh_exactly_every_t1_steps(monkeypatch):
    import cast.optim.adams as mod

    calls = []
    real = mod.param_mask
    monkeypatch.setattr(mod, "param_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    w = torch.nn.Parameter(torch.randn(2, 8))
    opt = AdamS([{"params": [w], "sparse": True}], lr=1e-2, lam=0.1, total_steps=20, t1=4)
    refreshed = []
    for step in range(1, 21):
        w.grad = torch.randn(2, 8)
        before = len(calls)
        opt.step()
        if len(calls) > before:
            refreshed.append(step)
    assert refreshed == [1, 5, 9, 13, 17]


def test_alpha_reaches_one_at_T_and_indexing():
    assert alpha_t(10, 10) == 1.0 and alpha_t(1, 10) == pytest.approx(0.1)
    assert alpha_t(1, 10, "alg1") == 0.0 and alpha_t(10, 10, "alg1") == pytest.approx(0.9)
    assert alpha_t(15, 10) == 1.0  # clamped past T


def test_state_dict_round_trip_mid_run_continues_identically():
    torch.manual_seed(2)
    w0 = torch.randn(4, 8)
    grads = [torch.randn(4, 8) for _ in range(12)]
    full, _ = _run(lambda p: AdamS([{"params": p, "sparse": True}], lr=1e-2, lam=0.2, total_steps=12, t1=5), w0, grads)
    w = torch.nn.Parameter(w0.clone())
    opt = AdamS([{"params": [w], "sparse": True}], lr=1e-2, lam=0.2, total_steps=12, t1=5)
    for g in grads[:7]:
        w.grad = g.clone()
        opt.step()
    sd = opt.state_dict()
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = AdamS([{"params": [w2], "sparse": True}], lr=1e-2, lam=0.2, total_steps=12, t1=5)
    opt2.load_state_dict(sd)
    assert torch.equal(opt2.state[w2]["mask"], opt.state[w]["mask"])
    for g in grads[7:]:
        w2.grad = g.clone()
        opt2.step()
    assert torch.equal(w2.detach(), full[-1])


def test_masked_weights_shrink_under_decay():
    torch.manual_seed(3)
    w = torch.nn.Parameter(torch.randn(16, 32))
    opt = AdamS([{"params": [w], "sparse": True}], lr=1e-2, lam=1e-2, total_steps=200, t1=10, stat_tol=2e-2)
    start = opt_stats = None
    for _ in range(200):
        w.grad = 1e-3 * torch.randn(16, 32)
        opt.step()
        if start is None:
            start = opt.mask_stats()["mask/masked_over_kept"]
    opt_stats = opt.mask_stats()
    assert opt_stats["mask/masked_over_kept"] < 0.1 * start
    assert opt_stats["mask/masked_below_tol"] > 0.5


def test_bad_hyper_parameters():
    w = torch.nn.Parameter(torch.randn(2, 4))
    with pytest.raises(ValueError, match="lambda"):
        AdamS([w], lam=-1.0)
    with pytest.raises(ValueError, match="N=4"):
        AdamS([w], n=4, m=4)


def test_srste_decay_adds_lambda_w_on_masked_entries_only():
    torch.manual_seed(4)
    w0 = torch.randn(4, 8)
    g = torch.randn(4, 8)
    (_, w_s), _ = _run(lambda p: AdamS([{"params": p, "sparse": True}], lr=1e-2, lam=0.5, decay="srste"), w0, [g, g])
    mask = nm_mask(w0, 2, 4)
    # oracle: Adam on g + lam * (1 - M) * w (mask fixed within T1)
    w = torch.nn.Parameter(w0.clone())
    ref = torch.optim.Adam([w], lr=1e-2)
    for _ in range(2):
        w.grad = g + 0.5 * (~mask) * w.detach()
        ref.step()
    torch.testing.assert_close(w_s, w.detach(), rtol=0, atol=1e-7)
