"""The job server (cast.jobserver): a job run through it is the job run in its own process, and the
job's process stays the one to watch (exit status, output, signals; killing it ends the job)."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cast import jobserver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """A server started as the Snakefile starts it (this test process stands in for Snakemake), and
    the environment of a job Snakemake starts: the server's, with the threads variables set."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(jobserver.ENV, raising=False)
        log = tmp_path_factory.mktemp("jobserver") / "jobserver.log"
        server = jobserver.start(1, log)
        job_env = {**os.environ, **{k: "1" for k in jobserver.THREAD_VARS}}
        mp.delenv(jobserver.ENV)  # only the jobs see it
        yield job_env, log
        jobserver.stop(server)


class Log:
    """What the server logged since the test began."""

    def __init__(self, path):
        self.path, self.start = path, path.stat().st_size if path.exists() else 0

    def read_text(self) -> str:
        return self.path.read_text()[self.start:]


@pytest.fixture
def server(started):
    env, log = started
    return env, Log(log)


def _cast(env, *argv, **kw):
    return subprocess.run([sys.executable, "-m", "cast.cli", *argv], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300, **kw)


def _forwarded(log) -> list[tuple[int, str]]:
    return [(int(p), s) for p, s in re.findall(r"pid (\d+) runs `cast (\S+)`", log.read_text())]


def test_a_job_through_the_server_is_the_job_in_its_own_process(server, tmp_path):
    env, log = server
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load(open(f"{REPO}/config/test.yaml")), "seed": "zero"}))
    own = {k: v for k, v in env.items() if k != jobserver.ENV}
    for cfg, rc in (("config/test.yaml", 0), (str(bad), 2)):
        alone = _cast(own, "validate", "--config", cfg)
        served = _cast(env, "validate", "--config", cfg)
        assert (served.returncode, served.stdout, served.stderr) == (alone.returncode, alone.stdout, alone.stderr)
        assert served.returncode == rc
    assert "seed" in served.stderr and len(served.stderr.strip().splitlines()) == 1
    assert [s for _, s in _forwarded(log)] == ["validate", "validate"], log.read_text()


def test_a_job_with_another_environment_runs_in_its_own_process(server):
    env, log = server
    res = _cast({**env, "RANK": "0"}, "validate", "--config", "config/test.yaml")
    assert res.returncode == 0 and "experiment: cast-test" in res.stdout
    assert "`cast validate` runs in its own process: environment differs in RANK" in log.read_text()
    assert _forwarded(log) == []


def _gone(pid: int, within: float) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signalled_job_process_ends_its_job(server, tmp_path, micro_data, micro_teacher, sig):
    """SIGTERM is passed on to the job (exit status 128 + 15, as a process of its own); after a
    SIGKILL, which cannot be passed on, the job ends itself when its process's connection closes."""
    env, log = server
    cfg, data = micro_data
    raw = {**cfg, "results_dir": str(tmp_path / "results"), "train": {**cfg["train"], "checkpoint_every": 10}}
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cast.cli", "sparsify", "--config", str(cfgfile), "--size", "xs",
                             "--method", "cast", "--budget", "400k", "--teacher", str(micro_teacher), "--data",
                             str(data), "--out", str(out), "--result", str(out / "result.json")],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / ".ckpt" / "step.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before its first checkpoint"
    (pid, stage), = _forwarded(log)
    assert stage == "sparsify" and pid != proc.pid
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGKILL)
    assert _gone(pid, within=30), f"job {pid} still running after its process got {sig.name}"
    assert not (out / "result.json").exists()


def test_off_starts_no_server_and_jobs_run_in_their_own_process(tmp_path, monkeypatch):
    monkeypatch.setenv(jobserver.ENV, "off")
    assert jobserver.start(1, tmp_path / "jobserver.log") is None and not (tmp_path / "jobserver.log").exists()
    assert jobserver.forward(["validate"]) is None


EXITS = {  # a job's last act -> (its process's exit status, its stdout)
    "returns 3": ("return 3", 3, ""),
    "raises a bug": ("raise RuntimeError('a bug')", 1, ""),
    "exits with a message": ("sys.exit('cast: stopped')", 1, ""),
    "is interrupted": ("raise KeyboardInterrupt", -signal.SIGINT, ""),
    "leaves a thread and an atexit handler": (
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start(); "
        "atexit.register(print, 'atexit ran'); print('buffered', end='')", 0, "bufferedthread done\natexit ran\n"),
}


def _from_the_jobs_frame(stderr: str) -> str:
    """A traceback from the job's own frame on (the frames above it differ), else all of stderr."""
    at = stderr.find('", line 3, in run')
    return stderr if at < 0 else stderr[at:]


@pytest.mark.parametrize("case", sorted(EXITS))
def test_a_forked_job_exits_as_python_would(tmp_path, case):
    """A `cast` job skips the interpreter's teardown (cast.jobserver.run_and_exit) but ends
    as `sys.exit(run())` ends: same status, same output, threads joined, atexit handlers run."""
    act, status, stdout = EXITS[case]
    body = f"import atexit, sys, threading, time\ndef run():\n    {act}\n"
    results = []
    for last in ("sys.exit(run())", "from cast.jobserver import run_and_exit; run_and_exit(run)"):
        script = tmp_path / "job.py"
        script.write_text(body + last + "\n")
        p = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=60)
        results.append((p.returncode, p.stdout, _from_the_jobs_frame(p.stderr)))
    assert results[0] == results[1]
    assert results[0][:2] == (status, stdout)
    assert ("Error: a bug" in results[0][2]) == (case == "raises a bug")
    assert (results[0][2] == "cast: stopped\n") == (case == "exits with a message")
