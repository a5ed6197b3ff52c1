"""maskllm: candidate sets, the Gumbel-softmax parametrization (Linear and Conv1D layouts), the
argmax export (exact N:M, +0.0 in pruned slots) and a short mask-only training run with resume."""
from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from cast.config import load_schema
from cast.methods.gates import StepClock
from cast.methods.maskllm import Schedule, attach_masks, candidate_masks, export_, mask_stats, train_maskllm
from cast.sparsity import check_model, count_violations, find_targets, input_dim_of

from conftest import tiny_llama

_SCHEMA = load_schema()["properties"]
TRAIN_DEFAULTS = {k: v["default"] for k, v in _SCHEMA["train"]["properties"].items() if "default" in v}
TARGETS = _SCHEMA["sparsity"]["properties"]["targets"]["default"]


def conv1d(nx=8, nf=6, seed=0):
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(seed)
    mod = Conv1D(nf, nx)
    nn.init.normal_(mod.weight)
    return mod


def linear(inp=8, out=6, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(inp, out)


def schedule(steps=10, seed=0):
    return Schedule(StepClock(steps, seed))


# -- candidates -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8), (3, 4)])
def test_candidates_are_exactly_the_n_of_m_patterns(n, m):
    s = candidate_masks(n, m)
    assert s.shape == (math.comb(m, n), m)
    assert set(s.unique().tolist()) == {0.0, 1.0} and (s.sum(1) == n).all()
    rows = {tuple(r) for r in s.int().tolist()}
    assert len(rows) == len(s)  # distinct
    assert rows == {tuple(int(i in c) for i in range(m)) for c in itertools.combinations(range(m), n)}


def test_candidates_reject_trivial_patterns():
    for n, m in [(0, 4), (4, 4), (5, 4)]:
        with pytest.raises(ValueError):
            candidate_masks(n, m)


# -- the parametrization --------------------------------------------------------------------------
@pytest.mark.parametrize("make", [linear, conv1d])
def test_export_keeps_the_argmax_candidate_of_every_group(make):
    mod = make()
    dim = input_dim_of(mod)
    sched = schedule()
    params = attach_masks({"l": mod}, 2, 4, sched)
    p = params["l"]
    groups = p.logits.shape[0]
    assert groups == mod.weight.numel() // 4
    choice = torch.arange(groups) % 6
    with torch.no_grad():  # hand-built logits: candidate choice[g] wins in group g
        p.logits.zero_()
        p.logits[torch.arange(groups), choice] = 1.0
    raw = mod.parametrizations.weight.original.detach().clone()
    masks = export_({"l": mod}, params)
    s = candidate_masks(2, 4).bool()
    # group g in layout terms: Linear rows of 4 consecutive inputs; Conv1D 4 consecutive rows of a column
    wg = raw if dim == 1 else raw.t()
    kg = masks["l"] if dim == 1 else masks["l"].t()
    order = torch.arange(groups).reshape(wg.shape[0], -1) if dim == 1 else \
        torch.arange(groups).reshape(-1, wg.shape[0]).t()  # group index of (row-of-wg, block)
    for r in range(wg.shape[0]):
        for blk in range(wg.shape[1] // 4):
            assert torch.equal(kg[r, 4 * blk:4 * blk + 4], s[choice[order[r, blk]]])
    assert not parametrize.is_parametrized(mod)
    assert torch.equal(mod.weight, torch.where(masks["l"], raw, torch.zeros_like(raw)))


@pytest.mark.parametrize("make", [linear, conv1d])
def test_gradient_reaches_the_logits_and_noise_is_seeded(make):
    mod = make()
    sched = schedule()
    p = attach_masks({"l": mod}, 2, 4, sched, strength=3.0)["l"]
    mod.requires_grad_(False)
    p.logits.requires_grad_(True)
    x = torch.randn(5, 8)
    a = mod(x)
    (a.square().sum() - 1e-3 * p.last_reg).backward()
    assert p.logits.grad is not None and p.logits.grad.abs().sum() > 0
    m1 = p.soft_mask().detach()
    assert ((m1 >= 0) & (m1 <= 1)).all()
    assert torch.allclose(m1.reshape(-1).sum(), torch.tensor(m1.numel() / 2), atol=1e-3)  # N/M of every group
    assert torch.equal(m1, p.soft_mask().detach())  # same (step, micro): same draw
    sched.clock.tick(3)
    assert not torch.equal(m1, p.soft_mask().detach())


@pytest.mark.parametrize("make", [linear, conv1d])
def test_export_is_exact_2_4_with_positive_zeros(make):
    mod = make(inp=16, out=12) if make is linear else make(nx=16, nf=12)
    with torch.no_grad():
        mod.weight.copy_(-mod.weight.abs() - 0.1)  # all negative: a multiplied mask would leave -0.0
    sched = schedule()
    params = attach_masks({"l": mod}, 2, 4, sched, priors=None)
    sched.hard = True
    hard_out = mod(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)))
    masks = export_({"l": mod}, params)
    assert count_violations(mod.weight, 2, 4, input_dim_of(mod)) == 0
    assert int(masks["l"].sum()) == mod.weight.numel() // 2
    pruned = mod.weight[~masks["l"]]
    assert (pruned == 0).all() and not torch.signbit(pruned).any()  # +0.0 bit for bit
    assert (mod.weight[masks["l"]] != 0).all()
    assert torch.equal(mod(torch.randn(3, 16, generator=torch.Generator().manual_seed(0))), hard_out)


def test_magnitude_prior_starts_at_the_magnitude_mask():
    mod = linear(16, 8)
    from cast.sparsity import param_mask

    prior = param_mask(mod.weight, 2, 4)
    p = attach_masks({"l": mod}, 2, 4, schedule(), priors={"l": prior}, strength=30.0)["l"]
    assert torch.equal(p.hard_mask(), prior)  # a strong prior: argmax = M0 everywhere
    assert mask_stats({"l": p})["mask/changed_vs_prior"] == 0.0


# -- training -------------------------------------------------------------------------------------
def run_cfg(steps=8, ckpt_every=0):
    train = {**TRAIN_DEFAULTS, "seqlen": 16, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "lr_schedule": "constant",
             "checkpoint_every": ckpt_every, "log_every": 1}
    cfg = {"train": train, "sparsity": {"n": 2, "m": 4, "targets": TARGETS, "exclude": ["lm_head", "embed"]}, "seed": 0}
    return cfg, steps * 4 * 16


def run(model, cfg, budget, mcfg, ckpt_dir=None):
    from accelerate import Accelerator

    tokens = np.random.default_rng(0).integers(0, 64, size=4000)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    targets = find_targets(model, cfg["sparsity"]["targets"], cfg["sparsity"]["exclude"], 4)
    info = train_maskllm(model, targets, cfg, mcfg, teacher=teacher, tokens=tokens, budget=budget, method="maskllm",
                         accelerator=Accelerator(cpu=True), ckpt_dir=ckpt_dir)
    return info, targets


def peaked_llama(seed=0):
    """A tiny LLaMA with large weights (init std 0.3): peaked outputs, so pruning visibly hurts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                        initializer_range=0.3, tie_word_embeddings=False))


def test_short_run_exports_exact_2_4_and_beats_its_magnitude_prior():
    from cast.distill import kl_teacher_student
    from cast.sparsity import hard_prune_

    cfg, budget = run_cfg(steps=24)
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, 64, size=(16, 16)))
    with torch.no_grad():
        dense = peaked_llama()(ids).logits
        magnitude = peaked_llama()
        hard_prune_(find_targets(magnitude, TARGETS, ["lm_head", "embed"], 4), 2, 4)
        kl_prior = float(kl_teacher_student(magnitude(ids).logits, dense))
    model = peaked_llama()
    info, targets = run(model, cfg, budget, {"eta": 1.0})  # the defaults: magnitude prior, mask_lr = train.lr
    assert info["steps"] == 24 and len(info["history"]) == 24
    assert all(v == 0 for v in check_model(model, targets, 2, 4).values())
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    assert not any(torch.signbit(mod.weight[mod.weight == 0]).any() for mod in targets.values())
    assert abs(info["kept_share"] - 0.5) < 1e-9
    h = info["history"]
    assert h[-1]["mask/max_prob"] > h[0]["mask/max_prob"]  # the categoricals sharpen
    assert 0 < info["groups_changed_vs_prior"] < 0.5
    with torch.no_grad():
        kl_learned = float(kl_teacher_student(model(ids).logits, dense))
    assert kl_learned < 0.95 * kl_prior, (kl_learned, kl_prior)  # the learned mask beats magnitude


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    cfg, budget = run_cfg(steps=8, ckpt_every=4)
    a = tiny_llama(vocab=64, hidden=32, layers=1, heads=2, inter=64)
    b = tiny_llama(vocab=64, hidden=32, layers=1, heads=2, inter=64, seed=1)  # only a resume can make it `a`
    c = copy.deepcopy(a)
    mcfg = {"mask_lr": 0.05, "eta": 0.0}  # CE only: b's (different) teacher plays no part
    run(a, cfg, budget, mcfg, ckpt_dir=tmp_path / "ck")  # leaves its step-4 checkpoint behind
    assert (tmp_path / "ck" / "step.json").exists()
    run(b, cfg, budget, mcfg, ckpt_dir=tmp_path / "ck")  # resumes at step 4: weights, logits, step
    run(c, cfg, budget, mcfg)  # no checkpoints at all
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb) and torch.equal(pa, pc)


@pytest.mark.parametrize("prior", ["wanda", "sparsegpt"])
def test_calibrated_priors_give_n_of_m_masks(prior):
    from cast.methods import oneshot
    from cast.methods.maskllm import DEFAULTS, prior_masks

    cfg, _ = run_cfg()
    tokens = np.random.default_rng(0).integers(0, 64, size=2000)
    mcfg = {**DEFAULTS, "prior": prior, "calib_samples": 4, "calib_seqlen": 16}
    model = tiny_llama(vocab=64, hidden=32, layers=1, heads=2, inter=64)
    targets = find_targets(model, TARGETS, ["lm_head", "embed"], 4)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks = prior_masks(model, targets, cfg, mcfg, tokens=tokens)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # pruned a copy only
    twin = copy.deepcopy(model)
    twin_t = find_targets(twin, TARGETS, ["lm_head", "embed"], 4)
    getattr(oneshot, prior)(twin, twin_t, cfg, mcfg, tokens=tokens)
    for name, mask in masks.items():
        assert count_violations(mask.float(), 2, 4) == 0 and int(mask.sum()) == mask.numel() // 2
        assert torch.equal(mask, twin_t[name].weight != 0)
    with pytest.raises(ValueError, match="prior"):
        prior_masks(model, targets, cfg, {**mcfg, "prior": "random"})
