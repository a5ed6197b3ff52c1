"""The related methods through the real sparsify stage: MaskLLM exports an exact 2:4 model of the same
architecture; structured pruning (ddp_struct) a smaller dense one that transformers loads."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("method", ["maskllm", "ddp_struct"])
def test_related_methods_through_the_stage(micro_data, micro_teacher, tmp_path, method):
    from transformers import AutoModelForCausalLM

    from cast.sparsity import check_model, find_targets
    from cast.stages import sparsify

    cfg, data = micro_data
    cfg = {**cfg, "methods": {**cfg["methods"], method: {"algorithm": method}}}
    res = sparsify.run(cfg, "xs", method, "2k", micro_teacher, data, tmp_path / method)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / method / "model")
    dense = AutoModelForCausalLM.from_pretrained(micro_teacher)
    targets = find_targets(model, cfg["sparsity"]["targets"], cfg["sparsity"]["exclude"])
    n_dense = sum(p.numel() for p in dense.parameters())
    if method == "maskllm":
        assert res["export"] == "nm" and sum(check_model(model, targets, 2, 4).values()) == 0
        assert 0.5 <= res["target_sparsity"] < 0.51 and res["params"] == n_dense
    else:
        assert res["export"] == "smaller" and res["nm_violations"] is None
        assert res["params"] == sum(p.numel() for p in model.parameters()) == res["params_kept"] < n_dense
        assert model.config.intermediate_size == res["intermediate_kept"] < dense.config.intermediate_size
        assert res["forward_time_ratio"] > 0 and abs(res["target_sparsity"] - 0.5) < 0.1
    assert res["tokens"] == res["steps"] * 8 * 64
