"""Config validation: every bad value is named by its key path, before any job runs."""
import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cast.config import ConfigError, config_hash, lambda_for_budget, parse_tokens, resolve_config
from cast.jobs import section as result_section

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


# Rules that used to fail only inside a job (or never): all at config time now, so `snakemake -n` stops on them.
CONFIG_TIME = [
    ("finetune.datasets", {"web": {"source": "hf"}}, "finetune.datasets.web.path"),
    ("finetune.datasets", {"qa": {"source": "files", "files": ["/nonexistent/qa.jsonl"]}}, "finetune.datasets.qa.files.0"),
    ("finetune.datasets", {"qa": {"source": "gensim_news", "prompt_column": "q"}}, "finetune.datasets.qa.response_column"),
    ("finetune.seqlen", 256, "finetune.seqlen"),  # beyond the presets' 128 positions
    ("methods.sparsegpt.blocksize", 6, "methods.sparsegpt.blocksize"),
    ("methods.sparsegpt.calib_seqlen", 512, "methods.sparsegpt.calib_seqlen"),
    ("zeroshot.tasks", ["cast_mcq"], "zeroshot.tasks"),
    ("quantize.sizes", ["m"], "quantize.sizes.0"),
    ("finetune.sizes", ["xs", "m"], "finetune.sizes.1"),
    ("scaling_law.method", "magnitude", "scaling_law.method"),
    ("run.sweep_methods", ["cast", "magnitude"], "run.sweep_methods.1"),
    ("train.processes", 3, "train.batch_size"),
    ("train.grad_accum", 3, "train.grad_accum"),
    ("methods.magnitude.lambda", 1e-3, "methods.magnitude"),
    ("run.budgets", ["1e6", "1000k"], "run.budgets"),  # one token count twice
    ("run.budgets", ["16 thousand"], "accepted forms"),
    ("zeroshot.sizes", ["l"], "zeroshot.sizes.0"),
    ("run.group", "method", "run.group"),  # with train.processes > 1 (set below)
    ("evaluate.shards", 0, "evaluate.shards"),
    ("run.group", {"xl": "size"}, "run.group.xl"),  # a per-size setting for a size not in `models`
    ("evaluate.shards", {"m": 2}, "evaluate.shards.m"),
]


@pytest.mark.parametrize("path,value,needle", CONFIG_TIME, ids=[f"{p}={v!r}"[:40] for p, v, _ in CONFIG_TIME])
def test_job_time_failures_are_config_time(micro_raw, path, value, needle):
    raw = copy.deepcopy(micro_raw)
    if path.startswith("methods.sparsegpt"):
        raw["run"]["methods"].append("sparsegpt")
    if path == "run.group":
        raw["train"].update(processes=2, batch_size=8)
    _set(raw, path, value)
    with pytest.raises(ConfigError) as err:
        resolve_config(raw)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_builtin_task_is_named_with_close_matches(micro_raw):
    micro_raw["zeroshot"]["tasks"] = ["hellaswag", "arc_easyy"]
    with pytest.raises(ConfigError, match=r"zeroshot.tasks.*'arc_easyy'.*did you mean arc_easy"):
        resolve_config(micro_raw)


def test_pretrained_checkpoint_is_not_trained(micro_raw, tmp_path, llama_factory):
    from cast.models import save_model

    save_model(llama_factory(), None, tmp_path / "ckpt")
    micro_raw["models"]["xs"] = {"pretrained": str(tmp_path / "ckpt"), "tokens": "1M"}
    with pytest.raises(ConfigError, match="models.xs.tokens"):
        resolve_config(micro_raw)
    del micro_raw["models"]["xs"]["tokens"]
    micro_raw["finetune"]["seqlen"] = 65  # tiny_llama: 64 positions
    with pytest.raises(ConfigError, match=r"finetune.seqlen.*65 exceeds max_position_embeddings=64 of models.xs"):
        resolve_config(micro_raw)


@pytest.mark.parametrize("path,value,needle", BAD, ids=[f"{p}={'<deleted>' if v is _DELETE else repr(v)}"[:40] for p, v, _ in BAD])
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
    assert micro_cfg["methods"]["sparsegpt"]["calib_samples"] == 16 and micro_cfg["methods"]["sparsegpt"]["blocksize"] == 128
    assert micro_cfg["methods"]["magnitude"] == {"algorithm": "magnitude"}  # each method holds only its own keys
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
    ("finetune.seqlen", 256, "finetune.seqlen"),
    ("zeroshot.tasks", ["cast_mcq"], "zeroshot.tasks"),
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
