"""AdamS(impl='compiled') against the foreach reference, the one-pass mask against the top-k
oracle, the compile fallback, and the closed-form gradient of the distillation loss."""
import warnings

import pytest
import torch

from cast.distill import _kl, _nll, distill_loss, log_probs, teacher_targets
from cast.optim import fused, native
from cast.optim.adams import AdamS
from cast.sparsity import nm_mask, nm_mask_reference

SHAPES = [(16, 32), (24, 8), (8, 64)]  # nn.Linear layout (out, in): groups along dim 1
CONV_SHAPE = (32, 12)  # HF Conv1D layout (in, out): groups along dim 0


def _skip_if_unavailable():
    if not fused.available():
        pytest.skip(f"torch.compile is unavailable here: {fused._failed}")


def _make(impl, **kw):
    torch.manual_seed(0)
    lin = [torch.nn.Parameter(torch.randn(*s)) for s in SHAPES]
    conv = torch.nn.Parameter(torch.randn(*CONV_SHAPE))
    dense = torch.nn.Parameter(torch.randn(40))
    groups = [{"params": lin, "sparse": True, "input_dim": 1}, {"params": [conv], "sparse": True, "input_dim": 0},
              {"params": [dense]}]
    opt = AdamS(groups, lr=1e-2, total_steps=50, t1=5, impl=impl, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 / (1 + 0.1 * k))  # a new lr every step
    return [*lin, conv, dense], opt, sched


@pytest.mark.parametrize("kw", [dict(lam=0.1, second_moment="mixed"), dict(lam=0.1, second_moment="grad"),
                                dict(lam=0.0, second_moment="mixed"), dict(lam=0.1, decay="srste", second_moment="grad"),
                                dict(lam=0.05, weight_decay=0.1, second_moment="mixed"),
                                dict(lam=0.05, weight_decay=0.1, second_moment="grad")],
                         ids=["adams", "adams_grad", "lam0", "srste", "wd", "wd_grad"])
def test_compiled_matches_foreach_every_step_without_recompiling(kw, monkeypatch):
    monkeypatch.setattr(fused, "MIN_NUMEL", 0)  # every tensor through the kernels, however small
    ref_ps, ref, ref_sched = _make("foreach", **kw)
    ps, opt, sched = _make("compiled", **kw)
    gen = torch.Generator().manual_seed(1)
    graphs = None
    for step in range(1, 51):
        for a, b in zip(ref_ps, ps):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        ref.step()
        if step == 1:
            opt.step()  # compiles the kernels this configuration needs
            _skip_if_unavailable()
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        else:  # no recompilation across steps, lr changes or mask refreshes
            with torch._dynamo.config.patch(error_on_recompile=True):
                opt.step()
        ref_sched.step()
        sched.step()
        for a, b in zip(ref_ps, ps):
            torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-6, atol=1e-7, msg=f"step {step}")
        for name in ("exp_avg", "exp_avg_sq"):
            for a, b in zip(ref_ps, ps):
                torch.testing.assert_close(opt.state[b][name], ref.state[a][name], rtol=1e-5, atol=1e-7)
        for a, b in zip(ref.masks(), opt.masks()):
            assert torch.equal(a, b), f"masks differ at step {step}"
        assert opt.last_flips == ref.last_flips
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert ref.last_refresh_step == opt.last_refresh_step == 46
    assert all(m.is_contiguous() for m in opt.masks())


def _numels(a):
    return tuple(t.numel() for t in a) if isinstance(a, list) else a.numel()


def test_small_tensors_take_the_foreach_path_and_equal_shapes_share_calls(monkeypatch):
    """Tensors below MIN_NUMEL go to foreach; the others are updated CHUNK same-shape tensors per
    compiled call (the masks too, with the C kernel off); the result is the reference's."""
    monkeypatch.setattr(native, "supports", lambda p: False)
    calls = []
    real = fused._run
    monkeypatch.setattr(fused, "_run", lambda name, *a: calls.append((name, _numels(a[0]))) or real(name, *a))
    monkeypatch.setattr(fused, "CHUNK", 2)
    runs = {}
    for impl in ("foreach", "compiled"):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(8, 16)),
              torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(32, 128)),
              torch.nn.Parameter(torch.randn(64, 128))]
        opt = AdamS([{"params": ps, "sparse": True}], lr=1e-2, lam=0.1, total_steps=6, t1=3, impl=impl)
        gen = torch.Generator().manual_seed(1)
        for _ in range(6):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        runs[impl] = ps
    _skip_if_unavailable()
    big, mid = 64 * 128, 32 * 128  # 8 x 16 = 128 entries < MIN_NUMEL: foreach
    per_step = [("adams", (big, big)), ("adams", (big,)), ("adams", (mid,))]
    assert [c for c in calls if c[0] == "adams"] == per_step * 6
    per_refresh = [("mask", (big, big)), ("mask", (big,)), ("mask", (128,)), ("mask", (mid,))]  # masks: any size
    assert [c for c in calls if c[0] == "mask"] == per_refresh * 2
    for a, b in zip(*runs.values()):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kernel", ["native", "compiled"])
def test_fast_mask_equals_reference_topk_with_ties_and_counts_flips(kernel, monkeypatch):
    if kernel == "compiled":
        monkeypatch.setattr(native, "supports", lambda p: False)
    elif not native.available():
        pytest.skip("no C compiler here")
    torch.manual_seed(2)
    cases = [((2, 4), (12, 32), 1), ((1, 4), (8, 16), 1), ((3, 4), (8, 16), 1), ((2, 4), (16, 6), 0),
             ((2, 8), (4, 64), 1), ((4, 8), (24, 5), 0), ((2, 4), (256, 512), 1), ((2, 4), (64, 300), 0)]
    for (n, m), shape, input_dim in cases:
        w = torch.randint(-3, 4, shape).float()  # few distinct magnitudes: ties in most groups
        old = torch.rand(shape) > 0.5
        out = fused.refresh_mask(w, old, n, m, input_dim)
        if kernel == "compiled":
            _skip_if_unavailable()
        new, flips = out
        want = nm_mask_reference(w, n, m) if input_dim == 1 else nm_mask_reference(w.t(), n, m).t()
        assert torch.equal(new, want), (n, m, shape, input_dim)
        assert int(flips) == int((want != old).sum())
        assert torch.equal(nm_mask(w if input_dim == 1 else w.t(), n, m), want if input_dim == 1 else want.t())
    # exactly N kept per group even when the whole group ties, lowest index first
    new, _ = fused.refresh_mask(torch.ones(2, 8), None, 2, 4)
    assert new.tolist() == [[True, True, False, False] * 2] * 2
    # NaN and infinities: the same comparisons as cast.sparsity.nm_mask, so the same mask
    w = torch.randn(64, 32)
    w.view(-1)[torch.randperm(w.numel())[:200]] = float("nan")
    w.view(-1)[torch.randperm(w.numel())[:100]] = float("inf")
    assert torch.equal(fused.refresh_mask(w, None, 2, 4)[0], nm_mask(w, 2, 4))


def test_compile_failure_warns_once_and_falls_back_to_foreach(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(native, "_library", lambda: None)  # no compiler: no C kernel either
    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_worked", set())
    monkeypatch.setattr(fused, "_failed", None)
    ref_ps, ref, _ = _make("foreach", lam=0.1)
    ps, opt, _ = _make("compiled", lam=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(7):
            for a, b in zip(ref_ps, ps):
                a.grad = torch.randn(a.shape)
                b.grad = a.grad.clone()
            ref.step()
            opt.step()
    msgs = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert msgs == ["AdamS impl='compiled': torch.compile failed (RuntimeError: no C++ compiler); using impl='foreach'"]
    for a, b in zip(ref_ps, ps):
        assert torch.equal(a, b)
    assert not fused.available()


def test_bad_impl_names_the_config_key():
    with pytest.raises(ValueError, match="train.optimizer_impl"):
        AdamS([torch.nn.Parameter(torch.randn(2, 4))], impl="triton")


@pytest.mark.parametrize("eta,temperature", [(1 / 3, 1.0), (0.5, 2.0), (1.0, 1.0)])
def test_distill_loss_closed_form_gradient_equals_autograd(eta, temperature):
    torch.manual_seed(3)
    z = torch.randn(2, 6, 9, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 6, 9, dtype=torch.float64)
    ids = torch.randint(0, 9, (2, 6))
    loss, ce, kl = distill_loss(z, t, ids, eta, temperature)
    (2.5 * loss).backward()
    got = z.grad.clone()
    z.grad = None
    want_kl = _kl(log_probs(z, temperature), log_probs(t, temperature), temperature)
    want_ce = _nll(log_probs(z), ids)
    (2.5 * (eta * want_kl + (1 - eta) * want_ce)).backward()
    torch.testing.assert_close(got, z.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kl, want_kl.detach())
    torch.testing.assert_close(ce, want_ce.detach())
    assert float(got[:, -1].abs().max()) == 0.0  # the last position predicts nothing


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_teacher_targets_are_plain_constants_and_match_the_logits_path(temperature):
    torch.manual_seed(4)
    logits = torch.randn(3, 5, 7, dtype=torch.float64)
    teacher = torch.nn.Module()
    teacher.forward = lambda ids: type("Out", (), {"logits": logits.clone()})()
    ids = torch.randint(0, 7, (3, 5))
    tt = teacher_targets(teacher, ids, temperature)
    assert not tt.probs.is_inference() and not tt.probs.requires_grad
    log_t = log_probs(logits, temperature)
    torch.testing.assert_close(tt.probs, log_t.exp(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(tt.neg_entropy, (log_t.exp() * log_t).sum(), rtol=1e-12, atol=1e-12)
    z = torch.randn(3, 5, 7, dtype=torch.float64)
    kept = logits.clone()
    want = distill_loss(z, logits, ids, 0.4, temperature)
    assert torch.equal(logits, kept)  # teacher logits passed in are not overwritten
    for a, b in zip(distill_loss(z, None, ids, 0.4, temperature, targets=tt), want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # an fp32 teacher for an fp64 student: computed in the student's precision
    mixed = distill_loss(z, logits.float(), ids, 0.4, temperature)
    for a, b in zip(mixed, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
