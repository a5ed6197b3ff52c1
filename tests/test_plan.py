"""The memory planner (cast.plan): its figure for a small model against a measured peak, the paper
configs' strategies and fits, the config-time refusal and `cast plan`."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cast import plan
from cast.config import load_config, resolve_config
from cast.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper"


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_planned_peak_is_within_15_percent_of_the_measured_one():
    """One process, CAST (teacher, scales, AdamS foreach), a 12M-parameter LLaMA at 8 x 128 tokens:
    the allocator's peak of live tensor bytes over the run (the profiler's memory events). The
    resident-size growth it also prints depends on the machine: 398-407 MB here, 528 MB on the CI
    machine, for 422 MB planned and a 385 MB allocator peak."""
    env = {**_env(), "MALLOC_MMAP_THRESHOLD_": "65536", "CAST_NO_TQDM": "1"}
    out = subprocess.run([sys.executable, str(REPO / "tests" / "plan_peak.py")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    planned, measured = got["planned"], got["measured"]
    assert measured > 200e6  # the run, not noise: weights + moments + teacher alone are ~160 MB
    assert abs(planned - measured) <= 0.15 * measured, got
    assert got["parts"]["activations"] > got["parts"]["temporaries"] > 0  # the compute phase is the peak here


def test_paper_llama_configs_choose_fsdp2_and_fit_8x80gb():
    for name, ckpt in (("llama2_7b", False), ("llama2_13b", True)):
        cfg = load_config(PAPER / f"{name}.yaml")
        (job,) = [j for j in plan.jobs_of(cfg) if j.label.startswith("sparsify") and "cast" in j.label]
        assert (job.world, job.micro_batch, job.seqlen, job.compute_bytes, job.act_ckpt) == (8, 1, 4096, 2, ckpt)
        assert 6.7e9 < job.shape.params < 6.8e9 if name == "llama2_7b" else 13.0e9 < job.shape.params < 13.1e9
        assert plan.choose(cfg, job) == "fsdp2"
        assert not plan.fits(plan.components(job, "ddp"), 80)  # DDP on any card of 80 GB: no
        assert plan.fits(plan.components(job, "fsdp2"), 80)
    cfg = load_config(PAPER / "llama2_13b.yaml")
    cfg["train"]["activation_checkpointing"] = False
    (job,) = [j for j in plan.jobs_of(cfg) if "cast" in j.label]
    assert not plan.fits(plan.components(job, "fsdp2"), 80)  # 13B without recomputation: 141 GB cards
    assert plan.fits(plan.components(job, "fsdp2"), 141)


def test_plan_components_follow_the_strategy():
    cfg = load_config(PAPER / "llama2_7b.yaml")
    (job,) = [j for j in plan.jobs_of(cfg) if "cast" in j.label]
    ddp1, ddp8, fsdp8 = plan.components(job, "ddp", 1), plan.components(job, "ddp", 8), plan.components(job, "fsdp2", 8)
    n = job.shape.params
    assert ddp8["grads"] == 2 * ddp1["grads"] == 8 * n  # DDP's bucket copy with more than one process
    assert fsdp8["moments"] == 8 * n // 8 and fsdp8["mask"] == job.shape.sparse_params // 8
    assert fsdp8["activations"] == ddp8["activations"] and fsdp8["gathered"] > 0 == ddp8["gathered"]
    assert plan.total(fsdp8) < plan.total(ddp8) / 3


def test_a_plan_that_does_not_fit_is_refused_at_config_time_naming_the_key(tmp_path):
    raw = yaml.safe_load((PAPER / "llama2_7b.yaml").read_text())
    raw["resources"]["gpu_mem_gb"] = 40
    with pytest.raises(ConfigError, match=r"^config key 'resources.gpu_mem_gb': the sparsify llama2_7b/cast job needs "
                                          r"[0-9.]+ GiB per GPU \(fsdp2, 8 GPUs;.*activation_checkpointing"):
        resolve_config(copy.deepcopy(raw))
    cfgfile = tmp_path / "small_cards.yaml"
    cfgfile.write_text(yaml.safe_dump(raw))
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--configfile",
                          str(cfgfile), "--directory", str(tmp_path)], capture_output=True, text=True, env=_env(), timeout=300)
    assert dry.returncode != 0
    lines = [ln for ln in dry.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("cast: invalid config: config key 'resources.gpu_mem_gb': the sparsify llama2_7b/cast"), lines[-3:]
    raw["resources"]["gpu_mem_gb"], raw["train"]["strategy"] = 80, "ddp"  # forcing DDP on 80 GB cards
    with pytest.raises(ConfigError, match=r"resources.gpu_mem_gb.*\(ddp, 8 GPUs;.*train.strategy: fsdp2"):
        resolve_config(copy.deepcopy(raw))


def test_fsdp2_rules_at_config_time(micro_raw):
    raw = copy.deepcopy(micro_raw)
    raw["train"].update(strategy="fsdp2", precision="fp16")
    with pytest.raises(ConfigError, match=r"^config key 'train.precision': fp16 needs a gradient scaler"):
        resolve_config(raw)
    raw = yaml.safe_load((PAPER / "gpt2.yaml").read_text())
    raw["train"].update(strategy="fsdp2", processes=7, batch_size=7 * 4 * 4)
    with pytest.raises(ConfigError, match=r"^config key 'train.processes': fsdp2 shards GPT-2's Conv1D .* 768 .* 7 processes"):
        resolve_config(raw)
    raw = copy.deepcopy(micro_raw)
    raw["train"].update(nodes=3, processes=1)  # 3 processes in all
    with pytest.raises(ConfigError, match=r"^config key 'train.batch_size': 8 is not divisible by the 3 processes "
                                          r"\(train.processes x train.nodes\)"):
        resolve_config(raw)


def test_cast_plan_prints_every_strategy_and_gpu_count():
    out = subprocess.run([sys.executable, "-m", "cast.cli", "plan", "--configfile", str(PAPER / "llama2_7b.yaml")],
                         capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "## sparsify llama2_7b/cast: 6.74B parameters" in text and "train.strategy auto -> fsdp2" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ddp") or ln.startswith("| fsdp2")]
    assert len(rows) == 10 and "| fsdp2 **(configured)** | 8 |" in text
    configured = next(r for r in rows if "configured" in r).split("|")
    assert configured[-2].strip() == "yes" and float(configured[-3]) < 0.9 * 80
    assert all(r.split("|")[-2].strip() == "no" for r in rows if r.startswith("| ddp"))
