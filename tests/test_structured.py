"""ddp_struct: the soft top-k gate, budget -> per-layer counts, gradients to the gates, and the
smaller dense export (loads with AutoModelForCausalLM, reproduces the hard-gated model)."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cast.config import ConfigError, load_schema
from cast.methods.gates import StepClock, hard_topk, soft_topk
from cast.methods.structured import DEFAULTS, GateController, StructuredExportError, arch_of, export_smaller, plan_counts, proj_params, train_structured

_SCHEMA = load_schema()["properties"]
TRAIN_DEFAULTS = {k: v["default"] for k, v in _SCHEMA["train"]["properties"].items() if "default" in v}


def build(family: str, seed: int = 0, layers: int = 2):
    import transformers as tf

    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                  max_position_embeddings=64, tie_word_embeddings=False)
    if family in ("llama", "qwen2", "mistral"):
        cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
               "mistral": (tf.MistralConfig, tf.MistralForCausalLM)}[family]
        cfg = cls[0](intermediate_size=48, num_key_value_heads=2, initializer_range=0.2, **common)
    elif family == "llama_mha":
        cls = (tf.LlamaConfig, tf.LlamaForCausalLM)
        cfg = cls[0](intermediate_size=48, num_key_value_heads=4, initializer_range=0.2, **common)
    elif family == "opt":
        cls = (tf.OPTConfig, tf.OPTForCausalLM)
        cfg = cls[0](vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, ffn_dim=128,
                     max_position_embeddings=64, word_embed_proj_dim=32, init_std=0.2)
    else:
        cls = (tf.GPT2Config, tf.GPT2LMHeadModel)
        cfg = cls[0](vocab_size=64, n_embd=32, n_layer=layers, n_head=4, n_positions=64, initializer_range=0.2,
                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    return cls[1](cfg).eval()


FAMILIES = ["llama", "llama_mha", "qwen2", "mistral", "opt", "gpt2"]


# -- the soft top-k -------------------------------------------------------------------------------
def test_soft_topk_holds_the_budget_and_tends_to_the_hard_top_k():
    s = torch.randn(3, 10, generator=torch.Generator().manual_seed(0), requires_grad=True)
    for k in (1, 2.5, 7):
        g = soft_topk(s, k, 0.5)
        assert torch.allclose(g.sum(-1), torch.full((3,), float(k)), atol=1e-4)
    g = soft_topk(s, 3, 0.5)
    (g * torch.randn(3, 10, generator=torch.Generator().manual_seed(1))).sum().backward()
    assert s.grad.abs().sum() > 0
    # the implicit theta gradient keeps sum(g) fixed: the gradient of sum(g) w.r.t. s is 0
    s2 = s.detach().clone().requires_grad_(True)
    soft_topk(s2, 3, 0.5).sum().backward()
    assert s2.grad.abs().max() < 1e-5
    hard = hard_topk(s, 3).float()
    assert torch.allclose(soft_topk(s.detach(), 3, 1e-4), hard, atol=1e-3)
    assert torch.equal(soft_topk(s.detach(), 10, 0.5), torch.ones(3, 10))


# -- counts and budget ----------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ratio", [0.5, 0.4])
def test_counts_meet_the_budget_within_one_unit(family, ratio):
    arch = arch_of(build(family, layers=1))
    kg, kc = plan_counts(arch, ratio)
    dense = proj_params(arch, arch.kv_heads, arch.inter)
    kept = proj_params(arch, kg, kc)
    assert abs(kept - ratio * dense) <= arch.channel_cost / 2 * len(arch.layers)
    assert kg == (max(1, round(ratio * arch.kv_heads)) if family not in ("opt", "gpt2") else arch.kv_heads)


def test_budget_errors_name_the_problem():
    with pytest.raises(ConfigError, match="no MLP channel in opt"):
        plan_counts(arch_of(build("opt", layers=1)), 0.2)  # the unprunable attention is 1/3 of the weights
    with pytest.raises(ConfigError, match="keep_ratio"):
        plan_counts(arch_of(build("llama", layers=1)), 1.5)
    fake = SimpleNamespace(config=SimpleNamespace(model_type="falcon"))
    with pytest.raises(StructuredExportError, match="falcon"):
        arch_of(fake)


# -- gates and export -----------------------------------------------------------------------------
def controller(model, ratio=0.5, steps=10, at=9, **kw):
    arch = arch_of(model)
    clock = StepClock(steps)
    clock.tick(at)
    return GateController(model, arch, plan_counts(arch, ratio), {**DEFAULTS, **kw}, clock)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gates_receive_gradients(family):
    model = build(family).requires_grad_(False)
    ctl = controller(model, at=3)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    model(ids).logits.square().mean().backward()
    for p in ctl.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert ctl.heads == (family == "llama")


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_and_reproduces_the_hard_gated_model(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = build(family)
    ctl = controller(model, ratio=0.5)
    with torch.no_grad():  # trained-looking gates: random scores, scales away from 1
        for p in ctl.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.5 + (p.mean() > 0.5))
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    ctl.hard = True
    with torch.no_grad():
        hard = model(ids).logits
    small = export_smaller(model, ctl)
    small.save_pretrained(tmp_path, safe_serialization=True)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        out = loaded(ids).logits
    assert (out - hard).abs().max() <= 1e-5
    arch, small_arch = ctl.arch, arch_of(loaded)
    assert type(loaded) is type(model)
    assert (small_arch.kv_heads, small_arch.inter) == (ctl.k_groups, ctl.k_channels)
    assert small_arch.head_dim == arch.head_dim and small_arch.n_rep == arch.n_rep
    removed = proj_params(arch, arch.kv_heads, arch.inter) - proj_params(arch, ctl.k_groups, ctl.k_channels)
    biases = sum(b.numel() for n, b in model.named_parameters() if n.endswith("bias")) - \
        sum(b.numel() for n, b in loaded.named_parameters() if n.endswith("bias"))
    dense_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("ddp_gates."))
    assert sum(p.numel() for p in loaded.parameters()) == dense_params - removed - biases
    ctl.remove()
    assert not hasattr(model, "ddp_gates") and not any(n.startswith("ddp_gates") for n in model.state_dict())


# -- the trainer ----------------------------------------------------------------------------------
def run(model, steps, mcfg, ckpt_dir=None, ckpt_every=0):
    from accelerate import Accelerator

    train = {**TRAIN_DEFAULTS, "seqlen": 16, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "log_every": 4,
             "checkpoint_every": ckpt_every}
    cfg = {"train": train, "sparsity": {"n": 2, "m": 4}, "seed": 0}
    tokens = np.random.default_rng(0).integers(0, 64, size=4000)
    teacher = copy.deepcopy(model).requires_grad_(False)
    return train_structured(model, {}, cfg, mcfg, teacher=teacher, tokens=tokens, budget=steps * 64,
                            method="ddp_struct", accelerator=Accelerator(cpu=True), ckpt_dir=ckpt_dir)


def test_train_structured_end_to_end_beats_its_initial_selection():
    from cast.distill import kl_teacher_student

    ids = torch.from_numpy(np.random.default_rng(1).integers(0, 64, size=(16, 16)))
    with torch.no_grad():
        dense_logits = build("llama")(ids).logits
        start = build("llama")
        initial = export_smaller(start, controller(start, at=0))  # the magnitude scores' top-k, scale 1
        kl_start = float(kl_teacher_student(initial(ids).logits, dense_logits))
    model = build("llama")
    dense = copy.deepcopy(model)
    info = run(model, 40, {"timing_runs": 2, "gate_lr": 0.03, "eta": 1.0})
    small = info.pop("model")
    assert info["steps"] == 40 and len(info["history"]) == 10 and info["history"][-1]["gate/hard"] == 1.0
    assert (info["kv_heads_kept"], info["heads_kept"], info["intermediate_kept"]) == (1, 2, 24)
    assert small.config.num_key_value_heads == 1 and small.config.intermediate_size == 24
    assert info["params_kept"] == sum(p.numel() for p in small.parameters()) < info["params_dense"]
    assert abs(info["proj_params_kept"] / info["proj_params_dense"] - 0.5) < 0.05
    assert info["forward_time_ratio"] > 0
    json.dumps(info)  # everything but the model is JSON-able
    for (n, a), b in zip(model.state_dict().items(), dense.state_dict().values()):  # left dense, unchanged
        assert torch.equal(a, b), n
    assert all(p.requires_grad for p in model.parameters()) and not hasattr(model, "ddp_gates")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, dense(ids).logits)  # no hook left behind
        kl_end = float(kl_teacher_student(small(ids).logits, dense_logits))
    assert kl_end < 0.95 * kl_start, (kl_end, kl_start)


def test_structured_resume_repeats_the_uninterrupted_run(tmp_path):
    a, b, c = build("llama"), build("llama", seed=1), build("llama")
    mcfg = {"timing_runs": 0, "eta": 0.0}  # CE only: b's (different) teacher plays no part
    sa = run(a, 8, mcfg, tmp_path / "ck", ckpt_every=4)["model"]  # leaves its step-4 checkpoint
    sb = run(b, 8, mcfg, tmp_path / "ck", ckpt_every=4)["model"]  # resumes: weights, gates, step
    sc = run(c, 8, mcfg)["model"]
    for pa, pb, pc in zip(sa.parameters(), sb.parameters(), sc.parameters()):
        assert torch.equal(pa, pb) and torch.equal(pa, pc)
