"""Config validation: every bad value is named by its key path, before any job runs."""
import copy
import os
import re
import subprocess
import sys

import pytest
import yaml

from cast.config import ConfigError, config_hash, lambda_for_budget, parse_tokens, resolve_config, result_section

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _set(d, path, value):
    keys = path.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    if value is _DELETE:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


_DELETE = object()

BAD = [  # (key path to set, bad value, text the one-line error must contain)
    ("teacher.lr", "fast", "teacher.lr"),
    ("teacher.lr", -1.0, "teacher.lr"),
    ("teacher.batch_size", 0, "teacher.batch_size"),
    ("teacher.tokens", "lots", "teacher.tokens"),
    ("train.precision", "fp8", "train.precision"),
    ("train.betas", [0.9], "train.betas"),
    ("train.seqlen", 4096, "train.seqlen"),
    ("sparsity.n", 4, "sparsity.n"),
    ("sparsity.n", 5, "sparsity.n"),
    ("sparsity.m", 6, "models.xs.hidden_size"),
    ("sparsity.targets", ["(unclosed"], "sparsity.targets.0"),
    ("methods.cast.eta", 1.5, "methods.cast.eta"),
    ("methods.cast.lambda", -1e-4, "methods.cast.lambda"),
    ("methods.cast.algorithm", "magic", "methods.cast.algorithm"),
    ("methods.cast.t1", 0, "methods.cast.t1"),
    ("methods.cast.alpha_indexing", "alg3", "methods.cast.alpha_indexing"),
    ("methods.cast.typo_key", 1, "methods.cast"),
    ("run.sizes", ["xl"], "run.sizes.0"),
    ("run.methods", ["wizard"], "run.methods.0"),
    ("run.budgets", ["64k", "16k"], "run.budgets"),
    ("run.budgets", ["-5"], "run.budgets.0"),
    ("run.method_sizes", {"srste": ["xs"]}, "run.method_sizes.srste"),  # not in run.methods
    ("run.method_sizes", {"magnitude": ["xl"]}, "run.method_sizes.magnitude.0"),
    ("run.method_sizes", {"cast": ["xs"]}, "run.method_sizes.cast"),  # the scaling-law method needs every size
    ("run.method_sizes", {"magnitude": []}, "run.method_sizes.magnitude"),
    ("quantize.methods", ["srste"], "quantize.methods"),
    ("finetune.methods", ["srste"], "finetune.methods"),
    ("models.xs.num_heads", 3, "models.xs.num_heads"),
    ("models.xs.hidden_size", "big", "models.xs.hidden_size"),
    ("models.xs.pretrained", "some/model", "models.xs"),
    ("evaluate.ppl_seqlens", [1024], "evaluate.ppl_seqlens.0"),
    ("data.source", "web", "data.source"),
    ("data.source", "hf", "data.hf.path"),
    ("data.test_fraction", 0.7, "data.test_fraction"),
    ("data.files", ["/nonexistent/corpus.txt"], "data.files"),
    ("experiment", "bad name!", "experiment"),
    ("unknown_section", 1, "unknown_section"),
    ("threads", 0, "threads"),
    ("run", _DELETE, "run"),
]


@pytest.mark.parametrize("path,value,needle", BAD, ids=[f"{p}={v!r}"[:40] for p, v, _ in BAD])
def test_bad_config_names_the_key(micro_raw, path, value, needle):
    raw = copy.deepcopy(micro_raw)
    if path == "data.files":
        raw["data"]["source"] = "files"
    _set(raw, path, value)
    with pytest.raises(ConfigError) as err:
        resolve_config(raw)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_defaults_filled_and_budgets(micro_cfg):
    assert micro_cfg["train"]["betas"] == [0.9, 0.999]
    assert micro_cfg["methods"]["cast"]["scaling_blocks"] == 2
    assert micro_cfg["methods"]["magnitude"]["calib_samples"] == 128
    assert parse_tokens("256k") == 256_000 and parse_tokens("1.5M") == 1_500_000 and parse_tokens(7) == 7


def test_lambda_rule_scales_with_budget(micro_raw):
    micro_raw["lambda_rule"] = {"reference_tokens": "16k", "exponent": -0.5}
    cfg = resolve_config(micro_raw)
    lam = cfg["methods"]["cast"]["lambda"]
    assert lambda_for_budget(cfg, "cast", "16k") == pytest.approx(lam)
    assert lambda_for_budget(cfg, "cast", "64k") == pytest.approx(lam / 2)


@pytest.mark.parametrize("path,value,needle", [
    ("teacher.lr", "fast", "teacher.lr"),
    ("methods.cast.eta", 2.0, "methods.cast.eta"),
    ("run.sizes", ["xl"], "run.sizes.0"),
    ("data.files", ["/nonexistent/corpus.txt"], "data.files.0"),
])
def test_snakemake_stops_before_any_job(tmp_path, micro_raw, path, value, needle):
    raw = copy.deepcopy(micro_raw)
    if path == "data.files":
        raw["data"]["source"] = "files"
    _set(raw, path, value)
    cfgfile = tmp_path / "bad.yaml"
    cfgfile.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "1",
                           "--configfile", str(cfgfile), "--directory", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if needle in ln]
    assert lines and lines[0].startswith("cast: invalid config: config key")
    assert not (tmp_path / "results").exists()  # no job ran, nothing written


def test_method_sizes_restrict_the_dag(tmp_path, micro_raw):
    """run.method_sizes drops a method's other sizes from the DAG (and from the variants built on it)."""
    def planned(raw):
        cfgfile = tmp_path / "cfg.yaml"
        cfgfile.write_text(yaml.safe_dump(raw))
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
                               "--configfile", str(cfgfile), "--directory", str(tmp_path)],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return set(re.findall(r"output: \S*?/((?:xs|s)/\w+/\w+)/model,", proc.stdout))

    raw = copy.deepcopy(micro_raw)
    raw["results_dir"] = str(tmp_path / "results")
    every = planned(raw)
    assert {"xs/magnitude/0", "s/magnitude/0"} <= every
    raw["run"]["method_sizes"] = {"magnitude": ["s"]}
    assert every - planned(raw) == {"xs/magnitude/0"}


def test_runtime_only_keys_leave_fingerprints_alone(micro_cfg):
    """train.malloc and checkpoint_every change how a job runs, not its result: no rerun, and its
    checkpoints stay usable; a key that changes the result changes the fingerprint."""
    def fp(cfg):
        return config_hash({k: result_section(cfg, k) for k in ("train", "teacher", "finetune", "sparsity")})

    base = fp(micro_cfg)
    for section, key, value in [("train", "malloc", "system"), ("train", "checkpoint_every", 7),
                                ("teacher", "checkpoint_every", 3), ("finetune", "checkpoint_every", 5)]:
        cfg = copy.deepcopy(micro_cfg)
        cfg[section][key] = value
        assert fp(cfg) == base, (section, key)
    cfg = copy.deepcopy(micro_cfg)
    cfg["train"]["lr"] *= 2
    assert fp(cfg) != base
