"""The paper configs (config/paper/*.yaml): each validates and resolves its full DAG offline.

`snakemake -n` parses the workflow exactly as a cluster run would (the parse must not load models or
touch the network: HF_HUB_OFFLINE=1, nothing cached), from the root of a copy of the repository.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper"

# Hand-derived job counts. One-shot methods run once per size (budget 0); CAST sweeps every budget;
# SR-STE trains at the largest budget. evaluate = teachers + sparse models + quantized variants.
EXPECTED = {
    # 1 size; cast + magnitude + wanda + sparsegpt = 4 sparse models; quantize: {int4, gptq4} x
    # {teacher, cast} = 4; evaluate = 1 + 4 + 4 = 9
    "llama2_7b": {"mlflow_init": 1, "data": 1, "teacher": 1, "sparsify": 4, "quantize": 4, "evaluate": 9,
                  "table": 1, "scaling_law": 1, "report": 1, "all": 1},
    "llama2_13b": {"mlflow_init": 1, "data": 1, "teacher": 1, "sparsify": 4, "quantize": 4, "evaluate": 9,
                   "table": 1, "scaling_law": 1, "report": 1, "all": 1},
    # 4 sizes x (4 cast budgets + magnitude + wanda + sparsegpt + srste) = 32; quantize: 3 schemes x
    # {gpt2_xl teacher, gpt2_xl cast} = 6; evaluate = 4 + 32 + 6 = 42
    "gpt2": {"mlflow_init": 1, "data": 1, "teacher": 4, "sparsify": 32, "quantize": 6, "evaluate": 42,
             "table": 1, "scaling_law": 1, "report": 1, "all": 1},
    # 3 sizes x 8 = 24; quantize 6 (opt_1_3b); evaluate = 3 + 24 + 6 = 33
    "opt": {"mlflow_init": 1, "data": 1, "teacher": 3, "sparsify": 24, "quantize": 6, "evaluate": 33,
            "table": 1, "scaling_law": 1, "report": 1, "all": 1},
}


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _dry_run(config: Path, workdir: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
                           "--configfile", str(config), "--directory", str(workdir), *extra],
                          capture_output=True, text=True, timeout=300, env=_env())


def job_counts(text: str) -> dict:
    """The 'Job stats' table of a dry run -> {rule: count}."""
    lines = text[text.index("Job stats:"):].splitlines()[3:]  # title, header, dashes
    counts = {}
    for line in lines:
        name, count = line.split()
        if name == "total":
            return counts
        counts[name] = int(count)
    raise AssertionError("no 'total' row in the job stats")


def job_blocks(text: str) -> list[dict]:
    """Dry-run job listings -> [{'rule', 'wildcards': {...}, 'resources': {...}}]."""
    blocks = []
    for chunk in re.split(r"^(?:local)?rule ", text, flags=re.M)[1:]:
        rule = chunk.split(":", 1)[0]
        fields = dict(re.findall(r"^\s+(wildcards|resources): (.*)$", chunk, flags=re.M))
        parse = lambda s: dict(kv.split("=", 1) for kv in s.split(", ")) if s else {}  # noqa: E731
        blocks.append({"rule": rule, "wildcards": parse(fields.get("wildcards")),
                       "resources": parse(fields.get("resources"))})
    return blocks


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_config_resolves(name):
    """Each paper config resolves offline (its DAG: tests/test_readme.py runs the README's dry run)."""
    from cast.config import load_config

    resolved = load_config(PAPER / f"{name}.yaml")
    assert resolved["trust_remote_code"] is False and resolved["train"]["precision"] == "bf16"
    assert resolved["train"]["processes"] == 8
    assert all("pretrained" in m for m in resolved["models"].values())


def test_llama2_7b_is_the_paper_recipe():
    """The numbers quoted from the paper (Table XI / App. B): 7.5k steps of 256 x 4096 tokens."""
    from cast.config import load_config, parse_tokens
    from cast.train import steps_for_budget

    cfg = load_config(PAPER / "llama2_7b.yaml")
    tr, cast = cfg["train"], cfg["methods"]["cast"]
    assert steps_for_budget(parse_tokens(cfg["run"]["budgets"][-1]), tr["batch_size"], tr["seqlen"]) == 7500
    assert parse_tokens(cfg["run"]["budgets"][-1]) == 7500 * 256 * 4096 == 7_864_320_000
    assert (tr["batch_size"], tr["seqlen"], tr["lr"]) == (256, 4096, 2.0e-5)
    assert tr["batch_size"] % (tr["processes"] * tr["grad_accum"]) == 0  # whole sequences per micro-batch
    assert (cast["lambda"], cast["t1"], cast["scaling_blocks"]) == (4.0e-7, 10, 2)
    assert abs(cast["eta"] - 1 / 3) < 1e-12
    assert cfg["evaluate"]["ppl_seqlens"][0] == 4096 and cfg["zeroshot"]["tasks"] == ["cast7", "ast7"]
    assert cfg["data"]["hf"] == {**cfg["data"]["hf"], "path": "wikitext", "name": "wikitext-2-raw-v1"}
    for name in ("gpt2", "opt"):  # the sweeps end at AST's 40k steps
        c = load_config(PAPER / f"{name}.yaml")
        steps = [steps_for_budget(parse_tokens(b), c["train"]["batch_size"], c["train"]["seqlen"]) for b in c["run"]["budgets"]]
        assert steps == [5000, 10000, 20000, 40000], (name, steps)


def test_slurm_profile_with_a_paper_config(repo_clone):
    """The SLURM profile parses with a paper config, from the repository root: a training job asks one
    GPU per process (8), inference on the 7B checkpoint (one-shot pruning, evaluation, quantization)
    one, the export none."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--workflow-profile", "workflow/profiles/slurm",
                           "--configfile", "config/paper/llama2_7b.yaml"], cwd=repo_clone, capture_output=True,
                          text=True, timeout=300, env=_env())
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    all_blocks = job_blocks(proc.stdout)
    blocks = [b for b in all_blocks if b["rule"] == "sparsify"]
    gpus = {b["wildcards"]["method"]: int(b["resources"].get("gpu", 0)) for b in blocks}
    assert gpus == {"cast": 8, "magnitude": 1, "wanda": 1, "sparsegpt": 1}, gpus
    other = {(b["rule"], int(b["resources"].get("gpu", 0))) for b in all_blocks if b["rule"] in ("teacher", "evaluate", "quantize")}
    assert other == {("teacher", 0), ("evaluate", 1), ("quantize", 1)}, other
    assert {b["resources"]["mem_mb"] for b in blocks} == {"256000"}
    assert {b["resources"]["slurm_account"] for b in blocks} == {"YOUR_ACCOUNT"}
