"""One-shot baselines: Wanda, SparseGPT, the calibration windows and the layer-wise runner."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cast.config import load_schema
from cast.hessian import Hessian
from cast.layerwise import calibration_windows, capture_layer_inputs, decoder_layers, run_layerwise
from cast.methods import get, kind_of
from cast.methods.sparsegpt import sparsegpt_prune
from cast.methods.wanda import InputNorms, wanda_mask, wanda_scores
from cast.sparsity import SparsityError, check_model, count_violations, find_targets, nm_mask

from conftest import tiny_llama

_SPARSITY = load_schema()["properties"]["sparsity"]["properties"]
TARGETS, EXCLUDE = _SPARSITY["targets"]["default"], _SPARSITY["exclude"]["default"]  # the schema defaults
N, M = 2, 4


def cfg_and_mcfg(samples=6, seqlen=16, blocksize=128):
    cfg = {"sparsity": {"n": N, "m": M, "targets": TARGETS, "exclude": EXCLUDE}, "train": {"seqlen": seqlen}, "seed": 0}
    mcfg = {"calib_samples": samples, "calib_seqlen": None, "percdamp": 0.01, "blocksize": blocksize}
    return cfg, mcfg


def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                      bos_token_id=0, eos_token_id=0)).eval()


def stream(n=4000, vocab=64, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=n)


def correlated_inputs(in_features, tokens, seed):
    """(tokens, in) inputs: AR(1) across features (neighbours correlated 0.9), scales from 0.1 to 10."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(tokens, in_features, generator=g, dtype=torch.float64)
    x = z.clone()
    for j in range(1, in_features):
        x[:, j] = 0.9 * x[:, j - 1] + 0.44 * z[:, j]
    return x * torch.logspace(-1, 1, in_features, dtype=torch.float64) + 0.5


# -- calibration ----------------------------------------------------------------------------------
def test_calibration_windows_seeded_and_contiguous():
    toks = np.arange(1000)
    a, b = calibration_windows(toks, 5, 32, seed=3), calibration_windows(toks, 5, 32, seed=3)
    assert a.shape == (5, 32) and a.dtype == torch.int64 and torch.equal(a, b)
    assert not torch.equal(a, calibration_windows(toks, 5, 32, seed=4))
    assert torch.equal(a - a[:, :1], torch.arange(32).expand(5, 32))  # consecutive tokens of the stream
    with pytest.raises(ValueError, match="fewer than one calibration window"):
        calibration_windows(np.arange(10), 2, 32, seed=0)


# -- Wanda ----------------------------------------------------------------------------------------
def test_wanda_scores_and_mask_by_hand():
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.5, 1.0, -1.5, 2.0]])
    x = torch.tensor([[3.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.5, 0.0]])  # column norms 3, 1, 0.5, 2
    norms = InputNorms(4)
    norms.add(x)
    assert torch.allclose(norms.norms(), torch.tensor([3.0, 1.0, 0.5, 2.0], dtype=torch.float64))
    s = wanda_scores(w, norms.norms())
    assert torch.allclose(s, torch.tensor([[3.0, 2.0, 1.5, 1.0], [1.5, 1.0, 0.75, 4.0]], dtype=torch.float64))
    keep = wanda_mask(w, norms.norms(), 2, 4)
    assert keep.tolist() == [[True, True, False, False], [True, False, False, True]]
    assert nm_mask(w, 2, 4).tolist()[0] == [False, True, True, False]  # magnitude picks differently


# -- SparseGPT ------------------------------------------------------------------------------------
def test_sparsegpt_white_inputs_is_magnitude():
    """H = c I: no cross-column compensation and the criterion reduces to |w| -> magnitude pruning."""
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    new, keep = sparsegpt_prune(w, 3.0 * torch.eye(16), N, M, percdamp=0.01, blocksize=8)
    assert torch.equal(keep, nm_mask(w, N, M))
    assert torch.allclose(new, w * keep)


def test_sparsegpt_obs_update_by_hand():
    """1:2 on two inputs: the tiny w0 is pruned and w1 absorbs it, w1' = w1 + w0 Hd01/Hd11 (least squares)."""
    w = torch.tensor([[0.01, 1.0], [2.0, -0.001]], dtype=torch.float64)
    h = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    damp = 0.05 * 2.5
    new, keep = sparsegpt_prune(w, h, 1, 2, percdamp=0.05, blocksize=2)
    assert keep.tolist() == [[False, True], [True, False]]
    assert new[0, 0] == 0 and torch.isclose(new[0, 1], torch.tensor(1.0 + 0.01 * 1.0 / (3.0 + damp), dtype=torch.float64))
    assert new[1, 1] == 0 and new[1, 0] == 2.0  # the last column has no later column to compensate


def test_sparsegpt_blocksize_invariant_and_dead_inputs():
    x = correlated_inputs(16, 256, seed=1)
    x[:, 5] = 0.0  # a dead input
    hess = Hessian(16)
    hess.add(x[:100])
    hess.add(x[100:])
    assert torch.allclose(hess.value(), 2 * x.t() @ x / 256)
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, ka = sparsegpt_prune(w, hess.value(), N, M, blocksize=4)
    b, kb = sparsegpt_prune(w, hess.value(), N, M, blocksize=128)
    assert torch.equal(ka, kb) and torch.allclose(a, b, atol=1e-10)
    assert torch.isfinite(a).all() and (a[:, 5] == 0).all()
    assert count_violations(a, N, M) == 0
    with pytest.raises(ValueError, match="blocksize 6 is not a multiple of M=4"):
        sparsegpt_prune(w, hess.value(), N, M, blocksize=6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(seed):
    x = correlated_inputs(64, 1024, seed)  # (tokens, in)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    norms, hess = InputNorms(64), Hessian(64)
    norms.add(x)
    hess.add(x)

    def err(w_hat):
        return float((x @ (w - w_hat).t()).norm() / (x @ w.t()).norm())

    e_mag = err(w * nm_mask(w, N, M))
    e_wanda = err(w * wanda_mask(w, norms.norms(), N, M))
    w_sgpt, _ = sparsegpt_prune(w, hess.value(), N, M, percdamp=0.01, blocksize=16)
    e_sgpt = err(w_sgpt)
    assert count_violations(w_sgpt, N, M) == 0
    assert e_sgpt < 0.7 * e_wanda and e_sgpt < 0.7 * e_mag, (e_sgpt, e_wanda, e_mag)


# -- layer-wise runner ----------------------------------------------------------------------------
def inputs_by_hook(model, mods, ids):
    """What the real model feeds each module on ids (a forward pre-hook)."""
    seen = {}
    hs = [mod.register_forward_pre_hook(lambda _m, a, name=name: seen.__setitem__(name, a[0].detach().clone()))
          for name, mod in mods.items()]
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in hs:
        h.remove()
    return seen


class Recorder:
    def __init__(self):
        self.xs = []

    def add(self, x):
        self.xs.append(x.clone())


def test_layerwise_llama_inputs_match_the_model():
    torch.manual_seed(0)
    model = tiny_llama(layers=3).eval()
    targets = find_targets(model, TARGETS, EXCLUDE, M)
    ids = torch.from_numpy(stream()[:4 * 16].reshape(4, 16))
    name, layers = decoder_layers(model, targets)
    assert name == "model.layers"
    # layer 0: what the runner captures is what the full model feeds it (hidden states and RoPE cos/sin)
    captured = capture_layer_inputs(model, layers[0], ids, batch_size=2, device="cpu")
    real = inputs_by_hook(model, {"l0": layers[0]}, ids)["l0"]
    assert torch.allclose(torch.cat([hs for hs, _, _ in captured]), real)
    assert "position_embeddings" in captured[0][2]
    # every layer: the q_proj inputs the runner sees (previous layers already pruned) equal those of the
    # pruned model's own forward -> layer outputs are recomputed with pruned weights and the kwargs are right
    recs = {}

    def make(name, _mod):
        recs[name] = Recorder()
        return recs[name]

    info = run_layerwise(model, targets, ids, make, lambda _n, mod, _s: mod.weight.mul_(nm_mask(mod.weight, N, M)),
                           batch_size=2)
    assert info == {"layers": 3, "calib_samples": 4, "calib_seqlen": 16}
    assert sum(check_model(model, targets, N, M).values()) == 0
    qs = {k: v for k, v in targets.items() if k.endswith("q_proj")}
    real = inputs_by_hook(model, qs, ids)
    for k in qs:
        assert torch.allclose(torch.cat(recs[k].xs), real[k].reshape(-1, 16), atol=1e-5), k


def test_layerwise_rejects_targets_outside_layers():
    model = tiny_llama()
    targets = find_targets(model, TARGETS + ["lm_head"], ["embed"], M)
    with pytest.raises(SparsityError, match="outside the decoder layers.*lm_head"):
        run_layerwise(model, targets, torch.zeros(1, 8, dtype=torch.long), lambda *_: Recorder(), lambda *_: None)


# -- registered methods ---------------------------------------------------------------------------
@pytest.mark.parametrize("build", [lambda: tiny_llama(layers=2), tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_methods_exact_nm_and_model_runs(build, method):
    assert kind_of(method) == "oneshot"
    model = build().eval()
    cfg, mcfg = cfg_and_mcfg()
    targets = find_targets(model, cfg["sparsity"]["targets"], cfg["sparsity"]["exclude"], M)
    dense = {k: mod.weight.detach().clone() for k, mod in targets.items()}
    get(method).load()(model, targets, cfg, mcfg, method=method, accelerator=None, tracker=None, tokens=stream())
    assert sum(check_model(model, targets, N, M).values()) == 0
    for k, mod in targets.items():
        w = mod.weight.detach()
        assert int((w == 0).sum()) >= w.numel() // 2, k
        if method == "wanda":  # no weight update: kept entries are the dense ones
            assert torch.equal(w[w != 0], dense[k][w != 0])
    if method == "sparsegpt":  # OBS compensation moved some kept weights
        assert any(not torch.equal(mod.weight[mod.weight != 0], dense[k][mod.weight != 0]) for k, mod in targets.items())
    with torch.no_grad():
        logits = model(torch.from_numpy(stream()[:32].reshape(2, 16))).logits
    assert torch.isfinite(logits).all()


def test_method_config_errors_name_the_key():
    model = tiny_llama()
    cfg, mcfg = cfg_and_mcfg(blocksize=6)
    targets = find_targets(model, TARGETS, EXCLUDE, M)
    with pytest.raises(ValueError, match="'methods.sgpt.blocksize'"):
        get("sparsegpt").load()(model, targets, cfg, mcfg, method="sgpt", tokens=stream())
    cfg, mcfg = cfg_and_mcfg(seqlen=128)  # tiny_llama: max_position_embeddings 64
    with pytest.raises(ValueError, match="'train.seqlen'.*calib_seqlen is null"):
        get("wanda").load()(model, targets, cfg, mcfg, method="wanda", tokens=stream())


def test_sparsify_stage_micro(micro_data, micro_teacher, tmp_path):
    """The real stage: config defaults, registry, export and the exact-N:M check."""
    from cast.stages import sparsify

    cfg, data = micro_data
    cfg["methods"]["sparsegpt"] = {**cfg["methods"]["magnitude"], "algorithm": "sparsegpt", "calib_samples": 16}
    res = sparsify.run(cfg, "xs", "sparsegpt", "0", micro_teacher, data, tmp_path / "out")
    assert res["nm_violations"] == 0 and 0.5 <= res["target_sparsity"] < 0.51
    assert res["calib_samples"] == 16 and res["calib_seqlen"] == cfg["train"]["seqlen"]
    assert (tmp_path / "out" / "model" / "config.json").exists()
