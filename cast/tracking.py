"""MLflow tracking: one run per job, tags, flattened params, batched metrics.

How the store reads in the MLflow UI (compare and parallel-coordinates views included):
  * one run per job, named after the stage and the model folder it made or read
    ("sparsify m/cast/256k_r1", "evaluate m/cast/256k/quant/int4"): unique within a pipeline;
  * an `evaluate` run is nested under the run that produced its model (tag `mlflow.parentRunId`,
    read from the model folder's result.json), and its headline metrics (ppl/*, bpb/*, zs/*) are
    also logged on that run, so one training-run row holds lambda, budget, tokens and perplexity;
  * the experiment carries `mlflow.experimentKind: custom_model_development`: MLflow 3 opens it on
    the runs table, not the GenAI traces view;
  * each job attaches its resolved config and result JSON (and mask_stats.json) as artifacts.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .config import REPO_ROOT, config_hash, results_dir, tracking_uri

_BAD = re.compile(r"[^A-Za-z0-9_\-. :/]")
PARENT_TAG = "mlflow.parentRunId"  # MLflow's nested-run link (the UI folds children under their parent)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3: open on runs, not traces
HEADLINE = ("ppl/", "bpb/", "zs/")  # evaluate metrics copied onto the run that produced the model


def sanitize(name: str) -> str:
    """MLflow metric/param names allow alphanumerics, _ - . : space and /; 'acc,none' -> 'acc_none'."""
    return _BAD.sub("_", name)


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[sanitize(key)] = str(v)[:6000]
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def use_uri(uri: str) -> None:
    """mlflow.set_tracking_uri without its side effect on os.environ (it exports
    MLFLOW_TRACKING_URI, which would leak into every subprocess this process starts)."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def init_store(cfg: dict) -> str:
    """Create the store and the experiment once, before any parallel job (sqlite migrations race)."""
    import mlflow

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    use_uri(uri)
    exp = mlflow.get_experiment_by_name(cfg["experiment"])
    if exp is None:
        art = (results_dir(cfg) / "mlruns").as_uri()
        return mlflow.create_experiment(cfg["experiment"], artifact_location=art, tags=EXPERIMENT_TAGS)
    for k, v in EXPERIMENT_TAGS.items():  # a store created before the tag existed
        if exp.tags.get(k) != v:
            mlflow.MlflowClient(uri).set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def run_name(stage: str, tags: dict) -> str:
    """The stage and the model folder the job made or read ("evaluate m/cast/256k_r1/quant/int4"),
    else the stage and its other tags ("data bpe", "downstream news", "report")."""
    from .layout import Prefix

    if tags.get("size"):
        return f"{stage} {Prefix.from_tags(tags)}"
    return " ".join([stage, *(str(v) for _, v in sorted(tags.items()) if v not in (None, ""))])


def producer_run(cfg: dict, stage: str, tags: dict) -> str | None:
    """Run id of the job that made the model an `evaluate` job reads (its folder's result.json)."""
    from .io import read_json
    from .layout import Layout, Prefix

    if stage != "evaluate" or not tags.get("size"):
        return None
    made = Layout(results_dir(cfg)).result(Prefix.from_tags(tags))
    try:
        return read_json(made).get("run_id") if made.exists() else None
    except (OSError, ValueError):
        return None


@functools.cache
def reachable(uri: str, timeout: float = 5.0) -> bool:
    """Whether an http(s) tracking server answers /health within timeout (file/sqlite stores: True).
    Probed first because MLflow's own client retries a dead server for minutes; probed once per
    process (a job, or the fit's several reads), so a dead server costs one timeout, not one per call."""
    if not uri.startswith(("http://", "https://")):
        return True
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def warn_offline(uri: str, what: str) -> None:
    sys.stderr.write(f"cast: WARNING: MLflow tracking server {uri} is unreachable; {what}\n")


class Tracker:
    """Buffers metrics and sends them with log_batch (200 single calls cost ~1 s; a batch 0.06 s)."""

    def __init__(self, client, run_id: str, flush_every: int = 500):
        self.client, self.run_id, self.flush_every = client, run_id, flush_every
        self._buf = []
        self.latest: dict[str, float] = {}  # last value per metric name

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            if v is not None:
                self._buf.append(Metric(sanitize(k), float(v), ts, int(step)))
                self.latest[sanitize(k)] = float(v)
        if len(self._buf) >= self.flush_every:
            self.flush()

    def flush(self, run_id: str | None = None) -> None:
        """Send the buffer; a server that went away mid-job loses metrics, never the job."""
        try:
            for i in range(0, len(self._buf), 900):
                self.client.log_batch(run_id or self.run_id, metrics=self._buf[i:i + 900])
        except Exception as e:  # noqa: BLE001 - any transport/server error
            sys.stderr.write(f"cast: WARNING: MLflow logging failed ({type(e).__name__}: {e}); metrics dropped\n")
        self._buf = []

    def copy_headline(self, run_id: str) -> None:
        """Log this run's headline metrics (HEADLINE prefixes, no stderr) on another run as well."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buf = [Metric(k, v, ts, 0) for k, v in self.latest.items()
                     if k.startswith(HEADLINE) and not k.endswith("_stderr")]
        self.flush(run_id)

    def set_tags(self, tags: dict) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))


class NullTracker:
    """What non-main processes of a multi-process job get (logging is the main process's job), and
    every job while the tracking server is unreachable."""

    run_id = None

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        pass

    flush = set_tags = log_artifact = log_metrics


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def start_run(cfg: dict, stage: str, tags: dict, params: dict | None = None):
    """One MLflow run for one job; tagged stage/size/method/budget/config_hash/git_commit."""
    from mlflow.tracking import MlflowClient

    if not is_main_process():
        yield NullTracker()
        return

    uri = tracking_uri(cfg)
    if not reachable(uri):
        warn_offline(uri, "this job runs untracked (its result JSON is written as always)")
        yield NullTracker()
        return
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg["experiment"])
    exp_id = exp.experiment_id if exp is not None else init_store(cfg)
    all_tags = {"stage": stage, "config_hash": config_hash(cfg), "git_commit": git_commit(),
                "host": os.uname().nodename, **{k: str(v) for k, v in tags.items() if v is not None}}
    parent = producer_run(cfg, stage, tags)
    if parent:
        all_tags[PARENT_TAG] = parent
    run = client.create_run(exp_id, run_name=run_name(stage, tags), tags=all_tags)
    tracker = Tracker(client, run.info.run_id)
    if params:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), 90):
            client.log_batch(run.info.run_id, params=items[i:i + 90])
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        tracker.flush()
        client.set_terminated(run.info.run_id, status=status)
    if parent:
        tracker.copy_headline(parent)


def attach(cfg: dict, run_id: str | None, files=(), config: bool = True) -> None:
    """Attach files (those that exist) and, with `config`, the resolved config as config.yaml to a run,
    after the job wrote them; a store that fails here costs the artifacts, never the job."""
    if not run_id or not is_main_process() or not reachable(tracking_uri(cfg)):
        return
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri(cfg))
        if config:
            import yaml

            client.log_text(run_id, yaml.safe_dump(cfg, sort_keys=False), "config.yaml")
        for f in map(Path, files):
            if f.is_file():
                client.log_artifact(run_id, str(f))
    except Exception as e:  # noqa: BLE001 - any transport/store error
        sys.stderr.write(f"cast: WARNING: MLflow artifacts not attached ({type(e).__name__}: {e})\n")
