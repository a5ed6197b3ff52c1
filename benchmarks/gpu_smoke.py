"""GPU smoke test and speed figures (benchmarks/gpu_smoke.sh; nothing downloaded, nothing asserted
but that each part runs). Every ratio is measured in this one run.

  1. CAST training of a randomly initialised LLaMA-shaped model (~134M parameters: hidden 768,
     12 layers, 12 heads, MLP 2048, vocabulary 32000) on synthetic tokens: FSDP2 on one GPU
     (cast.distributed), bf16 compute (MixedPrecisionPolicy) with fp32 master weights and moments,
     a bf16 teacher, compiled AdamS (train.optimizer_impl: compiled). Prints tokens/s (steady state,
     after compilation), MFU (model FLOPs: 6N + 12 L s h per token for the student, 2N + 4 L s h for
     the teacher's forward, against the card's dense bf16 peak) and the peak allocated memory
     against cast.plan's estimate for the same job.
  2. One optimizer step over the same parameter set on CUDA: AdamS (compiled; foreach) against
     torch's AdamW(fused=True).
  3. The exported model's N:M targets (exact 2:4) as torchao semi-structured sparse weights
     (cuSPARSELt, else CUTLASS) against the dense bf16 weights: per linear shape, the whole model's
     forward, and one LLaMA-2-7B MLP shape (4096 x 11008) for scale.

    python benchmarks/gpu_smoke.py [--steps 60] [--tiny]   (--tiny: a small model, also on CPU)
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity); GPU_PEAK_TFLOPS overrides
PEAKS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0,
         "L40S": 362.0, "A10": 125.0}


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, warmup=3, reps=20) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def peak_tflops(name: str) -> float | None:
    if os.environ.get("GPU_PEAK_TFLOPS"):
        return float(os.environ["GPU_PEAK_TFLOPS"])
    return next((v for k, v in PEAKS.items() if k in name), None)


def config(tiny: bool, device: str, gpu_gib: float | None, steps: int) -> dict:
    import yaml

    from cast.config import resolve_config

    spec = ({"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128} if tiny else
            {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 2048})
    seq, batch = (64, 4) if tiny else (1024, 8)
    raw = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    raw.update(device=device, resources={"gpu_mem_gb": gpu_gib}, models={"p": {**spec, "max_position_embeddings": seq}})
    raw["data"]["tokenizer"]["vocab_size"] = 512 if tiny else 32000
    raw["run"] = {"sizes": ["p"], "methods": ["cast"], "budgets": [str(seq * batch * steps)]}
    raw["finetune"], raw["quantize"] = {"apply_to": []}, {"apply_to": []}
    raw["train"] = {"seqlen": seq, "batch_size": batch, "lr": 2e-4, "warmup_steps": 5, "checkpoint_every": 0,
                    "log_every": 10, "precision": "bf16" if device == "cuda" else "no", "teacher_dtype": "bfloat16",
                    "optimizer_impl": "compiled", "strategy": "fsdp2"}
    raw["methods"]["cast"].update({"lambda": 4e-7, "t1": 10})
    return resolve_config(raw)


class StepClock:
    """A tracker for cast's loop: the wall time at every logged step (main process)."""

    def __init__(self):
        self.at = {}

    def log_metrics(self, metrics, step):
        sync()
        self.at[step] = time.perf_counter()


def train_part(args, device):
    from cast import distributed, plan
    from cast.config import method_config
    from cast.methods.cast_train import train_cast
    from cast.models import build_llama
    from cast.sparsity import find_targets
    from cast.stages.common import setup

    gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if device == "cuda" else None
    cfg = config(args.tiny, device, gib, args.steps)
    acc = setup(cfg)
    tr, sp, spec = cfg["train"], cfg["sparsity"], cfg["models"]["p"]
    vocab = cfg["data"]["tokenizer"]["vocab_size"]
    model = build_llama(spec, vocab, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    teacher = copy.deepcopy(model).to(dtype=torch.bfloat16, device=acc.device).eval().requires_grad_(False)
    targets = find_targets(model, sp["targets"], sp["exclude"], sp["m"])
    tokens = np.random.default_rng(0).integers(0, vocab, tr["seqlen"] * tr["batch_size"] * (args.steps + 2), dtype=np.int64)
    strat = distributed.strategy("fsdp2", acc, tr["precision"])
    clock = StepClock()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    info = train_cast(model, targets, cfg, method_config(cfg, "cast"), teacher=teacher, tokens=tokens,
                      budget=tr["seqlen"] * tr["batch_size"] * args.steps, method="cast", accelerator=acc,
                      tracker=clock, strategy=strat)
    wall = time.perf_counter() - t0
    steps = sorted(clock.at)
    first, last = steps[0], steps[-1]
    tok_s = (last - first) * tr["batch_size"] * tr["seqlen"] / (clock.at[last] - clock.at[first])
    h, layers, seq = spec["hidden_size"], spec["num_layers"], tr["seqlen"]
    embed = vocab * h
    flops_tok = 6 * (n_params - embed) + 12 * layers * seq * h + 2 * (n_params - embed) + 4 * layers * seq * h
    print(f"\n== 1. CAST training, FSDP2 on 1 {device} device, {'bf16' if tr['precision'] == 'bf16' else 'fp32'} compute, "
          f"compiled AdamS ==")
    print(f"model: {n_params / 1e6:.1f}M parameters ({sum(m.weight.numel() for m in targets.values()) / 1e6:.1f}M in "
          f"{len(targets)} 2:4 targets), {tr['batch_size']} x {seq} tokens per step, {args.steps} steps, wall {wall:.1f} s "
          f"(with compilation)")
    print(f"tokens/s (steps {first}-{last}): {tok_s:,.0f}   model TFLOP/s: {tok_s * flops_tok / 1e12:.1f}")
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = peak_tflops(name)
    print(f"MFU: {tok_s * flops_tok / (peak * 1e12):.1%} of {peak:.0f} TFLOP/s ({name})" if peak else
          f"MFU: n/a (no dense bf16 peak known for {name!r}; set GPU_PEAK_TFLOPS)")
    job = next(j for j in plan.jobs_of(cfg) if j.label == "sparsify p/cast")
    parts = plan.components(job, "fsdp2", 1, gpu=device == "cuda")
    planned = plan.total(parts) - parts["runtime"]
    if device == "cuda":
        alloc, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        print(f"peak memory: allocated {alloc / 2**30:.2f} GiB, reserved {reserved / 2**30:.2f} GiB; planned "
              f"{planned / 2**30:.2f} GiB (without CUDA context): allocated / planned = {alloc / planned:.2f}")
    print("planned by component (GiB): " + ", ".join(f"{k} {v / 2**30:.2f}" for k, v in parts.items()))
    print(f"final: {', '.join(f'{k} {v:.4g}' for k, v in info['final'].items() if k != 'train/tokens_per_s')}")
    return info["model"], [(n, tuple(p.shape)) for n, p in model.named_parameters()], cfg


def optimizer_part(named_shapes, device):
    """AdamS with the targets as its sparse group (as in training), the rest plain Adam."""
    from cast.optim.adams import AdamS

    shapes = [s for _, s in named_shapes]
    is_target = [".parametrizations.weight.original" in n for n, _ in named_shapes]
    print(f"\n== 2. one optimizer step on {device}: {sum(int(np.prod(s)) for s in shapes) / 1e6:.1f}M fp32 parameters "
          f"({len(shapes)} tensors) ==")

    def make(kind):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(s, device=device) * 0.02) for s in shapes]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-3
        if kind == "adamw_fused":
            return torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.0, fused=device == "cuda", foreach=device != "cuda")
        sparse = [p for p, t in zip(ps, is_target) if t]
        rest = [p for p, t in zip(ps, is_target) if not t]
        return AdamS([{"params": sparse, "sparse": True, "input_dim": 1}, {"params": rest}], lr=1e-3, lam=4e-7,
                     total_steps=1000, t1=10, impl=kind.split("_")[1])

    opts = {k: make(k) for k in ("adams_compiled", "adams_foreach", "adamw_fused")}
    times = {k: timed(o.step, warmup=12, reps=20) for k, o in opts.items()}  # warm-up covers a mask refresh
    base = times["adamw_fused"]
    for k, t in times.items():
        print(f"{k:16s} {t * 1e3:8.2f} ms   {t / base:5.2f}x AdamW(fused)")


def sparse_part(exported, cfg, device):
    from cast.sparsity import find_targets

    print("\n== 3. exported 2:4 linear layers: torchao semi-structured sparse vs dense bf16 ==")
    if device != "cuda":
        print("skipped: semi-structured sparse kernels need CUDA")
        return
    from torchao.sparsity import semi_sparse_weight, sparsify_

    sp = cfg["sparsity"]
    model = exported.to(device=device, dtype=torch.bfloat16).eval()
    targets = find_targets(model, sp["targets"], sp["exclude"], sp["m"])
    tokens = cfg["train"]["batch_size"] * cfg["train"]["seqlen"]
    dense = copy.deepcopy(model)
    names = set(targets)
    sparsify_(model, semi_sparse_weight(), filter_fn=lambda mod, fqn: fqn in names)
    cslt = torch.backends.cusparselt.is_available() and not torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS
    print(f"backend: {type(model.get_submodule(next(iter(names))).weight).__name__} ({'cuSPARSELt' if cslt else 'CUTLASS'}), "
          f"{tokens} tokens per call")
    seen = {}
    for name in targets:
        shape = tuple(dense.get_submodule(name).weight.shape)
        if shape in seen:
            continue
        x = torch.randn(tokens, shape[1], device=device, dtype=torch.bfloat16)
        wd, ws = dense.get_submodule(name), model.get_submodule(name)
        with torch.no_grad():
            td, ts = timed(lambda: wd(x)), timed(lambda: ws(x))
        seen[shape] = td / ts
        print(f"linear {shape[0]:5d} x {shape[1]:5d}: dense {td * 1e6:8.1f} us, 2:4 {ts * 1e6:8.1f} us, speed-up {td / ts:.2f}x")
    ids = torch.randint(0, model.config.vocab_size, (cfg["train"]["batch_size"], cfg["train"]["seqlen"]), device=device)
    with torch.no_grad():
        td, ts = timed(lambda: dense(ids).logits, reps=10), timed(lambda: model(ids).logits, reps=10)
    print(f"whole model forward: dense {td * 1e3:.2f} ms, 2:4 targets {ts * 1e3:.2f} ms, speed-up {td / ts:.2f}x")
    from cast.sparsity import nm_mask

    w = torch.randn(11008, 4096, device=device, dtype=torch.bfloat16)
    w = w * nm_mask(w, 2, 4)
    lin = torch.nn.Sequential(torch.nn.Linear(4096, 11008, bias=False, device=device, dtype=torch.bfloat16))
    with torch.no_grad():
        lin[0].weight.copy_(w)
    big = copy.deepcopy(lin)
    sparsify_(big, semi_sparse_weight())
    x = torch.randn(tokens, 4096, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        td, ts = timed(lambda: lin(x)), timed(lambda: big(x))
    print(f"LLaMA-2-7B MLP shape 11008 x 4096: dense {td * 1e6:.1f} us, 2:4 {ts * 1e6:.1f} us, speed-up {td / ts:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--tiny", action="store_true", help="a small model (checks the script, also on CPU)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        sys.exit("gpu_smoke: no CUDA device (use --tiny to check the script on CPU)")
    import torchao

    print(f"torch {torch.__version__}, torchao {torchao.__version__}, device "
          f"{torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}")
    t0 = time.perf_counter()
    exported, params, cfg = train_part(args, device)
    optimizer_part(params, device)
    sparse_part(exported, cfg, device)
    print(f"\ngpu_smoke: done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
