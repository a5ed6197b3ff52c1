"""`cast` command line: one subcommand per pipeline stage.

Each subcommand loads and validates the config, runs one stage function inside one MLflow run,
and writes the stage's result JSON (holding the run id) atomically.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import ConfigError, load_config, method_config

EXPECTED = ("ConfigError", "InputError", "SparsityError", "TrainingDiverged", "ValueError")


def _common(p: argparse.ArgumentParser, result: bool = True):
    p.add_argument("--config", required=True, help="YAML config (validated against workflow/schemas/config.schema.yaml)")
    if result:
        p.add_argument("--result", required=True, help="result JSON to write (holds the MLflow run id)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cast", description="CAST: continuous adaptive sparse training to N:M sparsity")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("validate", help="validate a config and print the resolved version")
    _common(p, result=False)

    p = sub.add_parser("init", help="create the MLflow store and experiment (run once before parallel jobs)")
    _common(p, result=False)
    p.add_argument("--flag", help="file to touch when done")

    p = sub.add_parser("data", help="corpus splits, tokenizer and packed tokens")
    _common(p)
    p.add_argument("--out", required=True, help="data directory to create")

    p = sub.add_parser("teacher", help="pretrain (or export) the dense teacher of one size preset")
    _common(p)
    p.add_argument("--size", required=True)
    p.add_argument("--data", required=True, help="data directory from `cast data`")
    p.add_argument("--out", required=True, help="model directory to create")

    p = sub.add_parser("sparsify", help="turn a dense teacher into an exact N:M model with one method")
    _common(p)
    p.add_argument("--size", required=True)
    p.add_argument("--method", required=True, help="a name under `methods:` in the config")
    p.add_argument("--budget", required=True, help="token budget label (ignored by one-shot methods)")
    p.add_argument("--teacher", required=True, help="dense model directory")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="folder to create: model/ and mask_stats.json")

    p = sub.add_parser("evaluate", help="perplexity (+ zero-shot) of a model directory")
    _common(p)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    for tag in ("size", "method", "budget", "finetune", "quant"):
        p.add_argument(f"--{tag}", default=None, help=f"MLflow tag '{tag}'")
    p = sub.add_parser("table", help="method comparison table (CSV + Markdown) from result/eval JSONs")
    _common(p)
    p.add_argument("--out-dir", required=True)
    p.add_argument("prefixes", nargs="+", help="model folders relative to results_dir, e.g. xs/teacher xs/cast/512k")
    return ap


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except Exception as e:  # noqa: BLE001
        if type(e).__name__ in EXPECTED:
            print(f"cast {args.cmd}: error: {e}", file=sys.stderr)
            return 2
        raise


def _finish(args, stage: str, tags: dict, result: dict, run_id: str | None):
    from .io import write_json
    from .tracking import is_main_process

    if not is_main_process():
        return
    write_json(args.result, {"stage": stage, "tags": tags, "run_id": run_id, **result})


def _dispatch(args) -> int:
    cfg = load_config(args.config)
    if args.cmd == "validate":
        import yaml

        print(yaml.safe_dump(cfg, sort_keys=False))
        return 0
    from . import tracking

    if args.cmd == "init":
        exp = tracking.init_store(cfg)
        if args.flag:
            Path(args.flag).parent.mkdir(parents=True, exist_ok=True)
            Path(args.flag).write_text(f"{tracking.tracking_uri(cfg)}\n{exp}\n")
        print(f"MLflow store {tracking.tracking_uri(cfg)}, experiment {cfg['experiment']} ({exp})")
        return 0

    if args.cmd == "data":
        from .stages import data

        tags = {}
        with tracking.start_run(cfg, "data", tags, params={"data": cfg["data"]}) as tr:
            res = data.run(cfg, args.out)
            tr.log_metrics({"data/unigram_ppl_test": res["unigram_ppl_test"],
                            **{f"data/tokens_{k}": v for k, v in res["tokens"].items()}})
            tr.set_tags({"output_dir": str(Path(args.out).resolve())})
        _finish(args, "data", tags, res, tr.run_id)
    elif args.cmd == "teacher":
        from .stages import teacher

        if args.size not in cfg["models"]:
            raise ConfigError(f"unknown size preset {args.size!r}; defined in 'models': {', '.join(cfg['models'])}")
        tags = {"size": args.size, "method": "dense"}
        with tracking.start_run(cfg, "teacher", tags, params={"model": cfg["models"][args.size], "teacher": cfg["teacher"]}) as tr:
            res = teacher.run(cfg, args.size, args.data, args.out, tracker=tr)
            tr.log_metrics({"model/non_embedding_params": res["non_embedding_params"]})
            tr.set_tags({"output_dir": str(Path(args.out).resolve()), "non_embedding_params": res["non_embedding_params"]})
        _finish(args, "teacher", tags, res, tr.run_id)
    elif args.cmd == "sparsify":
        from .stages import sparsify

        mcfg = method_config(cfg, args.method)
        tags = {"size": args.size, "method": args.method, "budget": args.budget, "algorithm": mcfg["algorithm"]}
        params = {"method": mcfg, "train": cfg["train"], "sparsity": cfg["sparsity"], "lambda_rule": cfg["lambda_rule"]}
        with tracking.start_run(cfg, "sparsify", tags, params=params) as tr:
            res = sparsify.run(cfg, args.size, args.method, args.budget, args.teacher, args.data, args.out, tracker=tr)
            tr.log_metrics({"sparsify/wall_s": res["wall_s"], "sparsify/target_sparsity": res["target_sparsity"],
                            "sparsify/nm_violations": res["nm_violations"]})
            tr.set_tags({"output_dir": str(Path(args.out).resolve())})
        _finish(args, "sparsify", tags, res, tr.run_id)
    elif args.cmd == "evaluate":
        from .stages import evaluate

        tags = {k: getattr(args, k) for k in ("size", "method", "budget", "finetune", "quant") if getattr(args, k)}
        with tracking.start_run(cfg, "evaluate", tags, params={"evaluate": cfg["evaluate"]}) as tr:
            res = evaluate.run(cfg, args.model, args.data)
            tr.log_metrics(res["metrics"])
            tr.set_tags({"model_dir": str(Path(args.model).resolve())})
        _finish(args, "evaluate", tags, res, tr.run_id)
    elif args.cmd == "table":
        from .stages import tables

        with tracking.start_run(cfg, "table", {}) as tr:
            df = tables.collect(cfg, args.prefixes)
            res = tables.write(df, args.out_dir)
            for f in ("ppl.csv", "ppl.md"):
                tr.log_artifact(Path(args.out_dir) / f)
        _finish(args, "table", {}, res, tr.run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
