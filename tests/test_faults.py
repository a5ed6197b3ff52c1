"""Faults: divergence keeps the last good checkpoint, interrupted writers leave nothing complete-looking,
parallel jobs logging to one MLflow sqlite store lose nothing."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import yaml

from cast.layout import Layout

ENV = {**os.environ, "CAST_NO_TQDM": "1"}


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path, micro_data):
    from safetensors.torch import load_file

    cfg, data = micro_data
    raw = dict(cfg)
    raw["results_dir"] = str(tmp_path / "results")
    raw["teacher"] = {**cfg["teacher"], "lr": 1.0e5, "warmup_steps": 0, "checkpoint_every": 2, "grad_clip": 0.0}
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(raw))
    out = tmp_path / "results" / "xs" / "teacher" / "model"
    proc = subprocess.run([sys.executable, "-m", "cast.cli", "teacher", "--config", str(cfgfile), "--size", "xs",
                           "--data", str(data), "--out", str(out), "--result", str(out.parent / "result.json")],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("cast teacher: error:")]
    assert len(lines) == 1 and "non-finite loss" in lines[0]
    ckpt = Layout(raw["results_dir"]).checkpoint("xs/teacher")  # the results layout decides where
    assert f"last good checkpoint is kept in {ckpt}" in lines[0]
    assert not out.exists() and not (out.parent / "result.json").exists()
    step = json.loads((ckpt / "step.json").read_text())["step"]
    assert step >= 2 and step % 2 == 0
    state = load_file(str(ckpt / "model.safetensors"))
    assert all(bool(v.isfinite().all()) for v in state.values())  # the kept checkpoint is good


WRITER = textwrap.dedent("""
    import sys, time
    from cast.io import atomic_dir, write_json
    target = sys.argv[1]
    with atomic_dir(target + "/model") as tmp:
        (tmp / "part1").write_text("x")
        print("writing", flush=True)
        time.sleep(60)
        (tmp / "part2").write_text("y")
""")


def test_killed_writer_leaves_no_complete_looking_output(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "model").exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(n.startswith(".model.") and n.endswith(".tmp") for n in leftovers)


def test_write_json_is_atomic(tmp_path):
    from cast.io import read_json, write_json

    class Unprintable:
        def __str__(self):
            raise RuntimeError("cannot serialise")

    write_json(tmp_path / "r.json", {"a": 1})
    with pytest.raises(RuntimeError):
        write_json(tmp_path / "r.json", {"a": 2, "bad": Unprintable()})
    assert read_json(tmp_path / "r.json") == {"a": 1}  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


LOGGER = textwrap.dedent("""
    import sys, yaml
    from pathlib import Path
    from cast.tracking import start_run
    cfg = yaml.safe_load(open(sys.argv[1]))
    i = int(sys.argv[2])
    art = Path(sys.argv[3]) / f"art{i}.txt"
    art.write_text(f"artefact {i}")
    with start_run(cfg, "stress", {"size": f"p{i}"}, params={"i": i}) as tr:
        for step in range(100):
            tr.log_metrics({"m/a": step * i, "m/b": 1.0}, step)
            if step % 25 == 0:
                tr.flush()
        tr.log_artifact(art)
""")


def test_parallel_processes_log_to_one_sqlite_store(tmp_path, micro_cfg):
    from mlflow.tracking import MlflowClient

    from cast.config import tracking_uri
    from cast.tracking import init_store

    init_store(micro_cfg)
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(micro_cfg))
    procs = [subprocess.Popen([sys.executable, "-c", LOGGER, str(cfgfile), str(i), str(tmp_path)], env=ENV,
                              stderr=subprocess.PIPE, text=True) for i in range(8)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    client = MlflowClient(tracking_uri(micro_cfg))
    exp = client.get_experiment_by_name(micro_cfg["experiment"])
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'stress'", max_results=100)
    assert sorted(r.data.tags["size"] for r in runs) == sorted(f"p{i}" for i in range(8))
    for r in runs:
        i = int(r.data.params["i"])
        hist = client.get_metric_history(r.info.run_id, "m/a")
        assert sorted(m.step for m in hist) == list(range(100))
        assert {m.value for m in hist} == {float(s * i) for s in range(100)}
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == [f"art{i}.txt"]
        assert r.info.status == "FINISHED"


def test_outputs_get_umask_modes_not_private_temp_modes(tmp_path):
    """mkstemp/mkdtemp temporaries are 0600/0700; finished outputs must be group-readable like any
    other file (0666/0777 minus the umask), or a shared cluster results tree is unreadable."""
    import os
    import stat

    from cast.io import atomic_dir, write_json

    umask = os.umask(0)
    os.umask(umask)
    write_json(tmp_path / "r.json", {"a": 1})
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w.bin").write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o666 & ~umask  # 0644 under the usual 022
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~umask    # 0755
