"""AdamS step vs torch AdamW, mask refresh, and a CAST training step vs a dense fine-tuning step.

Run on demand (`make bench` or `python benchmarks/bench_adams.py`); prints medians and ratios measured
in this one run. Not a test: no threshold is asserted here.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def median_time(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_optimizers(layers, rows, cols, device, reps):
    from cast.optim.adams import AdamS

    def make(kind):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(rows, cols, device=device) * 0.02) for _ in range(layers)]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-3
        if kind == "adamw_foreach":
            return ps, torch.optim.AdamW(ps, lr=1e-3, foreach=True, weight_decay=0.0)
        if kind == "adamw_fused":
            return ps, torch.optim.AdamW(ps, lr=1e-3, fused=True, weight_decay=0.0)
        impl = kind.split("_", 1)[1]
        return ps, AdamS([{"params": ps, "sparse": True}], lr=1e-3, lam=1e-4, total_steps=1000, t1=10 ** 9, impl=impl)

    out = {}
    for kind in ("adamw_foreach", "adamw_fused", "adams_foreach"):
        ps, opt = make(kind)
        out[kind] = median_time(opt.step, reps=reps)
    _, adams = make("adams_foreach")
    adams.step()
    out["mask_refresh"] = median_time(adams.refresh_masks, reps=max(3, reps // 3))
    return out


def bench_steps(device, reps):
    """One CAST step (student fwd/bwd with scales, teacher fwd, KD, AdamS) vs one dense fine-tuning step."""
    import copy

    from cast.distill import causal_ce, distill_loss
    from cast.methods.cast_train import param_groups
    from cast.models import build_llama
    from cast.optim.adams import AdamS
    from cast.scaling import attach_scales
    from cast.sparsity import find_targets

    spec = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 352}
    ids = torch.randint(0, 4096, (16, 128), device=device)
    dense = build_llama(spec, 4096).to(device)
    opt_d = torch.optim.AdamW(dense.parameters(), lr=1e-4, fused=True)

    def dense_step():
        loss = causal_ce(dense(ids).logits, ids)
        loss.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)

    student = build_llama(spec, 4096).to(device)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    targets = find_targets(student, [r"_proj$"], [], 4)
    scales = attach_scales(targets, 2)
    opt_s = AdamS(param_groups(student, targets, scales, {"lr": 1e-4}, {"scaling_lr": None}), lr=1e-4, lam=1e-4,
                  total_steps=1000, t1=10)

    def cast_step():
        with torch.no_grad():
            t_logits = teacher(ids).logits
        loss, _, _ = distill_loss(student(ids).logits, t_logits, ids, 1 / 3)
        loss.backward()
        opt_s.step()
        opt_s.zero_grad(set_to_none=True)

    return {"dense_step": median_time(dense_step, 2, reps), "cast_step": median_time(cast_step, 2, reps)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-steps", action="store_true")
    args = ap.parse_args()
    n = args.layers * args.rows * args.cols
    print(f"device={args.device} threads={torch.get_num_threads()} params={n / 1e6:.1f}M torch={torch.__version__}")
    o = bench_optimizers(args.layers, args.rows, args.cols, args.device, args.reps)
    for k, v in o.items():
        print(f"{k:>16}: {v * 1e3:8.2f} ms")
    print(f"AdamS(foreach) / AdamW(foreach) = {o['adams_foreach'] / o['adamw_foreach']:.2f}x")
    print(f"AdamS(foreach) / AdamW(fused)   = {o['adams_foreach'] / o['adamw_fused']:.2f}x")
    print(f"mask refresh / AdamS step, amortised over T1=10 = {o['mask_refresh'] / 10 / o['adams_foreach']:.3f}x")
    if not args.skip_steps:
        s = bench_steps(args.device, max(3, args.reps // 2))
        print(f"dense fine-tune step: {s['dense_step'] * 1e3:.1f} ms; CAST step: {s['cast_step'] * 1e3:.1f} ms; "
              f"ratio {s['cast_step'] / s['dense_step']:.2f}x")


if __name__ == "__main__":
    main()
