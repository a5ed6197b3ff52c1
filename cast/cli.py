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


def _tags(p: argparse.ArgumentParser, *names: str):
    """--size/--method/...: the model folder's place in the grid, logged as MLflow tags."""
    for tag in names:
        p.add_argument(f"--{tag}", default=None, help=f"MLflow tag '{tag}'")


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

    p = sub.add_parser("tasks", help="offline zero-shot lm-eval tasks (JSONL + YAML) from the test split")
    _common(p)
    p.add_argument("--data", required=True, help="data directory from `cast data`")
    p.add_argument("--out", required=True, help="tasks folder to create")

    p = sub.add_parser("evaluate", help="perplexity (+ zero-shot) of a model directory")
    _common(p)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--tasks-dir", default=None, help="folder from `cast tasks` (needed by the local zero-shot tasks)")
    p.add_argument("--no-zeroshot", action="store_true", help="perplexity only (zeroshot.on_variants: false)")
    _tags(p, "size", "method", "budget", "finetune", "quant")

    p = sub.add_parser("quantize", help="weight-only quantization of a model directory (zeros stay zero)")
    _common(p)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="data directory (tokenizer, GPTQ calibration windows)")
    p.add_argument("--scheme", required=True, help="a name under `quantize.schemes:` in the config")
    p.add_argument("--out", required=True, help="folder to create: model/, qstate.safetensors, quant.json")
    _tags(p, "size", "method", "budget", "finetune")

    p = sub.add_parser("downstream", help="token streams of one fine-tuning dataset")
    _common(p)
    p.add_argument("--dataset", required=True, help="a name under `finetune.datasets:` in the config")
    p.add_argument("--data", required=True, help="data directory (its tokenizer is used)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("finetune", help="fine-tune a model on a downstream dataset (sparse: mask frozen)")
    _common(p)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--dataset", required=True, help="a name under `finetune.datasets:` in the config")
    p.add_argument("--downstream", default=None, help="token folder from `cast downstream` (default results_dir/downstream/DATASET)")
    p.add_argument("--teacher", default=None, help="dense model directory for distillation (finetune.eta > 0)")
    p.add_argument("--out", required=True, help="folder to create: model/")
    _tags(p, "size", "method", "budget")

    p = sub.add_parser("table", help="method comparison table (CSV + Markdown) from result/eval JSONs")
    _common(p)
    p.add_argument("--out-dir", required=True)
    p.add_argument("prefixes", nargs="+", help="model folders relative to results_dir, e.g. xs/teacher xs/cast/512k")
    p = sub.add_parser("fit", help="fit the scaling laws to the sweep's evaluate runs read back from MLflow")
    _common(p)
    p.add_argument("--out-dir", required=True, help="folder for fit.json and points.csv")
    p = sub.add_parser("report", help="HTML + Markdown report (tables, scaling law, training curves)")
    _common(p)
    p.add_argument("--out-dir", required=True, help="folder for index.html, report.md and plots/")
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
    elif args.cmd == "tasks":
        from .stages import tasks as zs_tasks

        with tracking.start_run(cfg, "tasks", {}, params={"zeroshot": cfg["zeroshot"]}) as tr:
            res = zs_tasks.run(cfg, args.data, args.out)
            tr.log_metrics({f"tasks/{k}_items": v for k, v in res["items"].items()})
            tr.set_tags({"output_dir": str(Path(args.out).resolve())})
        _finish(args, "tasks", {}, res, tr.run_id)
    elif args.cmd == "evaluate":
        from .stages import evaluate

        tags = {k: getattr(args, k) for k in ("size", "method", "budget", "finetune", "quant") if getattr(args, k)}
        with tracking.start_run(cfg, "evaluate", tags, params={"evaluate": cfg["evaluate"], "zeroshot": cfg["zeroshot"]}) as tr:
            res = evaluate.run(cfg, args.model, args.data, tasks_dir=args.tasks_dir, with_zeroshot=not args.no_zeroshot)
            if args.finetune:  # fine-tuned models: also perplexity on their downstream test split
                from .stages.finetune import downstream_ppl

                res["metrics"].update(downstream_ppl(cfg, args.model, args.finetune))
            tr.log_metrics(res["metrics"])
            tr.set_tags({"model_dir": str(Path(args.model).resolve())})
        _finish(args, "evaluate", tags, res, tr.run_id)
    elif args.cmd == "quantize":
        from .stages import quantize

        tags = {k: getattr(args, k) for k in ("size", "method", "budget", "finetune") if getattr(args, k)}
        tags["quant"] = args.scheme
        qparams = {"scheme": quantize.scheme_config(cfg, args.scheme), "sparsity": cfg["sparsity"]}
        with tracking.start_run(cfg, "quantize", tags, params=qparams) as tr:
            res = quantize.run(cfg, args.model, args.data, args.scheme, args.out, tracker=tr)
            tr.log_metrics({f"quant/{k}": res[k] for k in ("rel_weight_err", "avg_bits", "nm_violations", "wall_s")})
            tr.set_tags({"output_dir": str(Path(args.out).resolve()), "model_dir": str(Path(args.model).resolve())})
        _finish(args, "quantize", tags, res, tr.run_id)
    elif args.cmd == "downstream":
        from .stages import finetune

        tags = {"finetune": args.dataset}
        with tracking.start_run(cfg, "downstream", tags, params={"dataset": finetune.dataset_config(cfg, args.dataset)}) as tr:
            res = finetune.prepare(cfg, args.dataset, args.data, args.out)
            tr.log_metrics({f"downstream/tokens_{k}": v for k, v in res["tokens"].items()})
        _finish(args, "downstream", tags, res, tr.run_id)
    elif args.cmd == "finetune":
        from .stages import finetune

        tags = {k: getattr(args, k) for k in ("size", "method", "budget") if getattr(args, k)}
        tags["finetune"] = args.dataset
        fparams = {"finetune": {k: v for k, v in cfg["finetune"].items() if k != "datasets"},
                   "dataset": finetune.dataset_config(cfg, args.dataset)}
        with tracking.start_run(cfg, "finetune", tags, params=fparams) as tr:
            res = finetune.run(cfg, args.model, args.data, args.dataset, args.out, teacher_dir=args.teacher,
                               tracker=tr, ddir=args.downstream)
            tr.log_metrics({**{f"finetune/before/{k}": v for k, v in res.get("ppl_before", {}).items()},
                            **{f"finetune/after/{k}": v for k, v in res.get("ppl_after", {}).items()},
                            "finetune/wall_s": res["wall_s"]})
            tr.set_tags({"output_dir": str(Path(args.out).resolve()), "model_dir": str(Path(args.model).resolve())})
        _finish(args, "finetune", tags, res, tr.run_id)
    elif args.cmd == "table":
        from .stages import tables

        with tracking.start_run(cfg, "table", {}) as tr:
            df = tables.collect(cfg, args.prefixes)
            res = tables.write(df, args.out_dir)
            for f in ("ppl.csv", "ppl.md"):
                tr.log_artifact(Path(args.out_dir) / f)
        _finish(args, "table", {}, res, tr.run_id)
    elif args.cmd == "fit":
        from .stages import fit

        tags = {"method": cfg["scaling_law"]["method"]}
        with tracking.start_run(cfg, "fit", tags, params={"scaling_law": cfg["scaling_law"]}) as tr:
            res = fit.run(cfg, args.out_dir, tracker=tr)
            for f in ("fit.json", "points.csv"):
                tr.log_artifact(Path(args.out_dir) / f)
        _finish(args, "fit", tags, res, tr.run_id)
    elif args.cmd == "report":
        from .stages import report

        with tracking.start_run(cfg, "report", {}) as tr:
            res = report.run(cfg, args.out_dir, tracker=tr)
            for f in ("index.html", "report.md"):
                tr.log_artifact(Path(args.out_dir) / f)
        _finish(args, "report", {}, res, tr.run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
