"""Shared fixtures: offline environment, tiny models, the micro config, one shared data stage."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CAST_NO_TQDM", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests never log to a developer's tracking server
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def micro_raw(tmp_path) -> dict:
    """The micro config as a raw dict, results redirected into tmp_path."""
    raw = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    raw["results_dir"] = str(tmp_path / "results")
    return raw


@pytest.fixture
def micro_cfg(micro_raw) -> dict:
    from cast.config import resolve_config

    return resolve_config(micro_raw)


# `make test` runs two pytest-xdist workers, one test file each at a time (--dist loadfile), in this
# order (--no-loadscope-reorder: xdist would otherwise start with the files holding the most tests,
# and these few long ones came last): the longest end-to-end files first, so that the rest fill the
# other worker meanwhile. (Three workers on the two cores were slower: 816 s against 660 s, more CPU
# lost to contention.)
FIRST = ("test_pipeline.py", "test_slurm.py", "test_readme.py", "test_fsdp.py", "test_resume.py", "test_faults.py",
         "test_ddp.py", "test_jobserver.py", "test_plan.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: the order within a file is kept


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory) -> tuple[dict, Path]:
    """The data stage of the micro config, run once per session: (resolved cfg, data dir)."""
    from cast.config import resolve_config
    from cast.stages import data

    root = tmp_path_factory.mktemp("micro")
    raw = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    raw["results_dir"] = str(root / "results")
    cfg = resolve_config(raw)
    out = root / "results" / "data"
    data.run(cfg, out)
    return copy.deepcopy(cfg), out


def tiny_llama(vocab=64, hidden=16, layers=1, heads=2, inter=32, seed=0):
    from cast.models import build_llama

    return build_llama({"hidden_size": hidden, "num_layers": layers, "num_heads": heads,
                        "intermediate_size": inter, "max_position_embeddings": 64}, vocab, seed=seed)


@pytest.fixture
def llama_factory():
    return tiny_llama


@pytest.fixture
def micro_teacher(micro_data, tmp_path) -> Path:
    """An untrained xs LLaMA of the micro config saved with the micro tokenizer (a stand-in teacher)."""
    from cast.data import load_tokenizer
    from cast.models import build_llama, save_model

    cfg, data = micro_data
    tok = load_tokenizer(str(data / "tokenizer"))
    return save_model(build_llama(cfg["models"]["xs"], len(tok), tok, seed=0), tok, tmp_path / "teacher")


@pytest.fixture(scope="session")
def repo_clone(tmp_path_factory) -> Path:
    """A copy of the repository as a clone has it (tracked and untracked, not ignored, files): the
    place to run a documented command verbatim from the repository root without touching this one."""
    import shutil
    import subprocess

    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    root = tmp_path_factory.mktemp("clone") / "cast"
    for f in filter(None, files):
        if (REPO / f).is_file():
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, root / f)
    return root


def user_env(**extra) -> dict:
    """The environment of a user who activated the virtualenv (`source .venv/bin/activate`): its
    console scripts (snakemake, cast, lm_eval) first on PATH; offline."""
    import sys

    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", "CAST_NO_TQDM": "1",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}
