"""Sparse training cases for tests/test_fsdp.py, run as a script: under torchrun each case trains
with the fsdp2 strategy (gloo, CPU), without it in one process (ddp, the reference). Each case
writes the exported model's state dict to OUT/<case>.safetensors.

    python tests/fsdp_cases.py OUT llama-cast-foreach gpt2-srste-foreach ...
    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_cases.py OUT ...

A case is ARCH-METHOD-IMPL[-ckpt]: ARCH llama (nn.Linear) or gpt2 (Conv1D), METHOD cast or srste,
IMPL foreach or compiled (AdamS), -ckpt with activation checkpointing. Tiny models, synthetic
tokens, no file but the outputs.
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tiny(arch: str, wide: bool = False, seed: int = 0):
    """wide: every local shard of the weights is large enough for the compiled kernels (fused.MIN_NUMEL)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from cast.models import build_llama

    h = 128 if wide else 16
    if arch == "llama":
        return build_llama({"hidden_size": h, "num_layers": 2, "num_heads": 2, "intermediate_size": 2 * h if wide else 40,
                            "max_position_embeddings": 64}, 96, seed=seed)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=h, n_layer=2, n_head=2, n_positions=64, bos_token_id=0,
                                      eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))  # deterministic


def config(impl: str) -> dict:
    from cast.config import resolve_config

    raw = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    # eps 1e-6: GPT-2's key bias has an exactly-zero gradient (softmax ignores a constant per query),
    # whose rounding noise Adam with eps 1e-8 turns into lr-sized steps that differ between any two
    # summation orders
    raw["train"] = {"seqlen": 16, "batch_size": 4, "grad_accum": 2, "lr": 5e-3, "warmup_steps": 2, "eps": 1e-6,
                    "checkpoint_every": 0, "log_every": 3, "optimizer_impl": impl}
    raw["methods"]["cast"]["t1"] = raw["methods"]["srste"]["t1"] = 4
    return resolve_config(raw)


def run_case(case: str, out: Path, sharded: bool) -> None:
    from cast import distributed
    from cast.config import method_config
    from cast.methods.cast_train import train_cast, train_srste
    from cast.sparsity import find_targets
    from cast.stages.common import setup

    arch, method, impl, *ckpt = case.split("-")
    cfg = config(impl)
    acc = setup(cfg)
    model = tiny(arch, wide=impl == "compiled")
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    sp = cfg["sparsity"]
    targets = find_targets(model, sp["targets"], sp["exclude"], sp["m"])
    tokens = np.random.default_rng(0).integers(0, 96, 16 * 4 * 12, dtype=np.int64)
    strat = distributed.strategy("fsdp2" if sharded else "ddp", acc, activation_checkpointing=bool(ckpt))
    fn = train_cast if method == "cast" else train_srste
    info = fn(model, targets, cfg, method_config(cfg, method), teacher=teacher, tokens=tokens, budget=16 * 4 * 10,
              method=method, accelerator=acc, strategy=strat)
    if impl == "compiled":  # the compiled kernels ran, not the fallback
        from cast.optim import fused

        assert fused.available() and any(k[0] == "adams" for k in fused._worked), fused._worked
    exported = info["model"]
    if exported is not None:
        from safetensors.torch import save_file

        stats = info["history"][-1]
        sd = {k: v.detach().contiguous().clone() for k, v in exported.state_dict().items()}
        sd["stats"] = torch.tensor([stats.get("mask/masked_over_kept", 0.0), stats.get("scale/mean", 0.0)], dtype=torch.float64)
        save_file(sd, str(out / f"{case}.safetensors"))
    acc.wait_for_everyone()


def main() -> None:
    out, cases = Path(sys.argv[1]), sys.argv[2:]
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    sharded = "LOCAL_RANK" in os.environ
    for case in cases:
        run_case(case, out, sharded)


if __name__ == "__main__":
    main()
