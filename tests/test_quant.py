"""Weight-only quantization: RTN by hand, GPTQ against RTN, exact zeros through every scheme, the
torchao cross-check, and the stage's model reloading in AutoModelForCausalLM and lm-eval."""
import copy
import math

import pytest
import torch
from torch import nn

from cast.hessian import Hessian
from cast.layerwise import run_layerwise
from cast.quant import dequantize, gptq_quantize, quantize_targets, rtn_quantize, torchao_codes, weight_matrix
from cast.sparsity import SparsityError, check_model, find_targets, hard_prune_, nm_mask

TARGETS = [r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"]


def test_rtn_int8_per_channel_by_hand():
    w = torch.tensor([[0.5, -1.27, 0.0, 0.254],
                      [2.54, 0.0, -1.0, 0.123]])
    q, s = rtn_quantize(w, 8)
    # row scales max|w| / 127: 0.01 and 0.02; codes round(w / s)
    assert torch.allclose(s, torch.tensor([[0.01], [0.02]]))
    assert q.dtype == torch.int8
    assert q.tolist() == [[50, -127, 0, 25], [127, 0, -50, 6]]
    assert torch.allclose(dequantize(q, s), torch.tensor([[0.5, -1.27, 0.0, 0.25], [2.54, 0.0, -1.0, 0.12]]))


def test_rtn_int4_groups_by_hand_with_ragged_last_group():
    w = torch.tensor([[1.4, -0.62, 0.0, 0.33, 0.7, -0.07],
                      [0.0] * 6])
    q, s = rtn_quantize(w, 4, group_size=4)  # groups: inputs 0-3 and 4-5
    assert torch.allclose(s, torch.tensor([[0.2, 0.1], [1.0, 1.0]]))  # all-zero group -> scale 1
    assert q.tolist() == [[7, -3, 0, 2, 7, -1], [0] * 6]
    assert torch.allclose(dequantize(q, s, 4), torch.tensor([[1.4, -0.6, 0.0, 0.4, 0.7, -0.1], [0.0] * 6]))
    with pytest.raises(ValueError, match="need their group_size"):
        dequantize(q, s)


def test_codes_stay_in_symmetric_range():
    torch.manual_seed(0)
    w = torch.randn(16, 64) * 3
    for bits, qm in ((8, 127), (4, 7)):
        q, s = rtn_quantize(w, bits, 16)
        assert int(q.abs().max()) == qm and int(q.min()) >= -qm
        assert float((dequantize(q, s, 16) - w).abs().max()) <= float(s.max()) / 2 + 1e-6  # half a step


def _layer_problem(rows=32, cols=64, n=512, sparse=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + 2 * torch.randn(cols, cols, generator=g) / cols ** 0.5
    x = torch.randn(n, cols, generator=g) @ mix  # correlated inputs: where GPTQ's feedback helps
    w = torch.randn(rows, cols, generator=g)
    if sparse:
        w = w * nm_mask(w, 2, 4)
    lin = nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin, x, w


def _hessian(batches):
    """H of one layer accumulated batch by batch (cast.hessian)."""
    h = Hessian(batches.shape[-1])
    for x in batches:
        h.add(x)
    return h.value()


def _layer_hessians(model, targets, ids):
    """Every target's H from the shared layer-wise runner, changing nothing."""
    out = {}
    run_layerwise(model, targets, ids, lambda _n, mod: Hessian(weight_matrix(mod).shape[1]),
                  lambda name, _mod, h: out.__setitem__(name, h.value()), sequential=False)
    return out


def test_collected_hessian_is_2xxt_over_n():
    lin, x, _ = _layer_problem(rows=4, cols=8, n=10)
    H = _hessian(x.reshape(5, 2, 8))
    assert torch.allclose(H, 2 * x.double().t() @ x.double() / 10)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("bits,group", [(4, None), (4, 32), (8, None)])
def test_gptq_has_lower_output_error_than_rtn(sparse, bits, group):
    lin, x, w = _layer_problem(sparse=sparse)
    H = _hessian(x.reshape(8, 64, -1))
    ref = x @ w.t()

    def out_err(q, s):
        return float((x @ dequantize(q, s, group).t() - ref).norm() / ref.norm())

    q_g, s_g = gptq_quantize(w, H, bits, group, percdamp=0.01, blocksize=16)
    e_rtn, e_gptq = out_err(*rtn_quantize(w, bits, group)), out_err(q_g, s_g)
    assert e_gptq < 0.97 * e_rtn, (e_gptq, e_rtn)
    assert torch.equal(q_g[w == 0], torch.zeros_like(q_g[w == 0]))  # pruned -> code 0
    assert int(((dequantize(q_g, s_g, group) != 0) & (w == 0)).sum()) == 0


def test_gptq_of_weights_on_the_grid_is_rtn():
    torch.manual_seed(1)
    q0 = torch.randint(-7, 8, (8, 32))
    q0[:, 0] = 7  # every row reaches qmax: the per-channel scale is recovered exactly
    w = q0.float() * torch.rand(8, 1)
    x = torch.randn(256, 32)
    q, s = gptq_quantize(w, 2 * x.double().t() @ x.double() / 256, 4)
    assert torch.equal(q, q0.to(torch.int8))
    assert torch.allclose(dequantize(q, s), w, atol=1e-6)


def _pruned_llama(llama_factory):
    model = llama_factory(vocab=64, hidden=32, layers=1, heads=2, inter=64)
    targets = find_targets(model, TARGETS, ["lm_head", "embed"], 4)
    hard_prune_(targets, 2, 4)
    return model, targets


@pytest.mark.parametrize("method,bits,group", [("rtn", 8, None), ("rtn", 4, 32), ("rtn", 4, None), ("gptq", 4, 32),
                                               ("gptq", 8, None), ("gptq", 4, 24), ("torchao", 8, None), ("torchao", 4, 32)])
def test_every_scheme_keeps_zeros_exactly(llama_factory, method, bits, group):
    model, targets = _pruned_llama(llama_factory)
    zeros = {n: weight_matrix(m) == 0 for n, m in targets.items()}
    H = _layer_hessians(model, targets, torch.randint(0, 64, (4, 16))) if method == "gptq" else None
    states = quantize_targets(targets, method, bits, group, H, blocksize=16)
    assert sum(check_model(model, targets, 2, 4).values()) == 0
    for n, mod in targets.items():
        w = weight_matrix(mod)
        assert not bool((w[zeros[n]] != 0).any())  # every pruned weight is exactly zero
        assert torch.equal(w, dequantize(states[n]["q"], states[n]["scales"], group))  # the model holds q * s
        assert 0 < states[n]["rel_err"] < (0.02 if bits == 8 else 0.25)


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32)])
def test_torchao_rtn_matches_ours_within_one_step(bits, group):
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    w = w * nm_mask(w, 2, 4)
    q, s = rtn_quantize(w, bits, group)
    q_ao, s_ao = torchao_codes(w, bits, group)
    ours, theirs = dequantize(q, s, group), dequantize(q_ao, s_ao, group)
    step = dequantize(torch.ones_like(q), s, group)
    # torchao: s = max / (qmax + 0.5), codes in [-qmax-1, qmax]; ours: s = max / qmax, codes in [-qmax, qmax]
    assert torch.allclose(s_ao * (2 ** (bits - 1) - 0.5), s * (2 ** (bits - 1) - 1))
    assert bool(((ours - theirs).abs() <= step + 1e-7).all())
    assert bool((theirs[w == 0] == 0).all())
    e_ours, e_ao = float((ours - w).norm()), float((theirs - w).norm())
    assert 0.8 < e_ours / e_ao < 1.25


# -- the stage -----------------------------------------------------------------------------------
@pytest.fixture
def sparse_model_dir(micro_data, micro_teacher, tmp_path):
    from cast.data import load_tokenizer
    from cast.models import load_model, save_model

    cfg, data = copy.deepcopy(micro_data[0]), micro_data[1]
    model = load_model(str(micro_teacher))
    hard_prune_(find_targets(model, cfg["sparsity"]["targets"], cfg["sparsity"]["exclude"], 4), 2, 4)
    return save_model(model, load_tokenizer(str(data / "tokenizer")), tmp_path / "sparse")


def test_stage_gptq_output_reloads_and_evaluates_in_lm_eval(micro_data, sparse_model_dir, tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from safetensors.torch import load_file

    from cast.models import load_model
    from cast.stages import quantize

    cfg, data = copy.deepcopy(micro_data[0]), micro_data[1]
    # pinned here (the micro config's own gptq4 uses group 16): 4-bit codes + one 16-bit scale per 32 inputs
    cfg["quantize"]["schemes"]["gptq4"] = {"method": "gptq", "bits": 4, "group_size": 32, "calib_samples": 8,
                                           "percdamp": 0.01, "blocksize": 128}
    res = quantize.run(cfg, sparse_model_dir, data, "gptq4", tmp_path / "q")
    assert res["nm_sparse"] and res["nm_violations"] == 0 and res["target_sparsity"] == pytest.approx(0.5)
    assert res["avg_bits"] == pytest.approx(4 + 16 / 32)  # every xs input size is a multiple of 32
    before, after = load_model(str(sparse_model_dir)), load_model(str(tmp_path / "q" / "model"))
    targets = find_targets(after, cfg["sparsity"]["targets"], cfg["sparsity"]["exclude"], 4)
    assert sum(check_model(after, targets, 2, 4).values()) == 0  # the reloaded model is still exact 2:4
    ref = dict(before.named_modules())
    qstate = load_file(str(tmp_path / "q" / "qstate.safetensors"))
    for name, mod in targets.items():
        w = weight_matrix(mod)
        pruned = weight_matrix(ref[name]) == 0
        assert not bool((w[pruned] != 0).any())  # every pruned weight is still exactly zero after the round trip
        assert float((w[~pruned] == 0).float().mean()) < 0.2  # (a few small kept weights round to code 0)
        assert torch.equal(w, dequantize(qstate[f"{name}.q"], qstate[f"{name}.scales"], 32))
    # lm-eval loads the directory by path (AutoModelForCausalLM) and scores a continuation
    lm = HFLM(pretrained=str(tmp_path / "q" / "model"), device="cpu", dtype="float32", batch_size=2)
    ctx, cont = "The city of the river", " was built in the north"
    (ll, _), = lm.loglikelihood([Instance("loglikelihood", {}, (ctx, cont), 0)], disable_tqdm=True)
    tok = lm.tokenizer
    whole, n_ctx = tok(ctx + cont)["input_ids"], len(tok(ctx)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(after(torch.tensor([whole])).logits[0].float(), -1)
    mine = sum(float(logp[i - 1, whole[i]]) for i in range(n_ctx, len(whole)))
    assert math.isfinite(ll) and ll == pytest.approx(mine, abs=1e-3)


def test_stage_fails_loudly_if_zeros_are_revived(micro_data, sparse_model_dir, tmp_path, monkeypatch):
    from cast.stages import quantize

    real = quantize.quantize_targets

    def leaky(targets, *a, **kw):
        out = real(targets, *a, **kw)
        w = next(iter(targets.values())).weight
        with torch.no_grad():
            w[w == 0] = 1e-3  # a buggy quantizer that fills the pruned slots
        return out

    monkeypatch.setattr(quantize, "quantize_targets", leaky)
    cfg, data = copy.deepcopy(micro_data[0]), micro_data[1]
    with pytest.raises(SparsityError, match="made pruned weights non-zero"):
        quantize.run(cfg, sparse_model_dir, data, "int8", tmp_path / "q")
    assert not (tmp_path / "q" / "model").exists()


def test_bad_scheme_names_the_config_key(micro_data, sparse_model_dir, tmp_path):
    from cast.config import ConfigError
    from cast.stages import quantize

    cfg, data = copy.deepcopy(micro_data[0]), micro_data[1]
    with pytest.raises(ConfigError, match="quantize.schemes"):
        quantize.run(cfg, sparse_model_dir, data, "int3", tmp_path / "q")
    cfg["quantize"]["schemes"]["ao"] = {"method": "torchao", "bits": 4, "group_size": 24, "calib_samples": 1,
                                        "percdamp": 0.01, "blocksize": 128}
    with pytest.raises(ConfigError, match=r"quantize.schemes.ao.*group_size 24"):
        quantize.run(cfg, sparse_model_dir, data, "ao", tmp_path / "q")


def test_cli_quantize_writes_result_with_run_id(micro_data, sparse_model_dir, tmp_path):
    import json

    import yaml

    from cast.cli import main

    cfg, data = copy.deepcopy(micro_data[0]), micro_data[1]
    cfg = {**cfg, "results_dir": str(tmp_path / "res")}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(["quantize", "--config", str(tmp_path / "cfg.yaml"), "--model", str(sparse_model_dir), "--data", str(data),
               "--scheme", "int8", "--out", str(tmp_path / "q"), "--size", "xs", "--method", "magnitude",
               "--budget", "0", "--result", str(tmp_path / "q" / "result.json")])
    assert rc == 0
    res = json.loads((tmp_path / "q" / "result.json").read_text())
    assert res["run_id"] and res["tags"] == {"size": "xs", "method": "magnitude", "budget": "0", "quant": "int8"}
    assert res["nm_violations"] == 0 and res["bits"] == 8 and res["group_size"] is None
