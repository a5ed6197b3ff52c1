"""`cast report`: the report (cast.report) as a pipeline stage; its files become MLflow artifacts."""
from __future__ import annotations

from pathlib import Path


def run(cfg: dict, out_dir: str | Path, tracker=None) -> dict:
    from ..report import build

    return build(cfg, out_dir)


def cli(cfg: dict, args, tracker=None) -> dict:
    res = run(cfg, args.out_dir, tracker=tracker)
    for f in ("index.html", "report.md"):
        tracker.log_artifact(Path(args.out_dir) / f)
    return res
