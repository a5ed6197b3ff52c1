"""FSDP2 (train.strategy: fsdp2) on CPU with gloo: two sharded processes give the one-process
result, a killed sharded run resumes from its DCP checkpoint to the uninterrupted result, and the
strategy keys never change what a job computes (fingerprints) nor the single-process path."""
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CASES = ["llama-cast-foreach", "gpt2-cast-foreach", "llama-srste-foreach", "gpt2-srste-foreach", "llama-cast-compiled"]


def _env():
    # the checkout's cast also in subprocesses started elsewhere (an installed copy may be another one)
    return {**os.environ, "CAST_NO_TQDM": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _torchrun(procs=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]


@pytest.mark.slow
def test_two_sharded_processes_match_one(tmp_path):
    """LLaMA (nn.Linear, Shard(0)) and GPT-2 (Conv1D, Shard(1)); CAST with the foreach and the compiled
    AdamS (C mask kernel), SR-STE's masked forward; with activation checkpointing (against the
    one-process run without): final weights within 1e-5, identical masks."""
    script = str(REPO / "tests" / "fsdp_cases.py")
    ref = subprocess.Popen([sys.executable, script, str(tmp_path / "one"), *CASES], env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    two = subprocess.run([*_torchrun(), script, str(tmp_path / "two"), *CASES, "llama-cast-foreach-ckpt"], env=_env(),
                         capture_output=True, text=True, timeout=600)
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    for case, sharded in [(c, c) for c in CASES] + [("llama-cast-foreach", "llama-cast-foreach-ckpt")]:
        a, b = load_file(str(tmp_path / "one" / f"{case}.safetensors")), load_file(str(tmp_path / "two" / f"{sharded}.safetensors"))
        assert a.keys() == b.keys(), case  # the export: the same tensors as a one-process run
        sparse = [k for k in a if k.endswith("weight") and any(t in k for t in ("proj", "c_attn", "c_fc"))]
        assert len(sparse) >= 8, case
        for k in a:
            assert a[k].dtype == b[k].dtype, (case, k)
            assert torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=1e-5), (case, k, (a[k] - b[k]).abs().max())
        for k in sparse:
            assert torch.equal(a[k] == 0, b[k] == 0), (case, k)  # identical final masks
            groups = (a[k].t() if k.startswith("transformer.") else a[k]).reshape(-1, 4)  # GPT-2: [in, out]
            assert int((groups != 0).sum(1).max()) <= 2, (case, k)  # exact 2:4
        # mask statistics and the scales' mean are reduced over both processes
        assert torch.allclose(a["stats"], b["stats"], rtol=1e-5), (case, a["stats"], b["stats"])


def _sparsify(cfgfile, teacher, data, out):
    return [*_torchrun(), "-m", "cast.cli", "sparsify", "--config", str(cfgfile), "--size", "xs", "--method", "cast",
            "--budget", "16k", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
            "--result", str(out / "result.json")]


def _kill_tree(proc):
    """SIGKILL torchrun and its workers at once, as a scheduler ends a job step."""
    procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in procs:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)
    proc.wait()


@pytest.mark.slow
def test_sharded_run_killed_with_sigkill_resumes_exactly(tmp_path, micro_data, micro_teacher):
    cfg, data = micro_data
    raw = copy.deepcopy(cfg)
    raw["results_dir"] = str(tmp_path / "results")
    raw["train"] = {**cfg["train"], "checkpoint_every": 10, "batch_size": 8, "strategy": "fsdp2", "processes": 2}
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(raw))
    env = _env()
    subprocess.run([sys.executable, "-m", "cast.cli", "init", "--config", str(cfgfile)], check=True, env=env, capture_output=True)
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    ref = subprocess.Popen(_sparsify(cfgfile, micro_teacher, data, ref_out), env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(_sparsify(cfgfile, micro_teacher, data, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    step = out / ".ckpt" / "step.json"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (step.exists() and json.loads(step.read_text())["step"] >= 10):
        time.sleep(0.05)
    assert step.exists() and proc.poll() is None, "no checkpoint at step 10 before the run ended"
    _kill_tree(proc)
    meta = json.loads(step.read_text())
    assert meta["format"] == "dcp" and meta["processes"] == 2 and 10 <= meta["step"] < 31
    shards = sorted(p.name for p in (out / ".ckpt").iterdir())
    assert [s for s in shards if s.endswith(".safetensors")] and not any(s.endswith((".pt", ".distcp")) and
                                                                         s != "train_state.pt" for s in shards), shards
    assert not (out / "model").exists() and not (out / "result.json").exists()
    res = subprocess.run(_sparsify(cfgfile, micro_teacher, data, out), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {out / '.ckpt'} at step {meta['step']}/31" in res.stdout + res.stderr
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-3000:]
    a, b = load_file(str(ref_out / "model" / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    assert json.loads((out / "result.json").read_text())["strategy"] == "fsdp2"


def test_strategy_keys_never_change_what_a_job_computes(micro_cfg):
    """strategy, nodes and activation_checkpointing are runtime-only: no rerun, checkpoints kept
    (a checkpoint is resumed only in its own format: the checkpointer's tag)."""
    from cast.jobs import fingerprint

    jobs = [("sparsify", {"size": "xs", "method": "cast", "budget": "16k"}), ("teacher", {"size": "xs"}),
            ("finetune", {"dataset": "news", "base": "xs/cast/16k"})]
    before = [fingerprint(micro_cfg, s, **w) for s, w in jobs]
    cfg = copy.deepcopy(micro_cfg)
    for sec in ("train", "teacher"):
        cfg[sec].update(strategy="fsdp2", nodes=2, activation_checkpointing=True)
    cfg["resources"]["gpu_mem_gb"] = 80
    assert [fingerprint(cfg, s, **w) for s, w in jobs] == before
    cfg["train"]["processes"] = 2  # the world size still is part of a job, as before
    assert fingerprint(cfg, "sparsify", **jobs[0][1]) != before[0]


def test_default_config_keeps_the_single_process_path(micro_cfg):
    """No resources.gpu_mem_gb: auto is ddp for every training job; one process trains exactly as
    before (cast.train.OwnCheckpoints, accelerate's prepare; checked bitwise against main once)."""
    from cast import distributed, plan
    from cast.train import OwnCheckpoints

    labels = [j.label for j in plan.jobs_of(micro_cfg, unique=False)]
    assert "sparsify xs/cast" in labels and "teacher xs" in labels and "finetune xs" in labels
    assert {distributed.resolve(micro_cfg, "train" if not lab.startswith("teacher") else "teacher", lab) for lab in labels} == {"ddp"}
    strat = distributed.strategy("ddp", accelerator=None)
    assert not strat.sharded and isinstance(strat.checkpointer, OwnCheckpoints) and OwnCheckpoints.tag == ""
    assert distributed.autocast_precision("bf16", "ddp") == "bf16" and distributed.autocast_precision("bf16", "fsdp2") == "no"
