"""Measured peak memory of a small CAST run against cast.plan's figure (tests/test_plan.py), as a
script so that the peak belongs to this process alone: prints one JSON line
{"planned": bytes, "measured": bytes, "parts": {...}}.

    python tests/plan_peak.py [foreach|compiled]

The measured peak is the allocator's: the high-water mark of the bytes torch's CPU allocator holds for
live tensors, from the profiler's memory events (every allocation and free) starting just before the
models are built. It counts what the planner plans (tensors), not the kernels' own scratch space or
the C library's caching, which differ by CPU and glibc; the resident-size growth (getrusage) is
printed beside it as "rss"."""
from __future__ import annotations

import copy
import json
import resource
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC = {"hidden_size": 384, "num_layers": 4, "num_heads": 6, "intermediate_size": 1024, "max_position_embeddings": 256}
VOCAB, SEQ, BATCH = 4096, 128, 8


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def main(impl: str = "foreach") -> None:
    from cast import plan
    from cast.config import method_config, resolve_config
    from cast.methods.cast_train import train_cast
    from cast.models import build_llama
    from cast.sparsity import find_targets
    from cast.stages.common import setup

    raw = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    raw["models"] = {"p": SPEC}
    raw["data"]["tokenizer"]["vocab_size"] = VOCAB
    raw["run"] = {"sizes": ["p"], "methods": ["cast"], "budgets": [str(SEQ * BATCH * 4)]}
    raw["finetune"], raw["quantize"] = {"apply_to": []}, {"apply_to": []}
    raw["train"] = {"seqlen": SEQ, "batch_size": BATCH, "checkpoint_every": 0, "log_every": 2, "optimizer_impl": impl,
                    "malloc": "system"}
    cfg = resolve_config(raw)
    torch.set_num_threads(cfg["threads"])
    acc = setup(cfg)
    tokens = np.random.default_rng(0).integers(0, VOCAB, SEQ * BATCH * 8, dtype=np.int64)
    # warm-up: one tiny step loads every kernel and allocator pool the run uses
    small = build_llama({**SPEC, "hidden_size": 24, "num_heads": 2, "intermediate_size": 32, "num_layers": 1}, 64)
    mcfg = method_config(cfg, "cast")
    sp = cfg["sparsity"]
    train_cast(small, find_targets(small, sp["targets"], sp["exclude"], sp["m"]), {**cfg, "train": {**cfg["train"], "seqlen": 8, "batch_size": 2}},
               mcfg, teacher=copy.deepcopy(small), tokens=tokens[:512] % 64, budget=16, method="cast", accelerator=acc)
    del small
    base = rss()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        model = build_llama(SPEC, VOCAB, seed=0)
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        targets = find_targets(model, sp["targets"], sp["exclude"], sp["m"])
        train_cast(model, targets, cfg, mcfg, teacher=teacher, tokens=tokens, budget=SEQ * BATCH * 4, method="cast",
                   accelerator=acc)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = np.cumsum([b for _, b in events])
    job = next(j for j in plan.jobs_of(cfg) if j.label == "sparsify p/cast")
    parts = plan.components(job, "ddp", 1, gpu=False)
    print(json.dumps({"planned": plan.total(parts), "measured": int(live.max()), "rss": peak - base, "parts": parts}))


if __name__ == "__main__":
    main(*sys.argv[1:])
