"""`cast evaluate`: perplexity (and, when configured, zero-shot) of any exported model directory."""
from __future__ import annotations

import time
from pathlib import Path

from ..data import load_tokens
from ..models import load_model, pick_device
from .data import dataset_name


def ppl_key(cfg: dict, seqlen: int) -> str:
    return f"ppl/{dataset_name(cfg)}_{cfg['evaluate']['ppl_split']}/s{seqlen}"


def run(cfg: dict, model_dir: str | Path, data_dir: str | Path) -> dict:
    import torch

    from ..evaluate import perplexity

    torch.set_num_threads(cfg["threads"])
    t0 = time.time()
    dev = pick_device(cfg["device"])
    model = load_model(str(model_dir), trust_remote_code=cfg["trust_remote_code"]).to(dev)
    tokens = load_tokens(data_dir, cfg["evaluate"]["ppl_split"])
    metrics, details = {}, {}
    for s in cfg["evaluate"]["ppl_seqlens"]:
        r = perplexity(model, tokens, s, cfg["evaluate"]["batch_size"], dev)
        key = ppl_key(cfg, s)
        metrics[key] = r["ppl"]
        details[key] = r
    return {"metrics": metrics, "details": details, "wall_s": time.time() - t0}
