"""End to end: the micro config through real Snakemake, MLflow and the cast CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _snakemake(workdir: Path, cfgfile: Path, *extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "CAST_NO_TQDM": "1"}
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2",
                           "--configfile", str(cfgfile), "--directory", str(workdir), *extra],
                          capture_output=True, text=True, timeout=1200, env=env)


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    raw = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    cfgfile = work / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(raw))
    proc = _snakemake(work, cfgfile)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work, cfgfile, raw


@pytest.mark.slow
def test_outputs_and_tables(micro_run):
    from transformers import AutoModelForCausalLM

    from cast.sparsity import check_model, find_targets

    work, _, raw = micro_run
    R = work / raw["results_dir"]
    for size in raw["run"]["sizes"]:
        assert json.loads((R / size / "teacher" / "eval.json").read_text())["metrics"]
        for method, budget in (("cast", "16k"), ("magnitude", "0")):
            d = R / size / method / budget
            model = AutoModelForCausalLM.from_pretrained(d / "model")
            targets = find_targets(model, [r"_proj$"], [], 4)
            assert sum(check_model(model, targets, 2, 4).values()) == 0
            assert json.loads((d / "result.json").read_text())["nm_violations"] == 0
    table = (R / "tables" / "ppl.csv").read_text().splitlines()
    assert len(table) == 1 + 3 * len(raw["run"]["sizes"])
    assert "zs/cast_mc/acc" in table[0]  # zero-shot columns from lm-eval
    quant = (R / "tables" / "quant.csv").read_text()
    assert "gptq4" in quant and "int8" in quant
    assert (R / "tables" / "finetune.csv").exists()
    sparse_variants = list(R.glob("xs/cast/*/quant/*/model")) + list(R.glob("xs/cast/*/finetune/*/model"))
    assert len(sparse_variants) == 3  # int8, gptq4 and the fine-tuned model (its quantized twins below)
    for q in sparse_variants + list(R.glob("xs/cast/*/finetune/*/quant/*/model")):
        model = AutoModelForCausalLM.from_pretrained(q)
        targets = find_targets(model, [r"_proj$"], [], 4)
        assert sum(check_model(model, targets, 2, 4).values()) == 0, q
    html = (R / "report" / "index.html").read_text()
    assert "<img" in html and "CC BY-SA" in html
    # the teachers learned: far below the unigram baseline of the same tokenizer
    for size in raw["run"]["sizes"]:
        ev = json.loads((R / size / "teacher" / "eval.json").read_text())["metrics"]
        uni = json.loads((R / "data" / "result.json").read_text())["unigram_ppl_test"]
        assert next(iter(ev.values())) < 0.8 * uni


@pytest.mark.slow
def test_mlflow_has_one_run_per_job_with_tags(micro_run):
    from mlflow.tracking import MlflowClient

    work, _, raw = micro_run
    R = work / raw["results_dir"]
    client = MlflowClient(f"sqlite:///{R / 'mlflow.db'}")
    exp = client.get_experiment_by_name(raw["experiment"])
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_stage = {}
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {"stage", "config_hash", "git_commit"} <= set(r.data.tags)
        by_stage.setdefault(r.data.tags["stage"], []).append(r)
    n = len(raw["run"]["sizes"])
    # finetune: xs teacher + xs cast; quantize: (xs teacher, xs cast, their 2 fine-tuned) x 2 schemes
    n_ft, n_q = 2, 4 * len(raw["quantize"]["schemes"])
    assert {k: len(v) for k, v in by_stage.items()} == {
        "data": 1, "tasks": 1, "downstream": 1, "teacher": n, "sparsify": 2 * n, "finetune": n_ft, "quantize": n_q,
        "evaluate": 3 * n + n_ft + n_q, "table": 1, "scaling_law": 1, "report": 1}
    for r in by_stage["sparsify"]:
        assert {"size", "method", "budget"} <= set(r.data.tags)
        if r.data.tags["method"] == "cast":
            hist = client.get_metric_history(r.info.run_id, "mask/masked_over_kept")
            assert len(hist) >= 2
    # every result JSON names its run
    ids = {r.info.run_id for r in runs}
    for f in R.rglob("result.json"):
        assert json.loads(f.read_text())["run_id"] in ids


@pytest.mark.slow
def test_second_run_does_nothing(micro_run):
    work, cfgfile, _ = micro_run
    proc = _snakemake(work, cfgfile)
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_grid_selection_reruns_no_finished_job(micro_run, tmp_path):
    """Adding a size to finetune.sizes plans only the new fine-tunes (and the tables that list them):
    no finished job is rerun or deleted."""
    work, _, raw = micro_run
    grown = {**raw, "finetune": {**raw["finetune"], "sizes": ["xs", "s"]}}
    cfgfile = tmp_path / "grown.yaml"
    cfgfile.write_text(yaml.safe_dump(grown))
    proc = _snakemake(work, cfgfile, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    R = work / raw["results_dir"]
    outputs = [Path(p.rstrip(",")) for line in proc.stdout.splitlines() if line.strip().startswith("output:")
               for p in line.split(":", 1)[1].split()]
    redone = {p.relative_to(R).parts[0] for p in outputs if p.exists()}
    assert redone <= {"tables", "report"}, redone  # only the summaries that list the new models
    assert any("s/teacher/finetune/news" in str(p) for p in outputs)
