"""The training loop shared by the teacher, sparsify and finetune stages (nanoGPT-style, readable
top to bottom). accelerate supplies device placement, DDP and mixed precision; checkpoints are our
own small format so that loading never unpickles (torch.load(weights_only=True))."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import blocks
from .errors import TrainingDiverged
from .io import atomic_dir

__all__ = ["TrainingDiverged", "BlockSampler", "train", "steps_for_budget", "make_scheduler"]


class BlockSampler:
    """Deterministic batches: step s reads blocks from a seeded per-epoch permutation, so a resumed
    run sees exactly the data an uninterrupted one would (the data position is the step)."""

    def __init__(self, tokens: np.ndarray, seqlen: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.blocks = blocks(tokens, seqlen)
        if len(self.blocks) < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {len(self.blocks)} blocks of {seqlen} tokens in the train split")
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {world} processes")
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.per_epoch = len(self.blocks) // batch_size

    def indices(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))
        idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
        local = self.batch_size // self.world
        return idx[self.rank * local:(self.rank + 1) * local]

    def batch(self, step: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.blocks[self.indices(step)], dtype=np.int64))


def retain_freed_host_memory() -> bool:
    """glibc malloc: serve every block from the heap (no mmap per large block) and never trim it.
    By default each tensor over 32 MB (the default run's 16 x 128 x 4096 logits are 33.5 MB) gets
    fresh pages from the kernel and returns them when freed, so every step pays ~40-65k page
    faults; with this, freed blocks are reused and the resident size stays at its peak (config
    train.malloc: retain). Measured CAST and dense CPU steps (benchmarks/bench_adams.py) get ~25-35%
    faster and their timings steady, at the same peak resident size. The cost: torch's aligned
    blocks are only reused once glibc has coalesced their slack, so a loop of one large size can
    strand up to ~8 such blocks first (a 64 MB-tensor loop: 733 vs 285 MB peak). False where this
    is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError, TypeError):
        return False


def steps_for_budget(tokens: int, batch_size: int, seqlen: int) -> int:
    return max(1, tokens // (batch_size * seqlen))


def make_scheduler(optimizer, kind: str, warmup: int, total: int, min_lr_ratio: float):
    from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    warmup = min(warmup, max(0, total - 1))
    if kind == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr_rate=min_lr_ratio)


# -- checkpoints ---------------------------------------------------------------------------------
def save_checkpoint(ckpt_dir: Path, step: int, model, optimizer, scheduler, fingerprint: str = "") -> None:
    """Atomic: written to a temporary folder, then renamed over the previous checkpoint."""
    from safetensors.torch import save_file

    with atomic_dir(ckpt_dir) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        (tmp / "step.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint}))


def load_checkpoint(ckpt_dir: Path, model, optimizer, scheduler) -> int:
    """Restore model, optimizer (moments, masks, step) and scheduler; returns the steps done."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(ckpt_dir / "model.safetensors")))
    st = torch.load(ckpt_dir / "optim.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    return json.loads((ckpt_dir / "step.json").read_text())["step"]


class OwnCheckpoints:
    """The checkpointer of whole-tensor training (one process, DDP): the main process writes
    save_checkpoint's format. Sharded training uses cast.checkpointing.DCPCheckpoints."""
    tag = ""  # appended to the job fingerprint in step.json (none: checkpoints of earlier versions resume)

    def save(self, ckpt_dir, step, model, optimizer, scheduler, fingerprint, accelerator) -> None:
        if accelerator.is_main_process:
            save_checkpoint(ckpt_dir, step, accelerator.unwrap_model(model), optimizer, scheduler, fingerprint)

    def load(self, ckpt_dir, model, optimizer, scheduler, accelerator) -> int:
        return load_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer, scheduler)


# -- the loop ------------------------------------------------------------------------------------
def train(model, optimizer, scheduler, sampler: BlockSampler, total_steps: int,
          loss_fn: Callable, *, accelerator, grad_clip: float = 0.0, grad_accum: int = 1,
          ckpt_dir: str | Path | None = None, ckpt_every: int = 0, log_every: int = 10,
          on_log: Callable | None = None, stats_fn: Callable | None = None, desc: str = "train",
          fingerprint: str = "", checkpointer=None, after_backward: Callable | None = None,
          should_stop: Callable | None = None) -> dict:
    """Run steps [resume point, total_steps). loss_fn(model, input_ids) -> (loss, {name: tensor}).
    A checkpoint in ckpt_dir is resumed only if it was written by the same job (fingerprint of its
    config) in the checkpointer's format; otherwise it is discarded. checkpointer: the strategy's
    (cast.distributed; default OwnCheckpoints); after_backward: called once the step's gradients
    are complete, before clipping; should_stop(steps_done) -> True ends the run early (e.g. a
    plateaued validation loss, cast.plateau). Every log_every steps on_log(step, metrics) gets the
    loss parts (train/loss, train/ce, ...) as window means, averaged over the steps since the
    previous log (as common trainers log them: one batch's loss is noise), plus the lr, throughput
    and stats_fn's values at that step. Returns the last log's metrics with the loss parts of its
    final batch."""
    ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
    checkpointer = checkpointer or OwnCheckpoints()
    start = 0
    if ckpt_dir and (ckpt_dir / "step.json").exists() and \
            json.loads((ckpt_dir / "step.json").read_text()).get("fingerprint", "") != fingerprint + checkpointer.tag:
        accelerator.print(f"ignoring checkpoint {ckpt_dir}: written with another config")
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if ckpt_dir and (ckpt_dir / "step.json").exists():
        start = checkpointer.load(ckpt_dir, model, optimizer, scheduler, accelerator)
        accelerator.print(f"resumed from {ckpt_dir} at step {start}/{total_steps}")
    params = [p for p in model.parameters() if p.requires_grad]
    last, t0, tokens = {}, time.time(), 0
    window, window_steps = {}, 0  # loss parts summed since the previous log
    bar = tqdm(range(start, total_steps), initial=start, total=total_steps, desc=desc, mininterval=2.0,
               disable=not accelerator.is_main_process or os.environ.get("CAST_NO_TQDM") == "1")
    for step in bar:
        batch = sampler.batch(step).to(accelerator.device)
        sums: dict[str, float] = {}
        for i, micro in enumerate(batch.chunk(grad_accum)):
            sync = i == grad_accum - 1
            ctx = accelerator.no_sync(model) if not sync and accelerator.num_processes > 1 else nullcontext()
            with ctx, accelerator.autocast():
                loss, parts = loss_fn(model, micro)
                accelerator.backward(loss / grad_accum)
            for k, v in {"loss": loss.detach(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v) / grad_accum
        if not math.isfinite(sums["loss"]):
            where = f"; the last good checkpoint is kept in {ckpt_dir}" if ckpt_dir and (ckpt_dir / "step.json").exists() else ""
            raise TrainingDiverged(f"non-finite loss ({sums['loss']}) at step {step + 1}: training stopped{where}")
        if after_backward is not None:
            after_backward()
        gnorm = accelerator.clip_grad_norm_(params, grad_clip) if grad_clip else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch.numel() * accelerator.num_processes
        for k, v in sums.items():
            window[k] = window.get(k, 0.0) + v
        window_steps += 1
        done = step + 1
        stop = should_stop is not None and should_stop(done)
        if done % log_every == 0 or done == total_steps or stop:
            last = {**{f"train/{k}": v for k, v in sums.items()}, "train/lr": scheduler.get_last_lr()[0],
                    "train/tokens_per_s": tokens / max(time.time() - t0, 1e-9)}
            if gnorm is not None:
                last["train/grad_norm"] = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
            if stats_fn is not None:
                last.update(stats_fn(done))
            means = {f"train/{k}": v / window_steps for k, v in window.items()}
            window, window_steps = {}, 0
            bar.set_postfix(loss=f"{means['train/loss']:.3f}")
            if on_log is not None and accelerator.is_main_process:
                on_log(done, {**last, **means})
        if ckpt_dir and ckpt_every and done % ckpt_every == 0 and done < total_steps:
            checkpointer.save(ckpt_dir, done, model, optimizer, scheduler, fingerprint, accelerator)
        if stop:
            break
    return last



def train_method(model, optimizer, scheduler, sampler: BlockSampler, total_steps: int, loss_fn: Callable, *,
                 tcfg: dict, accelerator, ckpt_dir, tracker, stats: Callable, method: str, fingerprint: str,
                 **kw) -> tuple[dict, list[dict]]:
    """`train` as a sparse-training method runs it: the train.* keys (grad_clip, grad_accum,
    checkpoint_every, log_every), metrics logged on the job's MLflow run, and stats(step) -> {name:
    value} at every log, also kept as the run's history. Returns (last metrics, history)."""
    history = []

    def stats_fn(done):
        st = stats(done)
        history.append({"step": done, **st})
        return st

    last = train(model, optimizer, scheduler, sampler, total_steps, loss_fn, accelerator=accelerator,
                 grad_clip=tcfg["grad_clip"], grad_accum=tcfg["grad_accum"], ckpt_dir=ckpt_dir,
                 ckpt_every=tcfg["checkpoint_every"], log_every=tcfg["log_every"],
                 on_log=(lambda step, metrics: tracker.log_metrics(metrics, step)) if tracker else None,
                 stats_fn=stats_fn, desc=method, fingerprint=fingerprint, **kw)
    return last, history
