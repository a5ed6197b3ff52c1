"""The README's commands, run verbatim from the repository root of a clone: the paper configs through
the SLURM profile (a dry run: no cluster here) and the "Your own model" section end to end."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, user_env
from test_paper_configs import EXPECTED, job_counts
from tiny_archs import build

README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def commands(text: str) -> list[str]:
    """The command lines of a section's bash blocks, comments stripped."""
    return [ln.split("  #")[0].strip() for b in blocks(text, "bash") for ln in b.splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def run(cmd: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_config_dry_run_from_the_repository_root(repo_clone, name):
    """`snakemake -n --workflow-profile workflow/profiles/slurm --configfile config/paper/X.yaml`, as the
    README writes it (for llama2_7b; the same line for each paper config): nothing of the embedded
    default leaks in, every job resolves offline."""
    (line,) = [c for c in commands(section("Running the paper on a GPU cluster")) if c.startswith("snakemake -n")]
    assert "--configfile config/paper/llama2_7b.yaml" in line
    proc = run(line.replace("llama2_7b", name), repo_clone, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert job_counts(proc.stdout) == EXPECTED[name]
    check = run(f"cast validate --config config/paper/{name}.yaml", repo_clone, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]  # the same verdict as Snakemake


@pytest.mark.slow
def test_your_own_model_section_end_to_end(repo_clone, tmp_path):
    """The section's config with its two placeholder paths filled in (a tiny LLaMA checkpoint saved
    with save_pretrained, a plain-text corpus), then its three commands as written."""
    from cast.data import wiki_articles

    texts = [d["text"] for d in wiki_articles(200, 40)]
    ckpt = build(tmp_path, texts[:10], archs=("llama",))["llama"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(texts))
    text = section("Your own model")
    (cfg,) = blocks(text, "yaml")
    assert "/path/to/my-checkpoint" in cfg and "/path/to/corpus.txt" in cfg
    (repo_clone / "my.yaml").write_text(cfg.replace("/path/to/my-checkpoint", str(ckpt)).replace("/path/to/corpus.txt", str(corpus)))
    lines = commands(text)
    assert [ln.split()[0] for ln in lines] == ["snakemake", "snakemake", "lm_eval"]
    for line in lines:
        proc = run(line, repo_clone)
        assert proc.returncode == 0, (line, (proc.stdout + proc.stderr)[-3000:])
    R = repo_clone / yaml.safe_load(cfg)["results_dir"]
    from transformers import AutoModelForCausalLM

    from cast.sparsity import check_model, find_targets

    model = AutoModelForCausalLM.from_pretrained(R / "mine" / "cast" / "64k" / "model")
    assert sum(check_model(model, find_targets(model, [r"_proj$"], [], 4), 2, 4).values()) == 0
    assert json.loads((R / "mine" / "cast" / "64k" / "result.json").read_text())["tokens"] == 62 * 8 * 128  # whole batches
    assert "ppl/local_test/s128" in (R / "tables" / "ppl.csv").read_text().splitlines()[0]
    assert "local ppl" in (R / "tables" / "ppl.md").read_text() and (R / "report" / "index.html").exists()
    assert re.search(r"\|\s*cast_zs\s*\|", proc.stdout)  # lm-eval's own table printed the group


def test_ablation_overlay_dry_run_from_the_repository_root(repo_clone):
    """Quick start's `snakemake -n ... --configfile config/config.yaml config/ablations.yaml`, verbatim:
    the default's jobs plus one sparsify job per ablation at m (Snakemake merges the two files)."""
    (line,) = [c for c in commands(section("Quick start")) if c.startswith("snakemake -n")]
    proc = run(line, repo_clone, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    counts = job_counts(proc.stdout)
    assert {j for j in counts if j.startswith("sparsify_m_cast_")} == \
        {"sparsify_m_cast_gradv", "sparsify_m_cast_noscale", "sparsify_m_cast_nokd", "sparsify_m_cast_srste"}
    default = run(line.replace(" config/ablations.yaml", ""), repo_clone, timeout=300)
    assert default.returncode == 0, default.stderr[-2000:]
    base = job_counts(default.stdout)
    # three ablation trainings, and the teacher's variants: two quantized, one fine-tuned
    assert sum(counts.values()) - sum(base.values()) == 6
    assert (counts["quantize"] - base["quantize"], counts["finetune"] - base["finetune"]) == (2, 1)
    check = run("cast validate --config config/config.yaml --config config/ablations.yaml", repo_clone, timeout=120)
    assert check.returncode == 0 and "cast_srste:" in check.stdout, check.stderr[-2000:]


def test_zeroshot_overlay_dry_run_from_the_repository_root(repo_clone):
    """Quick start's overlay line with config/zeroshot.yaml, as a dry run (`-n` added): zero-shot is
    off in the default (no `tasks` job) and the overlay switches it on (the tasks job, and the
    largest size's evaluations, which score it)."""
    (line,) = [c for c in commands(section("Quick start")) if "config/zeroshot.yaml" in c]
    dry = line.replace("snakemake ", "snakemake -n ", 1)
    proc = run(dry, repo_clone, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    counts = job_counts(proc.stdout)
    default = job_counts(run(dry.replace(" config/ablations.yaml", "").replace(" config/zeroshot.yaml", ""),
                             repo_clone, timeout=300).stdout)
    assert counts.get("tasks") == 1 and "tasks" not in default, (counts, default)
    assert {j for j in counts if j.startswith("evaluate_m_")} == {j for j in default if j.startswith("evaluate_m_")}
