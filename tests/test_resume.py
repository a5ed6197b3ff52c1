"""Kill a sparse-training run with a real signal, rerun it, and get the uninterrupted result."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file


def _cmd(cfgfile, teacher, data, out):
    return [sys.executable, "-m", "cast.cli", "sparsify", "--config", str(cfgfile), "--size", "xs", "--method", "cast",
            "--budget", "40k", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
            "--result", str(out / "result.json")]


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(tmp_path, micro_data, micro_teacher):
    cfg, data = micro_data
    raw = {k: v for k, v in cfg.items()}
    raw["results_dir"] = str(tmp_path / "results")
    raw["train"] = {**cfg["train"], "checkpoint_every": 10, "batch_size": 8}
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(raw))
    teacher = micro_teacher
    env = {**os.environ, "CAST_NO_TQDM": "1"}
    subprocess.run([sys.executable, "-m", "cast.cli", "init", "--config", str(cfgfile)], check=True, env=env, capture_output=True)

    ref_out = tmp_path / "ref" / "run"
    subprocess.run(_cmd(cfgfile, teacher, data, ref_out), check=True, env=env, capture_output=True, timeout=600)

    out = tmp_path / "killed" / "run"
    ckpt = out / ".ckpt" / "step.json"
    proc = subprocess.Popen(_cmd(cfgfile, teacher, data, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint appeared before the run ended"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(ckpt.read_text())["step"]
    assert not (out / "result.json").exists() and not (out / "model").exists()  # nothing complete-looking

    res = subprocess.run(_cmd(cfgfile, teacher, data, out), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {ckpt.parent} at step {killed_at}" in res.stdout + res.stderr
    a = load_file(str(ref_out / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
