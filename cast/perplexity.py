"""Perplexity with the WikiText-2 protocol the peers use."""
from __future__ import annotations

import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from .data import blocks


@torch.no_grad()
def perplexity(model, tokens: np.ndarray, seqlen: int, batch_size: int = 8, device="cpu", desc: str | None = None) -> dict:
    """Joined split, tokenized once, cut into non-overlapping windows of seqlen (remainder dropped);
    each window predicts its tokens 2..seqlen; ppl = exp(mean token NLL)."""
    from tqdm.auto import tqdm

    windows = blocks(tokens, seqlen)
    model.eval()
    nll_sum, count = 0.0, 0
    for i in tqdm(range(0, len(windows), batch_size), desc=desc or f"ppl s{seqlen}", mininterval=2.0, disable=desc == ""):
        ids = torch.from_numpy(np.asarray(windows[i:i + batch_size], dtype=np.int64)).to(device)
        logits = model(ids).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        nll_sum += float(nll)
        count += ids[:, 1:].numel()
    mean = nll_sum / count
    return {"ppl": math.exp(mean), "nll": mean, "windows": int(len(windows)), "tokens": int(count)}


@torch.no_grad()
def forward_ms(model, ids: torch.Tensor, runs: int = 5) -> float:
    """Median wall time (ms) of `runs` forwards after one warm-up, eval mode, no KV cache."""
    was = model.training
    model.eval()
    model(ids, use_cache=False)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(ids, use_cache=False)
        times.append((time.perf_counter() - t0) * 1e3)
    model.train(was)
    return statistics.median(times)
