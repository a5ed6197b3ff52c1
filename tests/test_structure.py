"""One place per concept: the method registry, the results layout, the job slices, the error family,
the package as shipped (a wheel installed elsewhere) and the public API the README names."""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from cast import methods
from cast.config import load_schema, resolve_config
from cast.jobs import fingerprint, job_config
from cast.layout import BASE_RE, PREFIX_RE, Layout, Prefix, budget_label, parse_tokens, sparse, teacher

REPO = Path(__file__).resolve().parents[1]


# -- the method registry ----------------------------------------------------------------------------
def test_every_list_of_methods_is_the_registry():
    names = list(methods.REGISTRY)
    assert load_schema()["$defs"]["method"]["properties"]["algorithm"]["enum"] == names
    doc = (REPO / "config" / "README.md").read_text()
    for name, m in methods.REGISTRY.items():
        assert m.kind in methods.KINDS
        assert callable(m.load()), name  # "module:function" resolves
        assert re.search(rf"`{name}`", doc), f"config/README.md does not document method {name}"
        for key in m.keys:
            assert re.search(rf"`{key}`", doc), f"config/README.md does not document {name}'s key {key}"


def test_registry_import_needs_no_torch():
    code = "import sys, cast.methods, cast.config, cast.layout, cast.jobs, cast.stages; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_a_method_accepts_only_its_own_keys(micro_raw):
    micro_raw["methods"]["magnitude"]["lambda"] = 1e-3  # magnitude has no decay
    with pytest.raises(ValueError, match=r"methods.magnitude.*'lambda' was unexpected.*allowed keys: algorithm$"):
        resolve_config(micro_raw)


def test_unknown_algorithm_lists_the_registered_ones(micro_raw):
    micro_raw["methods"]["cast"]["algorithm"] = "magic"
    with pytest.raises(ValueError, match=r"methods.cast.algorithm.*'magic' is not one of \['cast', 'srste'"):
        resolve_config(micro_raw)
    with pytest.raises(ValueError, match=r"unknown method algorithm 'magic'; known: cast, srste"):
        methods.get("magic")


# -- the results layout -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["xs/teacher", "xs/cast/256k", "m/magnitude/0", "s/cast/1.5M_r2",
                                  "xs/cast/256k/finetune/news", "xs/teacher/finetune/news/quant/int4",
                                  "xs/cast/7.86432G_r1/quant/gptq4"])
def test_prefixes_round_trip(text):
    p = Prefix.parse(text)
    assert str(p) == text and re.fullmatch(PREFIX_RE, text)
    assert str(p.base) == text.split("/finetune")[0].split("/quant")[0] and re.fullmatch(BASE_RE, str(p.base))


@pytest.mark.parametrize("bad", ["xs", "xs/cast", "xs/cast/lots", "xs/cast/256k/quant", "xs/cast/256k/other/x"])
def test_bad_prefixes_are_refused(bad):
    with pytest.raises(ValueError, match="not a model folder"):
        Prefix.parse(bad)


def test_layout_paths_and_prefix_of(tmp_path):
    L = Layout(tmp_path)
    p = sparse("xs", "cast", 256000, replicate=1)
    assert L.model(p) == tmp_path / "xs/cast/256k_r1/model" and L.eval(teacher("s")) == tmp_path / "s/teacher/eval.json"
    assert L.prefix_of(tmp_path / "xs/cast/256k_r1/quant/int4/eval.json") == p.quantized("int4")
    assert L.checkpoint(teacher("xs")) == tmp_path / "xs/teacher/.ckpt"


@pytest.mark.parametrize("value,label", [(1000000, "1M"), ("1e6", "1M"), (1.0e6, "1M"), ("1.0e+6", "1M"), ("1M", "1M"),
                                         ("1000k", "1M"), (256000, "256k"), (7864320000, "7.86432G"), (500, "500"),
                                         ("1.5M", "1.5M"), (2048, "2.048k"), (0, "0")])
def test_one_canonical_budget_label_per_value(value, label):
    assert budget_label(value) == label and parse_tokens(label) == parse_tokens(value)


@pytest.mark.parametrize("bad", ["lots", "1.5", "1e-3", -5, True, "2.5k7"])
def test_bad_budgets_list_the_accepted_forms(bad):
    with pytest.raises(ValueError, match=r"accepted forms: an integer \(500000\), a decimal with a suffix"):
        parse_tokens(bad)


# -- what a job depends on ------------------------------------------------------------------------------
def test_grid_selection_never_changes_a_job(micro_cfg):
    jobs = [("sparsify", {"size": "xs", "method": "cast", "budget": "16k"}), ("sparsify", {"size": "xs", "method": "magnitude"}),
            ("finetune", {"dataset": "news", "base": "xs/cast/16k"}), ("quantize", {"scheme": "int8", "base": "xs/teacher"}),
            ("evaluate", {"prefix": "xs/cast/16k"}), ("teacher", {"size": "xs"})]
    before = {i: fingerprint(micro_cfg, stage, **w) for i, (stage, w) in enumerate(jobs)}
    grid = copy.deepcopy(micro_cfg)
    grid["run"]["sizes"], grid["run"]["budgets"] = ["xs"], ["16k", "64k"]
    grid["finetune"]["sizes"], grid["quantize"]["sizes"] = ["xs", "s"], ["s"]
    grid["finetune"]["apply_to"] = ["sparse"]
    grid["quantize"]["schemes"]["int4"] = {"method": "rtn", "bits": 4, "group_size": 32, "calib_samples": 1,
                                           "percdamp": 0.01, "blocksize": 128}
    grid["train"]["malloc"], grid["train"]["checkpoint_every"] = "system", 3  # runtime only
    grid["zeroshot"]["on_variants"] = True  # only variants' evaluation depends on it
    assert {i: fingerprint(grid, stage, **w) for i, (stage, w) in enumerate(jobs)} == before
    for stage, w, key, value in (("sparsify", jobs[0][1], "train.lr", 5e-3), ("finetune", jobs[2][1], "finetune.lr", 1e-4),
                                 ("quantize", jobs[3][1], "seed", 7), ("evaluate", jobs[4][1], "evaluate.batch_size", 3)):
        changed = copy.deepcopy(micro_cfg)
        section, _, leaf = key.rpartition(".")
        (changed[section] if section else changed)[leaf] = value
        assert fingerprint(changed, stage, **w) != fingerprint(micro_cfg, stage, **w), key


def test_one_shot_jobs_depend_only_on_what_they_use(micro_cfg):
    cfg = copy.deepcopy(micro_cfg)
    before = fingerprint(cfg, "sparsify", size="xs", method="magnitude", budget="0")
    cfg["train"]["lr"] = 1.0  # training settings: irrelevant to magnitude pruning
    cfg["methods"]["cast"]["lambda"] = 1.0
    assert fingerprint(cfg, "sparsify", size="xs", method="magnitude", budget="0") == before
    assert set(job_config(cfg, "sparsify", size="xs", method="magnitude")) == {"method", "sparsity", "seed", "replicate",
                                                                              "calib_seqlen"}


# -- errors -------------------------------------------------------------------------------------------
def test_cli_prints_expected_errors_as_one_line_and_keeps_tracebacks_of_bugs(micro_data, tmp_path, monkeypatch, capsys):
    from cast import cli
    from cast.stages import data as data_stage

    cfg, _ = micro_data
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump({**cfg, "results_dir": str(tmp_path / "r")}))
    argv = ["data", "--config", str(cfgfile), "--out", str(tmp_path / "d"), "--result", str(tmp_path / "d.json")]
    from cast.errors import InputError

    def expected(*_a, **_k):
        raise InputError("corpus file not found: /x.txt")

    monkeypatch.setattr(data_stage, "run", expected)
    assert cli.main(argv) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert errors == ["cast data: error: corpus file not found: /x.txt"]

    def bug(*_a, **_k):
        raise ValueError("a library bug")

    monkeypatch.setattr(data_stage, "run", bug)
    with pytest.raises(ValueError, match="a library bug"):  # not swallowed into a one-liner
        cli.main(argv)


def test_every_subcommand_has_a_description_an_example_and_help_on_every_flag():
    from cast.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    for name, p in sub.choices.items():
        assert "example:" in p.description and f"cast {name}" in p.description, name
        for action in p._actions:
            assert action.help, f"cast {name} {action.option_strings}: no help"
    out = subprocess.run([sys.executable, "-m", "cast.cli", "--version"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and re.fullmatch(r"cast \d+\.\d+\.\d+", out.stdout.strip())


# -- the package as shipped ------------------------------------------------------------------------------
def test_readme_api_names_import():
    import importlib

    text = (REPO / "README.md").read_text()
    names = re.findall(r"`(cast(?:\.[a-z_]+)+)\.([A-Za-z_]+)`", text)
    assert len(names) >= 5
    for module, name in names:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name} (README)"
    from cast.optim import AdamS  # noqa: F401 - the README's first API example


@pytest.mark.slow
def test_wheel_installs_and_validates_outside_the_repository(tmp_path):
    """A non-editable install: schema and task templates ship inside the package."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=600)
    (whl,) = wheels.glob("cast_sparse-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert "cast/resources/config.schema.yaml" in names and "cast/resources/tasks/cast_mc.yaml" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(whl)], check=True, timeout=300)
    site = next((venv / "lib").glob("python3*/site-packages"))
    here = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "yaml").is_dir())
    (site / "deps.pth").write_text(f"{here}\n")  # yaml, jsonschema from this environment (appended: ours first)
    cfg = tmp_path / "micro.yaml"
    cfg.write_text((REPO / "config" / "test.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(venv / "bin" / "cast"), "validate", "--config", str(cfg)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert yaml.safe_load(out.stdout)["methods"]["cast"]["scaling_blocks"] == 2
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import cast; print(cast.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path, env=env, check=True).stdout
    assert where.startswith(str(site)) and str(REPO) not in where  # the installed copy, not the checkout
