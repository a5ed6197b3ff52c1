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


@pytest.mark.parametrize("second_moment", ["mixed", "grad"])
def test_lambda_zero_is_adam_step_for_step(second_moment):
    torch.manual_seed(0)
    w0 = torch.randn(8, 16)
    grads = [torch.randn(8, 16) for _ in range(25)]
    ours, _ = _run(lambda p: AdamS([{"params": p, "sparse": True}], lr=1e-2, lam=0.0, total_steps=25, t1=3,
                                   second_moment=second_moment), w0, grads)
    ref, _ = _run(lambda p: torch.optim.Adam(p, lr=1e-2), w0, grads)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def _scalar_adams(w, grads, lr, b1, b2, eps, lam, T, t1, second_moment="mixed"):
    """Per-entry oracle of Alg. 1 on a list of rows, written without tensors: 2:4 masks by hand
    along each row, refreshed before steps 1, 1 + t1, ...; v from u^2 on every entry ('mixed',
    Eq. 8) or from g^2 on kept entries ('grad'). Returns w, m, v and the last mask."""
    w = [list(r) for r in w]
    m = [[0.0] * len(r) for r in w]
    v = [[0.0] * len(r) for r in w]
    mask = None
    for t, g in enumerate(grads, start=1):
        if (t - 1) % t1 == 0:
            mask = []
            for r in w:
                row = []
                for s in range(0, len(r), 4):
                    keep = sorted(range(4), key=lambda i: (-abs(r[s + i]), i))[:2]
                    row += [i in keep for i in range(4)]
                mask.append(row)
        a = min(1.0, t / T)
        for r in range(len(w)):
            for i in range(len(w[r])):
                m[r][i] = b1 * m[r][i] + (1 - b1) * g[r][i]
                if mask[r][i]:
                    u = m[r][i]
                else:
                    sign = (w[r][i] > 0) - (w[r][i] < 0)
                    u = (1 - a) * m[r][i] + a * lam * sign  # Eq. 7
                src = g[r][i] if second_moment == "grad" and mask[r][i] else u
                v[r][i] = b2 * v[r][i] + (1 - b2) * src ** 2  # Eq. 8
                w[r][i] -= lr * (u / (1 - b1 ** t)) / (math.sqrt(v[r][i] / (1 - b2 ** t)) + eps)
    return w, m, v, mask


@pytest.mark.parametrize("second_moment", ["mixed", "grad"])
def test_two_steps_on_a_1x8_weight_match_hand_computation(second_moment):
    w0 = [0.5, -0.1, 0.3, 0.05, -0.4, 0.2, 0.01, -0.6]
    g = [[0.1, -0.2, 0.05, 0.3, -0.1, 0.2, -0.3, 0.05], [0.2, 0.1, -0.1, -0.2, 0.3, -0.05, 0.1, 0.2]]
    kw = dict(lr=0.01, b1=0.9, b2=0.999, eps=1e-8, lam=0.5, T=2, t1=10, second_moment=second_moment)
    want, want_m, _, _ = _scalar_adams([w0], [[gi] for gi in g], **kw)
    w = torch.nn.Parameter(torch.tensor([w0], dtype=torch.float64))
    opt = AdamS([{"params": [w], "sparse": True}], lr=0.01, betas=(0.9, 0.999), eps=1e-8, lam=0.5, total_steps=2,
                t1=10, second_moment=second_moment)
    for gi in g:
        w.grad = torch.tensor([gi], dtype=torch.float64)
        opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-7)
    # the stored momentum is the raw-gradient EMA: the decay never enters it
    torch.testing.assert_close(opt.state[w]["exp_avg"], torch.tensor(want_m, dtype=torch.float64), rtol=0, atol=1e-12)
    assert opt.state[w]["mask"].tolist() == [[True, False, True, False, True, False, False, True]]


# Three steps on a 1x4 weight, 2:4, t1=2 (masks before steps 1 and 3), lr=0.05, b1=b2=0.5, eps=0,
# lam=0.5, T=4 (a_t = 1/4, 1/2, 3/4). With b1=b2 the bias corrections cancel to
# step = lr * u / sqrt((1 - 0.5^t) v_t). Hand derivation, second_moment='mixed' (v from u^2):
# t=1  mask [1 1 0 0] (|w| = .8 .3 .2 .15), g = [1 -1 -1 .5]
#      m = [.5 -.5 -.5 .25]; u = [.5, -.5, .75(-.5) + .25(.5), .75(.25) + .25(.5)] = [.5 -.5 -.25 .3125]
#      v = u^2/2 = [.125 .125 .03125 .048828125]; step = .05 u / sqrt(.5 v) = .1 sign(u)
#      w = [.7 -.2 .3 .05]
# t=2  (no refresh) g = [-.5 -1 -2 1]; m = [0 -.75 -1.25 .625]
#      u = [0, -.75, .5(-1.25) + .25, .5(.625) + .25] = [0 -.75 -.375 .5625]
#      v = v/2 + u^2/2 = [.0625 .34375 .0859375 .1826171875]; w -= .05 u / sqrt(.75 v)
#      w = [.7, -.2 + .0375/sqrt(.2578125), .3 + .01875/sqrt(.064453125), .05 - .028125/sqrt(.136962890625)]
# t=3  refresh from |w| = [.7 .1261 .3739 .0260]: mask [1 0 1 0], entry 1 kept -> masked, entry 2
#      masked -> kept. g = [1 .5 -1 -1]; m = [.5 -.125 -1.125 -.1875]
#      u = [.5, .25(-.125) - .75(.5), -1.125, .25(-.1875) - .75(.5)] = [.5 -.40625 -1.125 -.421875]
#      v = [.15625 .25439453125 .67578125 .1802978515625]; w -= .05 u / sqrt(.875 v)
HAND_W0, HAND_G = [0.8, -0.3, 0.2, 0.15], [[1.0, -1.0, -1.0, 0.5], [-0.5, -1.0, -2.0, 1.0], [1.0, 0.5, -1.0, -1.0]]
HAND_W = [[0.7, -0.2, 0.3, 0.05],
          [0.7, -0.12614510541240032, 0.3738548945875997, -0.02599605956573485],
          [0.6323876596217187, -0.0830919024709152, 0.44700508001734607, 0.02711127344049625]]
HAND_MASKS = [[True, True, False, False], [True, True, False, False], [True, False, True, False]]


def _hand_opt(second_moment):
    w = torch.nn.Parameter(torch.tensor([HAND_W0], dtype=torch.float64))
    opt = AdamS([{"params": [w], "sparse": True}], lr=0.05, betas=(0.5, 0.5), eps=0.0, lam=0.5, total_steps=4, t1=2,
                second_moment=second_moment)
    return w, opt


def test_three_steps_with_a_mask_flip_match_hand_computation():
    w, opt = _hand_opt("mixed")
    for t, (g, want_w, want_mask) in enumerate(zip(HAND_G, HAND_W, HAND_MASKS), start=1):
        w.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        assert opt.state[w]["mask"].tolist() == [want_mask], f"step {t}"
        torch.testing.assert_close(w.detach()[0], torch.tensor(want_w, dtype=torch.float64), rtol=0, atol=1e-12,
                                   msg=f"step {t}")
    st = opt.state[w]
    assert opt.last_refresh_step == 3 and opt.last_flips == 2
    assert st["exp_avg"][0].tolist() == [0.5, -0.125, -1.125, -0.1875]  # exact in binary
    assert st["exp_avg_sq"][0].tolist() == [0.15625, 0.25439453125, 0.67578125, 0.1802978515625]


def test_grad_second_moment_differs_only_in_kept_entries_v():
    """One step of the hand example: 'grad' builds kept entries' v from g^2 = 1 (v = .5, not
    u^2/2 = .125), so they step .05 u / sqrt(.5 v) = .05 sign(u) instead of .1 sign(u); masked
    entries (v from u^2 under both rules) are identical."""
    (w_mix, mix), (w_grad, grad) = _hand_opt("mixed"), _hand_opt("grad")
    for w, opt in ((w_mix, mix), (w_grad, grad)):
        w.grad = torch.tensor([HAND_G[0]], dtype=torch.float64)
        opt.step()
    assert mix.state[w_mix]["exp_avg_sq"][0].tolist() == [0.125, 0.125, 0.03125, 0.048828125]
    assert grad.state[w_grad]["exp_avg_sq"][0].tolist() == [0.5, 0.5, 0.03125, 0.048828125]
    assert torch.equal(mix.state[w_mix]["exp_avg"], grad.state[w_grad]["exp_avg"])
    torch.testing.assert_close(w_grad.detach()[0], torch.tensor([0.75, -0.25, 0.3, 0.05], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(w_mix.detach()[0], torch.tensor(HAND_W[0], dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("second_moment", ["mixed", "grad"])
def test_fifty_steps_with_refreshes_match_the_per_entry_reference(second_moment):
    gen = torch.Generator().manual_seed(5)
    w0 = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    grads = [torch.randn(4, 16, generator=gen, dtype=torch.float64) for _ in range(50)]
    kw = dict(lr=1e-2, b1=0.9, b2=0.99, eps=1e-8, lam=0.3, T=40, t1=5)  # a_t reaches 1 at t = 40
    want_w, want_m, want_v, want_mask = _scalar_adams(w0.tolist(), [g.tolist() for g in grads],
                                                      second_moment=second_moment, **kw)
    w = torch.nn.Parameter(w0.clone())
    opt = AdamS([{"params": [w], "sparse": True}], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, lam=0.3, total_steps=40,
                t1=5, second_moment=second_moment)
    flips = 0
    for g in grads:
        w.grad = g.clone()
        opt.step()
        flips += opt.last_flips if opt.last_refresh_step == int(opt.state[w]["step"]) else 0
    assert flips > 0  # the masks did change along the way
    assert opt.state[w]["mask"].tolist() == want_mask
    st = opt.state[w]
    for got, want in ((w.detach(), want_w), (st["exp_avg"], want_m), (st["exp_avg_sq"], want_v)):
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("second_moment", ["mixed", "grad"])
def test_decay_touches_only_masked_entries_and_v_comes_from_mixed_moment(second_moment):
    torch.manual_seed(1)
    w0 = torch.randn(4, 8)
    g = torch.randn(4, 8)
    lam, T = 0.3, 4
    opt_kw = dict(lr=1e-2, lam=lam, total_steps=T, t1=100, second_moment=second_moment)
    (w_s,), s_opt = _run(lambda p: AdamS([{"params": p, "sparse": True}], **opt_kw), w0, [g])
    (w_a,), a_opt = _run(lambda p: torch.optim.Adam(p, lr=1e-2), w0, [g])
    mask = nm_mask(w0, 2, 4)
    assert not torch.allclose(w_s[~mask], w_a[~mask])  # masked weights: decayed
    p = next(iter(s_opt.state))
    st = s_opt.state[p]
    torch.testing.assert_close(st["exp_avg"], 0.1 * g)  # raw gradient only
    a = alpha_t(1, T)
    u = (1 - a) * 0.1 * g + a * lam * torch.sign(w0)
    torch.testing.assert_close(st["exp_avg_sq"][~mask], 0.001 * u[~mask] ** 2)
    if second_moment == "grad":  # kept weights: plain Adam
        assert torch.equal(w_s[mask], w_a[mask])
        torch.testing.assert_close(st["exp_avg_sq"][mask], 0.001 * g[mask] ** 2)
    else:  # kept: u = m_1 = 0.1 g, v = 0.001 (0.1 g)^2, so the step is lr g / (0.1 |g| + eps) (Alg. 1)
        torch.testing.assert_close(st["exp_avg_sq"][mask], 0.001 * (0.1 * g[mask]) ** 2)
        torch.testing.assert_close(w_s[mask], w0[mask] - 1e-2 * g[mask] / (0.1 * g[mask].abs() + 1e-8))
        assert not torch.allclose(w_s[mask], w_a[mask])


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
    with pytest.raises(ValueError, match="second_moment"):
        AdamS([w], second_moment="g2")
    with pytest.raises(ValueError, match="second_moment"):  # a group's own value is checked too
        AdamS([{"params": [w], "sparse": True, "second_moment": "adam"}])
    assert AdamS([w]).defaults["second_moment"] == "mixed"  # the paper's rule by default


def test_state_dict_keeps_second_moment_and_older_checkpoints_load():
    w = torch.nn.Parameter(torch.randn(2, 8))
    opt = AdamS([{"params": [w], "sparse": True}], lam=0.1, second_moment="grad")
    w.grad = torch.randn(2, 8)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["second_moment"] == "grad"
    fresh = AdamS([{"params": [w], "sparse": True}], lam=0.1)
    fresh.load_state_dict(sd)  # a checkpoint's hyper-parameters win, as for lr
    assert fresh.param_groups[0]["second_moment"] == "grad"
    del sd["param_groups"][0]["second_moment"]  # written before the option existed
    fresh = AdamS([{"params": [w], "sparse": True}], lam=0.1, second_moment="grad")
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["second_moment"] == "grad"  # the constructor's value
    w.grad = torch.randn(2, 8)
    fresh.step()


def test_cast_optim_exports_adams():
    import cast
    import cast.optim

    assert cast.optim.AdamS is AdamS and cast.AdamS is AdamS


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
