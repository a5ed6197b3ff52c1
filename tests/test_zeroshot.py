"""Zero-shot evaluation through lm-eval: generated offline tasks, chance levels, perplexity agreement
with cast.evaluate.perplexity, task-name errors, and the evaluate stage's merged result."""
from __future__ import annotations

import json
import math
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cast.config import ConfigError
from cast.zeroshot import (
    LOCAL_TASKS,
    TASK_SETS,
    build_tasks,
    mc_items,
    metric_key,
    ppl_items,
    resolve_task_names,
    run_zeroshot,
    set_averages,
    write_task,
)

MLFLOW_NAME = re.compile(r"^[A-Za-z0-9_\-. :/]+$")


def _docs(data: Path, splits=("test",)) -> list[str]:
    import datasets

    dd = datasets.load_from_disk(str(data / "corpus"))
    return [t for s in splits for t in dd[s]["text"]]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def models(micro_data, tmp_path_factory):
    """The micro xs preset trained briefly on the train split (teacher stage, 200k tokens) and a
    random init of the same shape, both saved with the micro tokenizer."""
    from cast.data import load_tokenizer
    from cast.models import build_llama, save_model
    from cast.stages import teacher

    cfg, data = micro_data
    root = tmp_path_factory.mktemp("zs_models")
    cfg = {**cfg, "teacher": {**cfg["teacher"], "tokens": "200k"}}
    teacher.run(cfg, "xs", data, root / "trained")
    tok = load_tokenizer(str(data / "tokenizer"))
    save_model(build_llama(cfg["models"]["xs"], len(tok), tok, seed=1), tok, root / "random")
    return root / "trained", root / "random"


def test_tasks_stage_writes_offline_tasks_that_load(micro_data, tmp_path):
    from lm_eval.tasks import TaskManager

    from cast.stages import tasks

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    cfg, data = micro_data
    # the schema defaults (the micro config trims item counts for the end-to-end run)
    cfg = {**cfg, "zeroshot": {**cfg["zeroshot"], "mc_items": 200, "lastword_items": 200, "ppl_docs": None}}
    out = tmp_path / "tasks"
    res = tasks.run(cfg, data, out)
    docs = _docs(data)
    assert res["test_documents"] == len(docs) == 4
    # absolute data paths of the final folder (not the temporary one atomic_dir renamed)
    assert f'test: "{out.resolve()}/cast_mc.jsonl"' in (out / "cast_mc.yaml").read_text()
    loaded = TaskManager(include_path=str(out), include_defaults=False).load(["cast_zs"])
    assert set(loaded["tasks"]) == set(LOCAL_TASKS)
    for name, task in loaded["tasks"].items():
        assert len(list(task.test_docs())) == res["items"][name] == len(_jsonl(out / f"{name}.jsonl"))
    assert res["items"]["cast_ppl"] == 4 and res["items"]["cast_mc"] % 4 == 0
    # every item is real held-out text: the true ending continues its sentence in its own article
    for it in _jsonl(out / "cast_mc.jsonl"):  # (the cut leaves >= 2 words of the sentence in the context)
        head = " ".join(it["context"].split(" ")[-2:])
        assert f"{head} {it['choices'][it['label']]}" in docs[it["doc"]]
    for it in _jsonl(out / "cast_lastword.jsonl"):
        head = " ".join(it["context"].split(" ")[-3:])
        assert f"{head} {it['target']}." in docs[it["doc"]]
        assert re.fullmatch(r"[A-Za-z][A-Za-z-]{2,}", it["target"])
    # the same seed gives the same files (the evaluate stage rebuilds them when no --tasks-dir is given)
    again = tasks.run(cfg, data, tmp_path / "again")
    assert again["items"] == res["items"]
    for name in LOCAL_TASKS:
        assert (out / f"{name}.jsonl").read_bytes() == (tmp_path / "again" / f"{name}.jsonl").read_bytes()


def test_mc_groups_share_choices_so_context_blind_scorers_get_exactly_chance(micro_data):
    _, data = micro_data
    items = mc_items(_docs(data, ("test", "validation")), 400, n_choices=4, seed=3)
    assert len(items) == 400
    for g in range(0, len(items), 4):
        group = items[g:g + 4]
        assert len({it["doc"] for it in group}) == 4  # distractors come from other articles
        assert all(sorted(it["choices"]) == sorted(group[0]["choices"]) for it in group)
        assert sorted(it["choices"][it["label"]] for it in group) == sorted(group[0]["choices"])
        assert all(2 <= len(c.split(" ")) <= 6 for c in group[0]["choices"]), group[0]["choices"]
    # any score that ignores the context (length, a hash of the text, ...) is right once per group
    for score in (len, lambda c: zlib.crc32(c.encode()), lambda c: -c.count("e")):
        right = sum(max(range(4), key=lambda j: (score(it["choices"][j]), it["choices"][j])) == it["label"] for it in items)
        assert right == len(items) // 4


def test_trained_teacher_beats_chance_random_init_does_not(models, micro_data, tmp_path):
    _, data = micro_data
    trained, random_init = models
    # 4 test articles give 68 items; validation articles are held out too and give 400 in all
    build_tasks(_docs(data, ("test", "validation")), tmp_path / "t", seed=0, n_mc=400, n_lastword=20)
    res = {name: run_zeroshot(m, ["cast_mc"], tmp_path / "t", batch_size=32, device="cpu")["metrics"]
           for name, m in (("trained", trained), ("random", random_init))}
    for m in res.values():
        assert {"zs/cast_mc/acc", "zs/cast_mc/acc_norm", "zs/cast_mc/acc_mutual_info"} <= set(m)
        p = m["zs/cast_mc/acc"]  # its standard error from the logged samples: sqrt(p (1 - p) / (n - 1)), n = 400
        assert m["zs/cast_mc/acc_stderr"] == pytest.approx((p * (1 - p) / 399) ** 0.5, rel=1e-6)
    # chance is 0.25 (sd 0.022 at 400 items). Plain acc of models this small stays near chance (a
    # choice's own likelihood dominates); acc_mutual_info, log p(ending | context) - log p(ending),
    # isolates what the context adds: ~0.35 for the trained model (z ~ 4.6), 0.25 for the random one
    assert res["trained"]["zs/cast_mc/acc_mutual_info"] >= 0.31
    assert abs(res["random"]["zs/cast_mc/acc_mutual_info"] - 0.25) <= 0.05
    assert abs(res["random"]["zs/cast_mc/acc"] - 0.25) <= 0.05


def test_rolling_perplexity_agrees_with_cast_perplexity(models, micro_data, tmp_path):
    """Definitions. lm-eval's loglikelihood_rolling scores each document on its own: every token is
    predicted, the first one after the BOS/EOS prefix token, in windows of max_length tokens that
    overlap by one; its word_perplexity/byte_perplexity normalise by words/bytes. cast.evaluate.
    perplexity joins the split with blank lines, cuts non-overlapping windows of seqlen tokens and
    predicts tokens 2..seqlen of each (exp of the mean token NLL). Like with like: a passage shorter
    than max_length is one lm-eval window, i.e. exactly cast's single window [EOS] + passage."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cast.data import encode_joined
    from cast.perplexity import perplexity

    _, data = micro_data
    trained, _ = models
    tok = AutoTokenizer.from_pretrained(str(trained))
    model = AutoModelForCausalLM.from_pretrained(str(trained), dtype=torch.float32).eval()
    max_len = model.config.max_position_embeddings
    docs = _docs(data)
    paras = [p for d in docs for p in d.split("\n") if 20 <= len(tok.encode(p)) < max_len][:24]
    write_task("cast_ppl", ppl_items(paras), tmp_path / "p")
    out = run_zeroshot(trained, ["cast_ppl"], tmp_path / "p", batch_size=8, device="cpu")
    lls, n_total, nll_total = out["ppl_docs"]["per_doc"], 0, 0.0
    assert len(lls) == len(paras)
    for p, ll in zip(paras, lls):
        ids = np.asarray([tok.eos_token_id] + tok.encode(p, add_special_tokens=False))
        r = perplexity(model, ids, len(ids), batch_size=1, desc="")
        assert r["tokens"] == len(ids) - 1
        assert -r["nll"] * r["tokens"] == pytest.approx(ll, rel=1e-4, abs=1e-3)
        n_total += r["tokens"]
        nll_total += r["nll"] * r["tokens"]
    assert out["metrics"]["zs/cast_ppl/token_perplexity"] == pytest.approx(math.exp(nll_total / n_total), rel=1e-5)
    # whole articles: same model, different windowing (see the docstring) -> agree within 2 %
    build_tasks(docs, tmp_path / "a", seed=0, n_mc=4, n_lastword=1)
    full = run_zeroshot(trained, ["cast_ppl"], tmp_path / "a", batch_size=8, device="cpu")["metrics"]
    ours = perplexity(model, encode_joined(tok, docs), max_len, batch_size=8, desc="")["ppl"]
    assert full["zs/cast_ppl/token_perplexity"] == pytest.approx(ours, rel=0.02)  # measured: 61.11 vs 61.05
    assert full["zs/cast_ppl/word_perplexity"] > full["zs/cast_ppl/token_perplexity"]  # fewer words than tokens


def test_unknown_task_names_fail_before_any_model_loads(micro_data, tmp_path):
    cfg, data = micro_data
    from cast.stages import tasks

    tasks.run(cfg, data, tmp_path / "t")
    ghost = tmp_path / "no_model"  # loading it would fail differently
    with pytest.raises(ConfigError, match=r"unknown task\(s\) 'cast_foo'; looked in include path .*/t \(holds: "
                                          r"cast_lastword, cast_mc, cast_ppl, cast_zs\); not lm-eval's built-in registry"):
        run_zeroshot(ghost, ["cast_zs", "cast_foo"], tmp_path / "t")
    with pytest.raises(ConfigError, match="the local tasks are built by the `tasks` stage"):
        run_zeroshot(ghost, ["cast_zs"], None)
    # hub names are looked up in lm-eval's registry: the CAST-7 / AST-7 names all exist there
    names = resolve_task_names(["cast7", "ast7", "hellaswag_xx"])
    assert len(names) == 10
    with pytest.raises(ConfigError, match=r"unknown task\(s\) 'hellaswag_xx'; looked in include path .*; "
                                          r"lm-eval 0\.4\.\d+ built-in registry \(\d+ names\).*did you mean hellaswag"):
        run_zeroshot(ghost, names, tmp_path / "t")


def test_evaluate_stage_checks_names_first_and_merges_metrics(models, micro_data, monkeypatch):
    from cast.stages import evaluate

    cfg, data = micro_data
    trained, _ = models
    bad = {**cfg, "zeroshot": {**cfg["zeroshot"], "tasks": ["cast_foo"]}}

    def boom(*a, **k):
        raise AssertionError("model loaded before the task names were checked")

    with monkeypatch.context() as mp:
        mp.setattr(evaluate, "load_model", boom)
        with pytest.raises(ConfigError, match="cast_foo"):
            evaluate.run(bad, trained, data)
    cfg = {**cfg, "zeroshot": {**cfg["zeroshot"], "tasks": "local", "limit": 8}}
    res = evaluate.run(cfg, trained, data)  # no tasks_dir: built on the fly from the test split
    m = res["metrics"]
    assert evaluate.ppl_key(cfg, cfg["evaluate"]["ppl_seqlens"][0]) in m
    for key in ("zs/cast_mc/acc", "zs/cast_mc/acc_norm", "zs/cast_lastword/acc", "zs/cast_ppl/word_perplexity",
                "zs/cast_ppl/bits_per_byte", "zs/cast_ppl/token_perplexity", "zs/cast_zs/acc"):
        assert key in m and math.isfinite(m[key])
    assert all(MLFLOW_NAME.match(k) and "," not in k for k in m)
    # group = unweighted mean of the two accuracy tasks
    assert m["zs/cast_zs/acc"] == pytest.approx((m["zs/cast_mc/acc"] + m["zs/cast_lastword/acc"]) / 2)
    z = res["zeroshot"]
    assert z["versions"]["cast_mc"] == 1.0 and z["lm_eval_version"].startswith("0.4")
    assert z["config"]["cast_mc"]["output_type"] == "multiple_choice" and z["n_samples"]["cast_mc"]["effective"] == 8
    assert z["tasks"] == ["cast_zs"] and z["tasks_dir"].startswith("built on the fly")
    json.dumps(res)  # the result JSON must serialise


def test_metric_names_and_task_sets():
    assert metric_key("cast_mc", "acc,none") == "zs/cast_mc/acc"
    assert metric_key("cast_mc", "acc_stderr,none") == "zs/cast_mc/acc_stderr"  # kept: tables print acc ± stderr
    assert metric_key("gsm8k", "exact_match,strict-match") == "zs/gsm8k/exact_match_strict-match"
    assert metric_key("cast_mc", "alias") is None
    assert resolve_task_names("local") == ["cast_zs"]
    assert resolve_task_names(["cast7", "boolq", "hellaswag"]) == TASK_SETS["cast7"] + ["boolq"]
    assert resolve_task_names("ast7")[:2] == ["boolq", "rte"]
    assert len(resolve_task_names(["cast7", "ast7"])) == 9  # the union, as the LLaMA paper configs ask


def test_accuracy_stderr_is_lm_evals_closed_form_over_the_logged_samples():
    from cast.zeroshot import mean_stderrs

    hits = [1, 0, 0, 1, 1, 0, 1, 1]
    res = {"configs": {"cast_mc": {"metric_list": [{"metric": "acc", "aggregation": "mean"},
                                                   {"metric": "perplexity", "aggregation": "perplexity"}]}},
           "samples": {"cast_mc": [{"filter": "none", "acc": float(h), "perplexity": 3.0} for h in hits]}}
    p = sum(hits) / len(hits)
    sd = (sum((h - p) ** 2 for h in hits) / (len(hits) - 1)) ** 0.5
    assert mean_stderrs(res) == {"zs/cast_mc/acc_stderr": pytest.approx(sd / len(hits) ** 0.5)}


def test_task_set_averages_need_every_member():
    accs = dict(zip(TASK_SETS["cast7"], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]))
    metrics = {f"zs/{t}/acc": a for t, a in accs.items()} | {"zs/hellaswag/acc_norm": 9.0, "zs/boolq/acc": 0.9}
    avg = set_averages(metrics)
    assert avg.keys() == {"zs/cast7_avg/acc"}  # AST-7 lacks rte
    assert avg["zs/cast7_avg/acc"] == pytest.approx(0.4)
    metrics["zs/rte/acc"] = 0.5  # now every AST-7 task: boolq .9, rte .5, hellaswag .1, wino .4, arc .5 .6, obqa .7
    assert set_averages(metrics)["zs/ast7_avg/acc"] == pytest.approx((0.9 + 0.5 + 0.1 + 0.4 + 0.5 + 0.6 + 0.7) / 7)


def test_zeroshot_config_defaults_and_errors(micro_raw):
    from cast.config import resolve_config

    micro_raw.pop("zeroshot", None)  # the schema's defaults, not the micro config's trimmed counts
    z = resolve_config(micro_raw)["zeroshot"]
    assert z == {"enabled": True, "on_variants": False, "tasks": ["local"], "batch_size": 16, "limit": None,
                 "mc_items": 200, "lastword_items": 200, "ppl_docs": None, "models": "all", "sizes": None}
    micro_raw["zeroshot"] = {"tasks": "cast9"}
    with pytest.raises(ConfigError, match="zeroshot.tasks"):
        resolve_config(micro_raw)
    micro_raw["zeroshot"] = {"mc_items": 2}
    with pytest.raises(ConfigError, match="zeroshot.mc_items"):
        resolve_config(micro_raw)
