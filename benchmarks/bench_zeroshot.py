"""Wall time of the zero-shot evaluation of one tiny model on the default local task group
(cast_zs = cast_mc + cast_lastword + cast_ppl with the default item counts), on 1 thread.

    python benchmarks/bench_zeroshot.py [--config config/config.yaml] [--data results/data]
                                        [--model results/xs/teacher/model] [--size xs]

Uses the data stage output if it exists (else runs the data stage into a temporary folder) and the
given model (else a random init of the size preset: the same cost as a trained one). Prints the
times measured in this one run; not a test, no threshold.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

for k, v in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(k, v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--data", default="results/data")
    ap.add_argument("--model", default="results/xs/teacher/model")
    ap.add_argument("--size", default="xs", help="preset for the random init when --model does not exist")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from cast.config import load_config
    from cast.stages import tasks
    from cast.zeroshot import resolve_task_names, run_zeroshot

    cfg = load_config(args.config)
    z = cfg["zeroshot"]
    with tempfile.TemporaryDirectory(prefix="bench_zs_") as tmp:
        tmp = Path(tmp)
        data = Path(args.data)
        if not (data / "corpus").is_dir():
            from cast.stages import data as data_stage

            t = time.perf_counter()
            data_stage.run(cfg, tmp / "data")
            data = tmp / "data"
            print(f"data stage (not counted): {time.perf_counter() - t:.1f} s")
        model = Path(args.model)
        if not (model / "config.json").exists():
            from cast.data import load_tokenizer
            from cast.models import build_llama, save_model

            tok = load_tokenizer(str(data / "tokenizer"))
            model = save_model(build_llama(cfg["models"][args.size], len(tok), tok, seed=0), tok, tmp / "model")
            print(f"model: random init of preset {args.size!r} (no {args.model})")
        else:
            print(f"model: {model}")

        t = time.perf_counter()
        built = tasks.run(cfg, data, tmp / "tasks")
        t_build = time.perf_counter() - t
        names = resolve_task_names(z["tasks"])
        t = time.perf_counter()
        res = run_zeroshot(model, names, tmp / "tasks", batch_size=z["batch_size"], device="cpu", limit=z["limit"])
        t_eval = time.perf_counter() - t

    print(f"tasks {names}: items {built['items']} from {built['test_documents']} test articles, "
          f"{res['ppl_docs']['tokens'] if 'ppl_docs' in res else 0} cast_ppl tokens")
    print(f"threads {torch.get_num_threads()}, batch_size {z['batch_size']}")
    print(f"build tasks: {t_build:.2f} s")
    print(f"run_zeroshot (model load + lm-eval): {t_eval:.2f} s")
    for k, v in sorted(res["metrics"].items()):
        print(f"  {k} = {v:.4g}")


if __name__ == "__main__":
    main()
