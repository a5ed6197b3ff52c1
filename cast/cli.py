"""`cast` command line: one subcommand per pipeline stage, built from the stage table
(cast.stages.STAGES).

Each subcommand loads and validates the config, runs its stage inside one MLflow run (params: the
job's config slice from cast.jobs; tags: the model folder's place in the grid) and writes the
stage's result JSON (holding the run id) atomically. Expected failures (cast.errors.CastError: a
bad config value, a bad input file, a broken N:M export, a diverged run) print one line and exit 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module
from pathlib import Path

from . import __version__, quiet
from .errors import CastError
from .stages import STAGES, job_name

quiet.install()  # before torch/torchao load: their known, harmless import messages stay out of job logs


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cast", description="CAST: continuous adaptive sparse training of LLMs to "
                                 "N:M (2:4) sparsity, one subcommand per pipeline stage (see `cast STAGE --help`).")
    ap.add_argument("--version", action="version", version=f"cast {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="STAGE")
    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.help, description=f"{stage.description}\n\nexample:\n  {stage.example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", "--configfile", dest="config", required=True, action="append",
                       help="YAML config (validated as by `cast validate`); given again, the next file's keys go "
                       "on top, as Snakemake merges several --configfile")
        if stage.result:
            p.add_argument("--result", required=True, help="result JSON to write (holds the MLflow run id)")
        for a in stage.args:
            kw = {"help": a.help}
            if a.action:
                kw["action"] = a.action
            elif a.nargs:
                kw["nargs"] = a.nargs
            else:
                kw.update(required=a.required, default=a.default)
            p.add_argument(a.flag, **kw)
    return ap


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except CastError as e:
        print(f"cast {args.cmd}: error: {e}", file=sys.stderr)
        return 2


def _entry(path: str):
    module, _, fn = path.partition(":")
    return getattr(import_module(module), fn)


def _tags(stage, args) -> dict:
    """MLflow tags from the arguments: "tag" (the argument of that name) or "tag:arg"; unset ones and
    replicate 0 (the config seed) are left out."""
    out = {}
    for spec in stage.tags:
        tag, _, arg = spec.partition(":")
        value = getattr(args, arg or tag, None)
        if value not in (None, "") and not (tag == "replicate" and str(value) == "0"):
            out[tag] = str(value)
    if "budget" in out:  # one label per value, as in the folder name (1e6 -> 1M)
        from .layout import budget_label

        out["budget"] = budget_label(out["budget"])
    return out


def _fmt(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def headline(stage, result: dict) -> str:
    """The figures of a job's last log line: stage.headline's result keys ("key:prefix" picks the
    items of a dict whose name starts with prefix)."""
    parts = []
    for spec in stage.headline:
        key, _, prefix = spec.partition(":")
        value = result.get(key)
        if isinstance(value, dict):
            parts += [f"{k} {_fmt(v)}" for k, v in value.items() if str(k).startswith(prefix)]
        elif isinstance(value, list):
            parts.append(f"{key} {', '.join(map(str, value))}")
        elif value is not None:
            parts.append(f"{key} {_fmt(value)}")
    return "; ".join(parts)


def _metrics(stage, result: dict) -> dict:
    out = {}
    for name, key in stage.metrics:
        value = result.get(key)
        if isinstance(value, dict):
            out.update({f"{name}{k}": v for k, v in value.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def dispatch(args) -> int:
    from .config import load_config

    stage = STAGES[args.cmd]
    cfg = load_config(*args.config)
    if not stage.result:
        return _entry(stage.entry)(cfg, args, None)
    from . import jobs

    params = jobs.job_config(cfg, job_name(stage.name), **_wildcards(stage, args)) if stage.job else None
    run_job(cfg, stage, _tags(stage, args), params, lambda tr: _entry(stage.entry)(cfg, args, tr), args.result,
            getattr(args, "out", None) or getattr(args, "out_dir", None), getattr(args, "model", None))
    return 0


def run_job(cfg: dict, stage, tags: dict, params, body, result_path, out=None, model=None) -> dict:
    """One job: an MLflow run (tags, params), body(tracker) -> result, its metrics and folder tags,
    then finish(). Also what the group commands (evaluate-group, sparsify-group) do per model."""
    from . import tracking

    with tracking.start_run(cfg, job_name(stage.name), tags, params=params) as tr:
        result = body(tr)
        tr.log_metrics(_metrics(stage, result))
        tr.set_tags({k: str(Path(v).resolve()) for k, v in (("output_dir", out), ("model_dir", model)) if v})
    if tracking.is_main_process():
        finish(cfg, stage, result_path, tags, tr.run_id, result, out)
    return result


def finish(cfg: dict, stage, result_path, tags: dict, run_id: str | None, result: dict, out=None) -> None:
    """A job's end (main process): its result JSON (with the run id), the JSON, the resolved config
    and stage.artifacts attached to the MLflow run, and one log line: what it wrote, its figures."""
    from . import tracking
    from .io import write_json

    write_json(result_path, {"stage": job_name(stage.name), "tags": tags, "run_id": run_id, **result})
    tracking.attach(cfg, run_id, [result_path, *(Path(out) / a for a in stage.artifacts if out)])
    run = f" (MLflow run {run_id})" if run_id else ""
    print(f"cast {stage.name}: wrote {out or result_path}{run}; {headline(stage, result)}", flush=True)


def _wildcards(stage, args) -> dict:
    """The job's wildcards for cast.jobs, from the subcommand's arguments and tags."""
    from .layout import Prefix, budget_label

    if stage.name == "evaluate":  # the model folder's place in the grid, from its tags
        size, method = args.size or "model", args.method or "dense"
        base = Prefix(size) if method == "dense" else Prefix(size, method, budget_label(args.budget or "0"),
                                                               int(args.replicate or 0))
        return {"prefix": str(Prefix(base.size, base.method, base.budget, base.replicate, args.finetune, args.quant))}
    out = {k: getattr(args, k) for k in ("size", "method", "budget", "replicate", "dataset", "scheme")
           if getattr(args, k, None) is not None}
    if "budget" in out:  # one label per value (1e6 -> 1M), as the folder and the tag
        out["budget"] = budget_label(out["budget"])
    return out


# -- the two stages that need no job folder ---------------------------------------------------------
def validate(cfg, args, _tracker) -> int:
    import yaml

    print(yaml.safe_dump(cfg, sort_keys=False))
    return 0


def init(cfg, args, _tracker) -> int:
    from . import tracking

    uri, exp = tracking.tracking_uri(cfg), "unreachable"
    if tracking.reachable(uri):
        exp = tracking.init_store(cfg)
    else:
        tracking.warn_offline(uri, "jobs will run untracked until it is back")
    if args.flag:
        Path(args.flag).parent.mkdir(parents=True, exist_ok=True)
        Path(args.flag).write_text(f"{uri}\n{exp}\n")
    print(f"MLflow store {uri}, experiment {cfg['experiment']} ({exp})")
    return 0


if __name__ == "__main__":  # a pipeline job: run by the job server when Snakemake started one
    from .jobserver import forward, run_and_exit

    code = forward(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    run_and_exit(main)
