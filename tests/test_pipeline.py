"""End to end, from the root of a clone, as a user types it: `snakemake --cores 2 --configfile FILE` on
one config holding tiny local checkpoints of GPT-2, OPT, LLaMA, Qwen2 and Mistral (each with its own
tokenizer; Qwen2 saved in bf16, OPT with a padded vocabulary), through every stage with every method:
sparsify (cast, magnitude, wanda, sparsegpt, srste), quantize, finetune, evaluate, tables, the
scaling-law fit and the report. (Presets trained here run end to end in tests/test_slurm.py, zero-shot
and lm-eval's CLI in tests/test_readme.py.)"""
import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import user_env
from tiny_archs import ARCHS, build

METHODS = ["cast", "magnitude", "wanda", "sparsegpt", "srste"]


def config(ckpts: dict, results: Path) -> dict:
    return {
        "experiment": "cast-e2e", "results_dir": str(results), "threads": 1,
        "data": {"source": "gensim_wiki", "max_documents": 40, "tokenizer": {"vocab_size": 512}},
        "models": {a: {"pretrained": str(p)} for a, p in ckpts.items()},
        "train": {"seqlen": 32, "batch_size": 4, "lr": 2.0e-3, "warmup_steps": 1, "checkpoint_every": 0, "log_every": 2},
        "methods": {"cast": {"algorithm": "cast", "lambda": 1.0e-3, "t1": 2},
                    "magnitude": {"algorithm": "magnitude"},
                    "wanda": {"algorithm": "wanda", "calib_samples": 4},
                    "sparsegpt": {"algorithm": "sparsegpt", "calib_samples": 4, "blocksize": 16},
                    "srste": {"algorithm": "srste", "lambda": 2.0e-4, "t1": 2}},
        "run": {"sizes": list(ckpts), "methods": METHODS, "budgets": ["1k"], "group": "size"},
        "evaluate": {"ppl_seqlens": [32], "batch_size": 8, "group": "size", "shards": 1},
        "zeroshot": {"enabled": False},
        "quantize": {"methods": ["cast"], "apply_to": ["sparse"],
                     "schemes": {"gptq4": {"method": "gptq", "bits": 4, "group_size": 16, "calib_samples": 4}}},
        "finetune": {"methods": ["cast"], "apply_to": ["sparse"], "tokens": "256", "seqlen": 32, "batch_size": 4},
        "scaling_law": {"bootstrap": 0},
    }


def snakemake(clone: Path, cfgfile: str, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", "--cores", "2", "--configfile", cfgfile, *extra], cwd=clone, env=user_env(),
                          capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def e2e(repo_clone, tmp_path_factory):
    from cast.data import wiki_articles

    root = tmp_path_factory.mktemp("e2e")
    ckpts = build(root / "ckpts", [d["text"] for d in wiki_articles(200, 12)])
    cfg = config(ckpts, repo_clone / "results-e2e")
    (repo_clone / "e2e.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.time()
    proc = snakemake(repo_clone, "e2e.yaml")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    print(f"\ne2e DAG: {time.time() - t0:.0f} s wall")
    return repo_clone, cfg, Path(cfg["results_dir"]), ckpts


def nm_violations(weight: torch.Tensor, input_dim: int) -> int:
    """An independent 2:4 checker: groups of 4 consecutive inputs with more than 2 non-zeros."""
    w = weight if input_dim == 1 else weight.t()
    return int(((w.reshape(-1, 4) != 0).sum(dim=1) > 2).sum())


TARGET = (".c_attn.", ".c_proj.", ".c_fc.", "q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj",
          "up_proj", "down_proj", ".fc1.", ".fc2.")


@pytest.mark.slow
def test_every_architecture_through_every_stage(e2e):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    _, cfg, R, ckpts = e2e
    table = {}
    for size in cfg["run"]["sizes"]:
        folders = sorted(R.glob(f"{size}/*/*/model")) + sorted(R.glob(f"{size}/*/*/*/*/model"))
        kinds = {str(f.relative_to(R / size).parent) for f in folders}
        for m in METHODS:
            assert any(k.startswith(f"{m}/") for k in kinds), (size, m)
        for folder in folders:
            state = load_file(str(folder / "model.safetensors"))
            sparse = "teacher" not in folder.parts
            checked = 0
            for key, w in state.items():
                if sparse and key.endswith(".weight") and w.dim() == 2 and any(t in f".{key}" for t in TARGET):
                    assert nm_violations(w, 0 if size == "gpt2" else 1) == 0, (folder, key)
                    zero = w == 0
                    assert not bool(torch.signbit(w[zero].float()).any()), (folder, key)  # +0.0 only
                    checked += 1
            assert checked or not sparse, folder
            dtype = {str(w.dtype) for w in state.values() if w.is_floating_point()}
            assert dtype == {"torch.bfloat16" if size == "qwen2" else "torch.float32"}, (folder, dtype)
            model = AutoModelForCausalLM.from_pretrained(folder)
            if size in ("gpt2", "opt", "qwen2"):  # tied input/output embeddings stay tied
                assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
            ev = json.loads((folder.parent / "eval.json").read_text())
            assert ev["tokenizer"] == size and "bpb/wiki_test/s32" in ev["metrics"]
            table.setdefault(size, set()).add(str(folder.relative_to(R / size).parent).split("/")[0]
                                              + ("+quant" if "quant" in folder.parts else "")
                                              + ("+finetune" if "finetune" in folder.parts else ""))
    assert all({"cast+finetune", "cast+quant"} <= v for v in table.values())
    rows = (R / "tables" / "ppl.csv").read_text().splitlines()
    assert len(rows) == 1 + len(ARCHS) * (1 + len(METHODS))  # the teacher and each method's model per size
    assert json.loads((R / "scaling_law" / "fit.json").read_text())["n_points"] == len(ARCHS)
    html = (R / "report" / "index.html").read_text()
    assert "<img" in html and "CC BY-SA" in html


@pytest.mark.slow
def test_mlflow_has_one_run_per_job_with_tags(e2e):
    from mlflow.tracking import MlflowClient

    _, cfg, R, _ = e2e
    client = MlflowClient(f"sqlite:///{R / 'mlflow.db'}")
    exp = client.get_experiment_by_name(cfg["experiment"])
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_stage = {}
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {"stage", "config_hash", "git_commit"} <= set(r.data.tags)
        by_stage.setdefault(r.data.tags["stage"], []).append(r)
    n = len(ARCHS)  # one tokenizer, one teacher, 5 methods, one fine-tune and one quantized model per size
    assert {k: len(v) for k, v in by_stage.items()} == {
        "data": n, "downstream": n, "teacher": n, "sparsify": n * len(METHODS), "finetune": n, "quantize": n,
        "evaluate": n * (1 + len(METHODS) + 2), "table": 1, "scaling_law": 1, "report": 1}
    for r in by_stage["sparsify"]:
        assert {"size", "method", "budget"} <= set(r.data.tags)
        if r.data.tags["method"] == "cast":
            assert len(client.get_metric_history(r.info.run_id, "mask/masked_over_kept")) >= 2
    ids = {r.info.run_id for r in runs}
    for f in R.rglob("result.json"):  # every result JSON names its run
        assert json.loads(f.read_text())["run_id"] in ids
    # every job ran in a child of the job server (cast.jobserver), none in a process of its own
    served = (R / "logs" / "jobserver.log").read_text()
    jobs = len([line for line in served.splitlines() if " runs `cast " in line])
    assert jobs == 1 + sum(len(v) for k, v in by_stage.items() if k not in ("sparsify", "evaluate")) + 2 * n, served
    assert "in its own process" not in served


@pytest.mark.slow
def test_second_run_does_nothing(e2e):
    clone = e2e[0]
    proc = snakemake(clone, "e2e.yaml")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_grid_selection_reruns_no_finished_job(e2e):
    """Fine-tuning the teachers too (finetune.apply_to) plans only the new fine-tunes and the summaries
    that list them: no finished job is rerun or deleted."""
    clone, cfg, R, _ = e2e
    grown = {**cfg, "finetune": {**cfg["finetune"], "apply_to": ["teacher", "sparse"]}}
    (clone / "grown.yaml").write_text(yaml.safe_dump(grown))
    proc = snakemake(clone, "grown.yaml", "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = [Path(p.rstrip(",")) for line in proc.stdout.splitlines() if line.strip().startswith("output:")
               for p in line.split(":", 1)[1].split()]
    new_evals = {str(p.relative_to(R)) for p in outputs if p.name == "eval.json" and not p.exists()}
    assert new_evals == {f"{a}/teacher/finetune/news/eval.json" for a in ARCHS}
    # evaluate.group: size re-evaluates each size's folders (they share its job), hence the summaries
    assert {p.relative_to(R).parts[0] for p in outputs if p.exists()} - set(ARCHS) <= {"tables", "report", "scaling_law"}
    assert not [p for p in outputs if p.exists() and "model" in p.parts]  # no model is rebuilt
