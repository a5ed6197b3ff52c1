"""Two DDP processes (gloo, CPU) give the single-process result with the same global batch."""
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, micro_data, micro_teacher):
    cfg, data = micro_data
    raw = dict(cfg)
    raw["results_dir"] = str(tmp_path / "results")
    raw["train"] = {**cfg["train"], "batch_size": 8, "checkpoint_every": 0}
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(raw))
    teacher = micro_teacher
    env = {**os.environ, "CAST_NO_TQDM": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "cast.cli", "init", "--config", str(cfgfile)], check=True, env=env, capture_output=True)
    outs = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable]
        cmd = launch + ["-m", "cast.cli", "sparsify", "--config", str(cfgfile), "--size", "xs", "--method", "cast",
                        "--budget", "8k", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
                        "--result", str(out / "result.json")]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        outs[procs] = load_file(str(out / "model" / "model.safetensors"))
    assert outs[1].keys() == outs[2].keys()
    for k in outs[1]:
        assert torch.allclose(outs[1][k], outs[2][k], rtol=1e-4, atol=1e-5), k
        assert torch.equal(outs[1][k] == 0, outs[2][k] == 0) or "proj" not in k, f"masks differ in {k}"
