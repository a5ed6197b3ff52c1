"""Sparse fine-tuning: the frozen mask holds after every optimizer step, downstream data preparation,
the finetune stage (sparse with distillation, dense without a mask) and its CLI."""
import copy
import json

import numpy as np
import pytest
import torch

from cast.config import ConfigError
from cast.frozen_mask import freeze_zeros
from cast.sparsity import check_model, find_targets, hard_prune_, revived, weight_of

TARGETS = [r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"]


def _steps(model, opt, n=5, check=None):
    torch.manual_seed(0)
    for _ in range(n):
        ids = torch.randint(0, 64, (4, 16))
        logits = model(ids).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1)).backward()
        if check:
            check("grad")
        opt.step()
        opt.zero_grad()
        if check:
            check("step")


def test_frozen_mask_holds_after_every_step(llama_factory):
    model = llama_factory(vocab=64, hidden=32, inter=64)
    targets = find_targets(model, TARGETS, ["lm_head", "embed"], 4)
    hard_prune_(targets, 2, 4)
    before = {n: weight_of(m).detach().clone() for n, m in targets.items()}
    # weight decay and a large LR: anything that could move a pruned weight
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    masks, _ = freeze_zeros(targets, opt)
    seen = []

    def check(when):
        if when == "grad":  # gradients of pruned entries are zeroed before the optimizer sees them
            seen.append(sum(int((weight_of(m).grad[~masks[n]] != 0).sum()) for n, m in targets.items()))
        else:
            seen.append(revived(targets, masks) + sum(check_model(model, targets, 2, 4).values()))

    _steps(model, opt, check=check)
    assert len(seen) == 10 and seen == [0] * 10
    for n, m in targets.items():
        assert torch.equal(weight_of(m) == 0, before[n] == 0)  # same zeros
        assert not torch.equal(weight_of(m), before[n])  # and the kept weights did train


def test_without_the_frozen_mask_zeros_revive(llama_factory):
    """Control: the same steps without freeze_zeros do break 2:4 (the check above can fail)."""
    model = llama_factory(vocab=64, hidden=32, inter=64)
    targets = find_targets(model, TARGETS, ["lm_head", "embed"], 4)
    hard_prune_(targets, 2, 4)
    masks = {n: weight_of(m).detach() != 0 for n, m in targets.items()}
    _steps(model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1), n=1)
    assert revived(targets, masks) > 0 and sum(check_model(model, targets, 2, 4).values()) > 0


# -- downstream data -------------------------------------------------------------------------------
def test_news_split_is_deterministic_and_disjoint():
    from cast.downstream import load_texts, split_train_test

    d = {"source": "gensim_news", "min_chars": 1}
    texts = load_texts(d, "news")
    assert len(texts) == len(set(texts)) == 293  # 300 lines, 7 exact repeats dropped
    a, b = split_train_test(texts, 0.1, 0), split_train_test(texts, 0.1, 0)
    assert a == b and len(a["test"]) == 29 and len(a["train"]) == 264
    assert not set(a["test"]) & set(a["train"])
    assert split_train_test(texts, 0.1, 1)["test"] != a["test"]


def test_prompt_response_files_are_joined(tmp_path):
    from cast.downstream import load_texts

    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(json.dumps({"q": f"question {i}?", "a": f"answer {i}."}) for i in range(4)))
    d = {"source": "files", "files": [str(f)], "text_column": "text", "prompt_column": "q", "response_column": "a",
         "min_chars": 1}
    assert load_texts(d, "qa")[:2] == ["question 0?\nanswer 0.", "question 1?\nanswer 1."]
    with pytest.raises(Exception, match=r"finetune.datasets.qa.*no column 'answer'"):
        load_texts({**d, "response_column": "answer"}, "qa")


def test_finetune_config_errors_name_the_key(micro_raw):
    from cast.config import resolve_config  # the finetune rules run at config time now

    micro_raw["finetune"] = {"datasets": {"web": {"source": "hf"}}}
    with pytest.raises(ConfigError, match=r"finetune.datasets.web.path"):
        resolve_config(micro_raw)
    micro_raw["finetune"] = {"eta": 0.5, "teacher": None}
    with pytest.raises(ConfigError, match=r"'finetune.teacher'"):
        resolve_config(micro_raw)


# -- the stage -----------------------------------------------------------------------------------
@pytest.fixture
def ft_setup(micro_data, micro_teacher, tmp_path):
    """Micro config with a small fine-tuning budget, the news tokens, and a 2:4 copy of the teacher."""
    from cast.data import load_tokenizer
    from cast.models import load_model, save_model
    from cast.stages import finetune

    cfg, data = copy.deepcopy(micro_data[0]), micro_data[1]
    cfg["finetune"].update(tokens=1920, seqlen=32, batch_size=4, lr=3e-3, warmup_steps=2)
    cfg["train"]["log_every"] = 1  # stats (the revived count) after every step
    cfg["evaluate"]["ppl_seqlens"] = [32]
    ddir = tmp_path / "downstream" / "news"
    prep = finetune.prepare(cfg, "news", data, ddir)
    model = load_model(str(micro_teacher))
    hard_prune_(find_targets(model, cfg["sparsity"]["targets"], cfg["sparsity"]["exclude"], 4), 2, 4)
    sparse = save_model(model, load_tokenizer(str(data / "tokenizer")), tmp_path / "sparse")
    return cfg, data, ddir, prep, sparse


def test_prepare_writes_token_streams(ft_setup):
    cfg, data, ddir, prep, _ = ft_setup
    assert prep["documents"] == {"train": 264, "test": 29}
    for split in ("train", "test"):
        arr = np.load(ddir / f"tokens_{split}.npy")
        assert len(arr) == prep["tokens"][split] > 1000 and int(arr.max()) < 512


def test_sparse_finetune_keeps_mask_at_every_step_and_distills(ft_setup, micro_teacher, tmp_path):
    from cast.models import load_model
    from cast.stages import finetune

    cfg, data, ddir, _, sparse = ft_setup
    cfg["finetune"].update(eta=0.5, teacher="original")
    res = finetune.run(cfg, sparse, data, "news", tmp_path / "ft", teacher_dir=micro_teacher, ddir=ddir)
    assert res["sparse"] and res["distilled"] and res["steps"] == 15
    assert [h["step"] for h in res["history"]] == list(range(1, 16))
    assert all(h["finetune/revived"] == 0 for h in res["history"])
    key = "ppl/news_test/s32"
    assert res["ppl_after"][key] < 0.9 * res["ppl_before"][key]  # it learned the downstream text
    before, after = load_model(str(sparse)), load_model(str(tmp_path / "ft" / "model"))
    tb = find_targets(before, cfg["sparsity"]["targets"], cfg["sparsity"]["exclude"], 4)
    ta = find_targets(after, cfg["sparsity"]["targets"], cfg["sparsity"]["exclude"], 4)
    assert sum(check_model(after, ta, 2, 4).values()) == 0
    for n in tb:
        assert torch.equal(weight_of(ta[n]) == 0, weight_of(tb[n]) == 0)
    assert finetune.downstream_ppl(cfg, tmp_path / "ft" / "model", "news", ddir)[key] == pytest.approx(res["ppl_after"][key])


def test_dense_finetune_uses_no_mask(ft_setup, micro_teacher, tmp_path):
    from cast.stages import finetune

    cfg, data, ddir, _, _ = ft_setup
    cfg["finetune"]["tokens"] = 384  # 3 steps
    res = finetune.run(cfg, micro_teacher, data, "news", tmp_path / "ft", ddir=ddir)
    assert not res["sparse"] and not res["distilled"] and res["steps"] == 3
    assert res["ppl_after"]["ppl/news_test/s32"] < res["ppl_before"]["ppl/news_test/s32"]


def test_cli_downstream_and_finetune(ft_setup, tmp_path):
    import yaml

    from cast.cli import main

    cfg, data, _, _, sparse = ft_setup
    cfg = {**cfg, "results_dir": str(tmp_path / "res"), "finetune": {**cfg["finetune"], "tokens": 256}}
    if "zeroshot" in cfg:  # perplexity only: zero-shot has its own tests
        cfg["zeroshot"] = {**cfg["zeroshot"], "enabled": False}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    ddir = tmp_path / "res" / "downstream" / "news" / data.name  # cast.layout: one folder per tokenizer
    common = ["--config", str(tmp_path / "cfg.yaml")]
    assert main(["downstream", *common, "--dataset", "news", "--data", str(data), "--out", str(ddir),
                 "--result", str(ddir / "result.json")]) == 0
    out = tmp_path / "res" / "xs" / "magnitude" / "0" / "finetune" / "news"
    assert main(["finetune", *common, "--model", str(sparse), "--data", str(data), "--dataset", "news",
                 "--out", str(out), "--size", "xs", "--method", "magnitude", "--budget", "0",
                 "--result", str(out / "result.json")]) == 0  # --downstream defaults to results_dir/downstream/news/<tokenizer>
    res = json.loads((out / "result.json").read_text())
    assert res["run_id"] and res["tags"] == {"size": "xs", "method": "magnitude", "budget": "0", "finetune": "news"}
    assert res["sparse"] and res["nm_violations"] == 0 and (out / "model" / "config.json").exists()
    # evaluate --finetune adds the downstream perplexity next to the corpus perplexity
    assert main(["evaluate", *common, "--model", str(out / "model"), "--data", str(data), "--size", "xs",
                 "--finetune", "news", "--result", str(out / "eval.json")]) == 0
    metrics = json.loads((out / "eval.json").read_text())["metrics"]
    assert metrics["ppl/news_test/s32"] == pytest.approx(res["ppl_after"]["ppl/news_test/s32"])
    assert "ppl/wiki_test/s32" in metrics
