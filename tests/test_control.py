"""What separates the sparsity cost from extra training: the dense control (dense_kd), teachers
trained to a plateau, seeds, held-out domains, the zero-shot selection and the scaling law's checks."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml

from cast.config import resolve_config


def _train(method: str, cfg: dict, mcfg: dict, model, tokens):
    from accelerate import Accelerator

    from cast import methods
    from cast.sparsity import find_targets

    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    targets = find_targets(model, cfg["sparsity"]["targets"], cfg["sparsity"]["exclude"], 4)
    methods.get(mcfg["algorithm"]).load()(model, targets, cfg, mcfg, teacher=teacher, tokens=tokens, budget=8 * 32 * 6,
                                          method=method, accelerator=Accelerator(cpu=True))
    return model


def test_dense_kd_is_cast_without_its_sparsity(micro_cfg, llama_factory):
    """Same trainer, data order, teacher, distillation and schedule: CAST with no decay and no scales
    keeps exactly the weights dense_kd learns, in the entries it keeps."""
    cfg = copy.deepcopy(micro_cfg)
    cfg["train"].update(seqlen=32, warmup_steps=1, checkpoint_every=0, log_every=2)
    cfg["methods"]["cast"].update({"lambda": 0.0, "scaling": False})
    cfg["methods"]["dense_kd"] = {"algorithm": "dense_kd", "eta": cfg["methods"]["cast"]["eta"], "temperature": 1.0}
    tokens = np.random.default_rng(0).integers(0, 64, 5000).astype(np.uint16)
    sparse = _train("cast", cfg, cfg["methods"]["cast"], llama_factory(), tokens)
    dense = _train("dense_kd", cfg, cfg["methods"]["dense_kd"], llama_factory(), tokens)
    start = llama_factory()
    for (name, w_s), (_, w_d), (_, w_0) in zip(sparse.named_parameters(), dense.named_parameters(), start.named_parameters()):
        if "proj" in name:
            kept = w_s != 0
            assert 0.45 < kept.float().mean() < 0.55 and torch.equal(w_s[kept], w_d[kept]), name
            assert bool((w_d != 0).all()), name  # the control stays dense
        else:
            assert torch.equal(w_s, w_d), name
        assert not torch.equal(w_d, w_0), name  # and it did train


def test_plateau_schedule():
    from cast.plateau import PlateauSchedule

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = PlateauSchedule(opt, warmup=4, max_steps=1000, min_steps=40, patience=2, min_delta=0.01, cooldown=0.25,
                        min_lr_ratio=0.1)
    lrs = []
    for step in range(1, 200):
        opt.step()
        s.step()
        lrs.append(opt.param_groups[0]["lr"])
        if step % 10 == 0:  # improves by 0.1 until step 30, then flat
            s.observe(step, max(3.0, 6.0 - 0.1 * step))
        if s.finished(step):
            break
    assert lrs[:4] == [0.5, 0.75, 1.0, 1.0] and lrs[20] == 1.0
    assert s.stop_step == 50 and s.plateaued  # flat at 40 and 50 (patience 2): the cooldown starts at 50 >= min_steps
    assert s.cooldown_steps == 12 and step == 62 and abs(lrs[-1] - 0.1) < 1e-9
    state = s.state_dict()
    s2 = PlateauSchedule(torch.optim.SGD([p], lr=1.0), warmup=4, max_steps=1000, min_steps=40, patience=2,
                         min_delta=0.01, cooldown=0.25, min_lr_ratio=0.1)
    s2.load_state_dict(state)
    assert (s2.stop_step, s2.curve, s2.finished(62)) == (50, s.curve, True)
    capped = PlateauSchedule(torch.optim.SGD([p], lr=1.0), warmup=0, max_steps=100, min_steps=0, patience=5,
                             min_delta=0.0, cooldown=0.25, min_lr_ratio=0.1)
    for step in range(10, 100, 10):  # always improving: the cooldown starts in time to end at the cap
        capped.observe(step, 10.0 - step / 10)
    assert capped.stop_step == 80 and capped.stop_step + capped.cooldown_steps == 100 and not capped.plateaued


@pytest.mark.slow
def test_teacher_trains_to_a_plateau_and_records_its_curve(micro_data, tmp_path):
    from cast.stages import teacher

    cfg, data = copy.deepcopy(micro_data[0]), micro_data[1]
    cfg["teacher"].update(tokens="200k", lr_schedule="plateau", lr=5e-3, warmup_steps=5,
                          plateau={"eval_every": 10, "eval_windows": 8, "patience": 2, "min_delta": 0.05,
                                   "min_tokens": "20k", "cooldown": 0.2})
    res = teacher.run(cfg, "xs", data, tmp_path / "model")
    curve = [c["val_loss"] for c in res["val_curve"]]
    assert res["tokens"] == res["steps"] * 8 * 64 and res["tokens"] < 200_000  # stopped before the cap
    assert res["plateaued"] and curve[0] > curve[-1] and len(curve) >= 4
    assert res["steps"] == res["cooldown_from_step"] + round(0.2 * res["cooldown_from_step"])


def test_replicates_and_zero_shot_selection_in_the_grid(micro_raw, tmp_path):
    import subprocess
    import sys

    from conftest import REPO, user_env

    micro_raw["run"].update(methods=["cast", "magnitude", "srste"], budgets=["8k", "16k"],
                            replicates={"count": 3, "methods": ["cast", "magnitude"], "sizes": ["s"]})
    micro_raw["zeroshot"]["models"] = "comparison"
    cfg = resolve_config(micro_raw)
    from cast.jobs import zeroshot_wanted

    assert [zeroshot_wanted(cfg, p) for p in ("s/teacher", "s/cast/16k", "s/cast/8k", "s/cast/16k_r2", "s/magnitude/0",
                                               "s/cast/16k/quant/int8")] == [True, True, False, False, True, False]
    micro_raw["zeroshot"]["sizes"] = ["xs"]
    assert not zeroshot_wanted(resolve_config(micro_raw), "s/teacher")
    del micro_raw["zeroshot"]["sizes"]
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(micro_raw))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--configfile",
                           str(tmp_path / "cfg.yaml"), "--directory", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=user_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    import re

    planned = set(re.findall(r"output: \S*?/((?:xs|s)/\w+/[\w.]+)/model,", proc.stdout))
    assert {p for p in planned if "_r" in p} == {"s/cast/16k_r1", "s/cast/16k_r2", "s/magnitude/0_r1", "s/magnitude/0_r2"}


def test_a_replicate_trains_on_another_data_order(micro_data, micro_teacher, tmp_path):
    from safetensors.torch import load_file

    from cast.stages import sparsify

    cfg, data = micro_data
    base = sparsify.run(cfg, "xs", "cast", "1k", micro_teacher, data, tmp_path / "r0")
    rep = sparsify.run(cfg, "xs", "cast", "1k", micro_teacher, data, tmp_path / "r1", replicate=1)
    assert (base["seed"], rep["seed"]) == (cfg["seed"], cfg["seed"] + 1)
    w0, w1 = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in ("r0", "r1"))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_held_out_domains_are_scored_with_bits_per_byte(micro_data, micro_teacher, tmp_path):
    from cast.stages import evaluate, finetune

    cfg, data = copy.deepcopy(micro_data[0]), micro_data[1]
    cfg["zeroshot"]["enabled"] = False
    cfg["evaluate"]["domains"] = {"bible": {**cfg["finetune"]["datasets"]["news"], "source": "bible_kjv",
                                            "max_documents": 30}}
    cfg["results_dir"] = str(tmp_path)
    from cast.io import write_json

    ddir = finetune.downstream_dir(cfg, "bible", data)
    res = finetune.prepare(cfg, "bible", data, ddir)
    write_json(ddir / "result.json", res)  # what `cast downstream --result` writes
    m = evaluate.evaluate_model(cfg, micro_teacher, data)["metrics"]
    assert m["ppl/bible_test/s64"] > 1 and 0 < m["bpb/bible_test/s64"] < 16 and "ppl/wiki_test/s64" in m
    assert res["documents"] == {"train": 27, "test": 3} and res["bytes"]["test"] > 1000
    assert m["speed/forward_ms"] > 0  # evaluate.timing_runs: 5 by default ...
    cfg["evaluate"].update(timing_runs=0, domains={})
    off = evaluate.evaluate_model(cfg, micro_teacher, data)["metrics"]
    assert "speed/forward_ms" not in off and off["ppl/wiki_test/s64"] == m["ppl/wiki_test/s64"]  # ... 0 skips only it


GROUPED = {
    "method": {"sparsify_xs_cast": ("xs", "cast/8k cast/16k"), "sparsify_s_cast": ("s", "cast/8k cast/16k cast/16k_r1"),
               "sparsify_xs_magnitude": ("xs", "magnitude/0"), "sparsify_s_magnitude": ("s", "magnitude/0"),
               "sparsify_xs_srste": ("xs", "srste/16k"), "sparsify_s_srste": ("s", "srste/16k")},
    "size": {"sparsify_xs": ("xs", "cast/8k cast/16k magnitude/0 srste/16k"),
             "sparsify_s": ("s", "cast/8k cast/16k cast/16k_r1 magnitude/0 srste/16k")},
    "per size": {"sparsify_xs": ("xs", "cast/8k cast/16k magnitude/0 srste/16k"),  # {xs: size}; s unlisted: method
                 "sparsify_s_cast": ("s", "cast/8k cast/16k cast/16k_r1"), "sparsify_s_magnitude": ("s", "magnitude/0"),
                 "sparsify_s_srste": ("s", "srste/16k")},
}
# (run.group, evaluate.shards) of each case: the same four evaluation jobs, given once or per size
SETTINGS = {"method": ("method", 2), "size": ("size", 2), "per size": ({"xs": "size"}, {"s": 3})}


@pytest.mark.parametrize("group", sorted(GROUPED))
def test_grouped_jobs_name_their_own_size_and_runs(micro_raw, tmp_path, group):
    """run.group: method or size and evaluate.group: size make rules in a loop: each job's command
    carries its own size and method/run labels, and every folder is evaluated exactly once. (A dry run
    prints the shell string as made; a loop value read when the job runs shows only in a real run:
    tests/test_pipeline.py.)"""
    import re
    import subprocess
    import sys

    from conftest import REPO, user_env

    run_group, shards = SETTINGS[group]
    micro_raw["run"].update(methods=["cast", "magnitude", "srste"], budgets=["8k", "16k"], group=run_group,
                            replicates={"count": 2, "methods": ["cast"], "sizes": ["s"]})
    micro_raw["evaluate"].update(group="size", shards=shards)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(micro_raw))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", str(REPO / "Snakefile"),
                           "--configfile", str(tmp_path / "cfg.yaml"), "--directory", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=user_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    cmds = {name: re.search(r"sparsify-group .*--size (\S+) --teacher \S+ --data \S+ (.*?) >", c).groups() for name, c in
            re.findall(r"rule (sparsify_\w+):.*?\nShell command: ([^\n]*)", proc.stdout, re.S)}
    assert cmds == GROUPED[group]
    evaluated = re.findall(r"evaluate-group .*?--data \S+ (?:--tasks-dir \S+ )?(.*?) >", proc.stdout)
    folders = [f for line in evaluated for f in line.split()]
    assert len(evaluated) == 4 and sorted(folders) == sorted(set(folders))
    assert {"xs/teacher", "s/cast/16k_r1", "s/srste/16k"} <= set(folders)
