"""The SLURM workflow profile end to end against a mock scheduler (tests/mock_slurm on PATH).

The real snakemake-executor-plugin-slurm builds the sbatch calls; the mock runs them and logs them,
so the assertions are on what a cluster would receive.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MOCK = REPO / "tests" / "mock_slurm"
PROFILE = REPO / "workflow" / "profiles" / "slurm"


def _opt(call: dict, key: str):
    return call["options"].get(key)


def _rule(call: dict) -> str:
    """rule_sparsify_wildcards_xs_cast_16k -> ('sparsify', 'xs_cast_16k')."""
    comment = _opt(call, "--comment")
    rule, _, wildcards = comment[len("rule_"):].partition("_wildcards_")
    return rule, wildcards


def _kill_leftovers(state: Path) -> None:
    """Jobs still running after a failure (the mock starts each in its own session)."""
    jobs = json.loads((state / "jobs.json").read_text()) if (state / "jobs.json").exists() else {}
    for job in jobs.values():
        if job.get("state") in ("PENDING", "RUNNING") and job.get("pid"):
            try:
                os.killpg(job["pid"], signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm")
    raw = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    raw["results_dir"] = str(work / "results")
    raw["run"]["sizes"] = ["xs"]
    # trimmed to the rules the profile treats differently; quantize / tasks are covered by test_pipeline
    raw["quantize"]["apply_to"] = []
    raw["finetune"]["apply_to"] = ["sparse"]
    raw["zeroshot"]["enabled"] = False
    cfgfile = work / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(raw))
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    account = profile["default-resources"]["slurm_account"]
    state = work / "mock_state"
    env = {**os.environ, "PATH": f"{MOCK}{os.pathsep}{os.environ['PATH']}", "CAST_NO_TQDM": "1",
           "MOCK_SLURM_LOG": str(work / "sbatch.jsonl"), "MOCK_SLURM_STATE": str(state),
           "MOCK_SLURM_ACCOUNTS": account.lower(),  # the plugin validates the account with sacctmgr
           "MOCK_SLURM_SACCT_WAIT": "30", "MOCK_SLURM_FAIL_FIRST": "rule_data"}
    env.pop("SLURM_JOB_ID", None)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--workflow-profile", str(PROFILE),
           "--configfile", str(cfgfile), "--directory", str(work), "--jobs", "2",
           "--slurm-init-seconds-before-status-checks", "1"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    finally:
        _kill_leftovers(state)
    calls = [json.loads(line) for line in (work / "sbatch.jsonl").read_text().splitlines()] \
        if (work / "sbatch.jsonl").exists() else []
    return {"proc": proc, "work": work, "raw": raw, "profile": profile, "calls": calls, "state": state}


@pytest.mark.slow
def test_workflow_completes_through_sbatch(slurm_run):
    proc, raw = slurm_run["proc"], slurm_run["raw"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    R = Path(raw["results_dir"])
    for prefix in ("xs/teacher", "xs/cast/16k", "xs/magnitude/0", "xs/cast/16k/finetune/news"):
        assert json.loads((R / prefix / "eval.json").read_text())["metrics"], prefix
    for out in ("tables/ppl.md", "tables/ppl.csv", "scaling_law/fit.json", "report/index.html", "report/report.md"):
        assert (R / out).exists(), out
    rules = sorted(_rule(c)[0] for c in slurm_run["calls"])
    # local rules never reach sbatch; `data` runs twice: its first job is failed by the mock (retries: 1)
    assert rules == sorted(["data", "data", "teacher", "downstream", "sparsify", "sparsify", "finetune"]
                           + ["evaluate"] * 4), rules
    jobs = json.loads((slurm_run["state"] / "jobs.json").read_text())
    assert sorted(j["state"] for j in jobs.values()) == ["COMPLETED"] * 10 + ["FAILED"]


@pytest.mark.slow
def test_sbatch_requests_gpus_only_for_training(slurm_run):
    by_job = {}
    for call in slurm_run["calls"]:
        by_job.setdefault(_rule(call), call)
    gpu = {k: _opt(c, "--gpus") for k, c in by_job.items()}
    assert gpu[("teacher", "xs")] == "1"
    assert gpu[("sparsify", "xs_cast_16k")] == "1"
    assert gpu[("finetune", "xs_cast_16k_news")] == "1"
    assert gpu[("sparsify", "xs_magnitude_0")] is None
    assert gpu[("data", "bpe")] is None and gpu[("downstream", "news_bpe")] is None
    assert [k for k in by_job if k[0] == "evaluate" and gpu[k]] == []
    for key, call in by_job.items():
        assert "--gres" not in call["options"], key
        # partitions come from partitions.yaml: a GPU request only fits the GPU partition
        assert _opt(call, "--partition") == ("gpu" if gpu[key] else "cpu"), key
        # the plugin asks one task for CPU jobs; GPU jobs get --gpus instead of --ntasks
        assert _opt(call, "--ntasks") == (None if gpu[key] else "1"), key
        assert _opt(call, "--cpus-per-task") == "1", key  # threads (config threads: 1), not a profile default


@pytest.mark.slow
def test_sbatch_gets_account_memory_and_runtime_from_the_profile(slurm_run):
    profile = slurm_run["profile"]
    default, per_rule = profile["default-resources"], profile["set-resources"]
    seen = set()
    for call in slurm_run["calls"]:
        rule, _ = _rule(call)
        want = {**default, **per_rule.get(rule, {})}
        assert _opt(call, "--account") == want["slurm_account"], rule
        assert _opt(call, "--mem") == str(want["mem_mb"]), rule
        assert _opt(call, "--time") == str(want["runtime"]), rule
        assert "--parsable" in call["options"] and _opt(call, "--chdir") == str(slurm_run["work"])
        seen.add(rule)
    # the per-rule sizes differ from the defaults, so the check above tells them apart
    assert {"teacher", "sparsify", "finetune", "evaluate"} <= seen
    assert per_rule["sparsify"]["mem_mb"] != default["mem_mb"]


def _mock(cmd, *args, env, stdin=None):
    return subprocess.run([str(MOCK / cmd), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


def _wait_done(env, name, jobid):
    out = _mock("sacct", "-X", "--parsable2", "--noheader", "--format=JobIdRaw,State", "--name", name, env=env).stdout
    return dict(line.split("|") for line in out.split())[jobid]


def test_mock_scheduler_speaks_the_plugins_formats(tmp_path):
    """The mock itself: sbatch --wrap / script on stdin / arrays, sacct and squeue rows, srun."""
    env = {**os.environ, "MOCK_SLURM_STATE": str(tmp_path / "state"), "MOCK_SLURM_LOG": str(tmp_path / "log.jsonl"),
           "MOCK_SLURM_SACCT_WAIT": "20"}
    ok = _mock("sbatch", "--parsable", "--job-name", "run1", "--output", str(tmp_path / "%j.log"), "-D", str(tmp_path),
               "--gpus=1", "--wrap", 'echo "job $SLURM_JOB_ID gpus $SLURM_GPUS in $PWD"', env=env)
    jid = ok.stdout.strip()
    assert ok.returncode == 0 and jid.isdigit()
    bad = _mock("sbatch", "--parsable", "--job-name", "run1", "-D", str(tmp_path), "/dev/stdin", env=env,
                stdin="#!/bin/sh\nexit 3\n").stdout.strip()
    arr = _mock("sbatch", "--job-name", "run2", "--array=1-2", "-D", str(tmp_path), "--output", str(tmp_path / "a_%a.log"),
                "--wrap", "echo task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_MIN-$SLURM_ARRAY_TASK_MAX", env=env).stdout
    assert arr.startswith("Submitted batch job ")  # without --parsable, like the real sbatch
    arr_id = arr.split()[-1]
    states = {}
    for _ in range(3):  # each query waits for at least one newly finished job
        out = _mock("sacct", "-X", "--parsable2", "--clusters", "all", "--noheader", "--format=JobIdRaw,State",
                    "--name", "run1", env=env).stdout
        states = dict(line.split("|") for line in out.split())
        if all(s not in ("PENDING", "RUNNING") for s in states.values()):
            break
    assert states == {jid: "COMPLETED", bad: "FAILED"}
    assert (tmp_path / f"{jid}.log").read_text().strip() == f"job {jid} gpus 1 in {tmp_path}"
    assert _wait_done(env, "run2", arr_id) == "COMPLETED"
    assert (tmp_path / "a_2.log").read_text().strip() == "task 2 of 1-2"
    squeue = _mock("squeue", "--format=%i|%T", "--states=all", "--noheader", "--name", "run1", env=env).stdout.split()
    assert sorted(squeue) == sorted([f"{jid}|COMPLETED", f"{bad}|FAILED"])
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [c["jobid"] for c in logged] == [jid, bad, arr_id]
    assert logged[0]["options"]["--gpus"] == "1" and logged[0]["options"]["--chdir"] == str(tmp_path)
    assert logged[1]["script"] == "#!/bin/sh\nexit 3\n"
    srun = _mock("srun", "-n1", "--cpu-bind=q", "--cpus-per-task=2", "--gpus=1", "--nodes=1", "-p", "gpu",
                 "sh", "-c", "echo ran $0 $1", "a", env=env)
    assert srun.stdout.strip() == "ran a" and srun.returncode == 0
    assert "MinJobAge" in _mock("scontrol", "show", "config", env=env).stdout
    assert _mock("sinfo", "-o", "%P", env=env).stdout.split() == ["PARTITION", "cpu*", "gpu"]


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory, micro_data):
    """One CAST job with train.nodes: 2 (one process per node, fsdp2) through the profile: the data and
    the teacher are in place, so the sparsify job is the only one submitted. The mock srun starts one
    task per node on this machine (localhost, 127.0.0.2), so the c10d rendezvous really runs."""
    import shutil

    from cast.data import load_tokenizer
    from cast.layout import Layout
    from cast.models import build_llama, save_model
    from cast.tokenizers import BPE

    cfg, data = micro_data
    work = tmp_path_factory.mktemp("slurm2")
    raw = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    raw["results_dir"] = str(work / "results")
    raw["run"].update(sizes=["xs"], methods=["cast"], budgets=["8k"])
    raw["train"].update(nodes=2, processes=1, strategy="fsdp2", checkpoint_every=0)
    raw["quantize"]["apply_to"], raw["finetune"]["apply_to"], raw["zeroshot"]["enabled"] = [], [], False
    cfgfile = work / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(raw))
    R = work / "results"
    env = {**os.environ, "PATH": f"{MOCK}{os.pathsep}{os.environ['PATH']}", "CAST_NO_TQDM": "1", "PYTHONPATH": str(REPO),
           "MOCK_SLURM_LOG": str(work / "sbatch.jsonl"), "MOCK_SLURM_STATE": str(work / "mock_state"),
           "MOCK_SLURM_ACCOUNTS": "your_account", "MOCK_SLURM_SACCT_WAIT": "120"}  # answers when the job ends
    env.pop("SLURM_JOB_ID", None)
    subprocess.run([sys.executable, "-m", "cast.cli", "init", "--config", str(cfgfile), "--flag", str(R / ".mlflow_initialized")],
                   check=True, env=env, capture_output=True, timeout=120)
    time.sleep(1.1)  # upstream outputs newer than their inputs: nothing but the sparsify job is due
    shutil.copytree(data, Layout(R).data_dir(BPE))
    tok = load_tokenizer(str(data / "tokenizer"))
    save_model(build_llama(cfg["models"]["xs"], len(tok), tok, seed=0), tok, R / "xs" / "teacher" / "model")
    (R / "xs" / "teacher" / "result.json").write_text("{}")
    for path in [*(R / "data").rglob("*"), R / "data", *(R / "xs").rglob("*")]:  # copies keep old times
        os.utime(path)
    target = R / "xs" / "cast" / "8k" / "result.json"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--workflow-profile", str(PROFILE),
           "--configfile", str(cfgfile), "--directory", str(work), "--jobs", "1", "--rerun-triggers", "mtime",
           "--slurm-init-seconds-before-status-checks", "1", str(target)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    finally:
        _kill_leftovers(work / "mock_state")
    calls = [json.loads(line) for line in (work / "sbatch.jsonl").read_text().splitlines()] \
        if (work / "sbatch.jsonl").exists() else []
    steps = [json.loads(line) for line in (work / "mock_state" / "calls.log").read_text().splitlines()] \
        if (work / "mock_state" / "calls.log").exists() else []
    return {"proc": proc, "calls": calls, "srun": [s["argv"] for s in steps if s["cmd"] == "srun"], "target": target}


@pytest.mark.slow
def test_two_node_job_asks_nodes_and_launches_srun_torchrun(two_node_run):
    proc, calls = two_node_run["proc"], two_node_run["calls"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert [_rule(c)[0] for c in calls] == ["sparsify"]
    opts = calls[0]["options"]
    # nodes, GPUs per node (gres), one task per node; no --gpus total, no --ntasks-per-gpu
    assert (opts["--nodes"], opts["--gres"], opts["--ntasks"], opts["--cpus-per-task"]) == ("2", "gpu:1", "2", "1")
    assert "--gpus" not in opts and "--ntasks-per-gpu" not in opts and opts["--partition"] == "gpu"
    # the rule's shell ran as written (mpi): one srun, the launcher's, and no `srun -n1` around the job
    (launch,) = two_node_run["srun"]
    assert launch[:8] == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--gres=gpu:1",
                          "--kill-on-bad-exit=1", "bash", "-c"]
    assert launch[8] == ('exec "$CAST_PYTHON" -m torch.distributed.run --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d '
                         '--rdzv_id="$SLURM_JOB_ID" --rdzv_endpoint="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | '
                         'head -n1):$((29500 + SLURM_JOB_ID % 1000))" -m cast.cli "$@"')
    assert launch[9:13] == ["cast", "sparsify", "--config", launch[12]] and "--size" in launch
    result = json.loads(two_node_run["target"].read_text())
    assert result["strategy"] == "fsdp2" and result["nm_violations"] == 0 and result["steps"] == 15
