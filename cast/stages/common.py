"""Helpers every stage shares: threads/seed/device set-up, the accelerator, data and model paths."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import load_tokenizer, load_tokens
from ..models import load_model, pick_device
from ..train import retain_freed_host_memory


def setup(cfg: dict, precision: str = "no"):
    """Seed, thread count, the CPU allocator (train.malloc) and an accelerate Accelerator (device,
    DDP, autocast)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    torch.set_num_threads(cfg["threads"])
    set_seed(cfg["seed"])
    cpu = pick_device(cfg["device"]).type == "cpu"
    if cpu and cfg["train"]["malloc"] == "retain":
        retain_freed_host_memory()
    return Accelerator(cpu=cpu, mixed_precision=precision)


def tokenizer_of(data_dir: str | Path, cfg: dict):
    return load_tokenizer(str(Path(data_dir) / "tokenizer"), cfg["trust_remote_code"])


def train_tokens(data_dir: str | Path):
    return load_tokens(data_dir, "train")


def load_dense(model_dir: str | Path, cfg: dict, dtype=torch.float32):
    return load_model(str(model_dir), dtype=dtype, trust_remote_code=cfg["trust_remote_code"])

