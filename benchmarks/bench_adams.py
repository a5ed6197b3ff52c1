"""AdamS step vs torch AdamW, mask refresh, and a CAST training step vs a dense fine-tuning step.

Run on demand (`make bench` or `python benchmarks/bench_adams.py [--threads N]`); prints medians
(after warm-up, which includes torch.compile; the contenders timed in turns) and ratios measured
in this one run. Not a test: no
threshold is asserted here. On a shared machine, other processes inflate every number: compare the
ratios of one run, not absolute times across runs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_medians(fns: dict, warmup=3, reps=10) -> dict:
    """Median time of each callable, timed in turns (a, b, c, a, b, c, ...) so that a change in the
    machine's load hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    ts = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            _sync()
            t = time.perf_counter()
            fn()
            _sync()
            ts[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in ts.items()}


def first_call(fn):
    """Seconds of one call (the first one: includes torch.compile)."""
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


def bench_optimizers(layers, rows, cols, device, reps):
    from cast.optim import native
    from cast.optim.adams import AdamS

    def make(kind):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(rows, cols, device=device) * 0.02) for _ in range(layers)]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-3
        if kind == "adamw_foreach":
            return torch.optim.AdamW(ps, lr=1e-3, foreach=True, weight_decay=0.0)
        if kind == "adamw_fused":
            return torch.optim.AdamW(ps, lr=1e-3, fused=True, weight_decay=0.0)
        impl = kind.split("_", 1)[1]
        return AdamS([{"params": ps, "sparse": True}], lr=1e-3, lam=1e-4, total_steps=1000, t1=10 ** 9, impl=impl)

    opts = {kind: make(kind) for kind in ("adamw_foreach", "adamw_fused", "adams_foreach", "adams_compiled")}
    out = {"compile_s": first_call(opts["adams_compiled"].step)}  # first step: mask refresh + update, compiled
    out.update(interleaved_medians({k: opt.step for k, opt in opts.items()}, reps=reps))
    out.update(interleaved_medians({"refresh_foreach": opts["adams_foreach"].refresh_masks,
                                    "refresh_native": opts["adams_compiled"].refresh_masks,
                                    "refresh_inductor": without_native(opts["adams_compiled"].refresh_masks)},
                                   reps=max(3, reps // 2)))
    if not native.available() or device != "cpu":  # then refresh_native ran the inductor kernel too
        out.pop("refresh_native")
    return out


def without_native(fn):
    """fn with the C mask kernel switched off: the torch.compile (inductor) kernel instead."""
    from cast.optim import native

    def run():
        real, native.supports = native.supports, lambda p: False
        try:
            return fn()
        finally:
            native.supports = real
    return run


def bench_steps(device, reps, impl, teacher_dtype):
    """One CAST step (student fwd/bwd with scales, teacher fwd, KD, AdamS) vs one dense fine-tuning
    step of the same model (fwd/bwd, fused AdamW); also the older CAST step (teacher under no_grad,
    logits sliced and log-softmaxed per loss term) to show what the lean step saves."""
    import copy

    import torch.nn.functional as F

    from cast.distill import causal_ce, distill_loss, teacher_targets
    from cast.methods.cast_train import param_groups
    from cast.models import build_llama
    from cast.optim.adams import AdamS
    from cast.sparsity import find_targets
    from cast.weight_scaling import attach_scales

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
    teacher = copy.deepcopy(student).to(getattr(torch, teacher_dtype)).eval().requires_grad_(False)
    targets = find_targets(student, [r"_proj$"], [], 4)
    scales = attach_scales(targets, 2)
    opt_s = AdamS(param_groups(student, targets, scales, {"lr": 1e-4}, {"scaling_lr": None}), lr=1e-4, lam=1e-4,
                  total_steps=1000, t1=10, impl=impl)
    shapes = {tuple(p.shape) for g in opt_s.param_groups for p in g["params"]}

    def cast_step():  # as cast.methods.cast_train's loss_fn
        loss, _, _ = distill_loss(student(ids).logits, None, ids, 1 / 3, targets=teacher_targets(teacher, ids))
        loss.backward()
        opt_s.step()
        opt_s.zero_grad(set_to_none=True)

    def old_cast_step():  # before: teacher logits under no_grad, CE and KL each slice + log-softmax
        with torch.no_grad():
            t_logits = teacher(ids).logits
        v = t_logits.shape[-1]
        s_logits = student(ids).logits
        ce = F.cross_entropy(s_logits[:, :-1].reshape(-1, v).float(), ids[:, 1:].reshape(-1))
        log_s = F.log_softmax(s_logits[:, :-1].reshape(-1, v).float(), -1)
        log_t = F.log_softmax(t_logits[:, :-1].reshape(-1, v).float(), -1)
        kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
        (kl / 3 + ce * 2 / 3).backward()
        opt_s.step()
        opt_s.zero_grad(set_to_none=True)

    compile_s = first_call(cast_step)
    out = interleaved_medians({"dense_step": dense_step, "cast_step": cast_step, "old_cast_step": old_cast_step}, 2, reps)
    return {**out, "first_cast_step_s": compile_s, "param_shapes": len(shapes)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--impl", default="compiled", choices=["foreach", "compiled"], help="AdamS in the CAST step")
    ap.add_argument("--teacher-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--malloc", default="retain", choices=["retain", "system"],
                    help="host allocator as config train.malloc (the training stages' default: retain)")
    ap.add_argument("--skip-steps", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc == "retain":
        from cast.train import retain_freed_host_memory

        args.malloc = "retain" if retain_freed_host_memory() else "system (retain is glibc only)"
    n = args.layers * args.rows * args.cols
    print(f"device={args.device} threads={torch.get_num_threads()} params={n / 1e6:.1f}M torch={torch.__version__} "
          f"malloc={args.malloc}")
    o = bench_optimizers(args.layers, args.rows, args.cols, args.device, args.reps)
    for k, v in o.items():
        print(f"{k:>16}: {v * 1e3:8.2f} ms" if k != "compile_s" else f"{k:>16}: {v:8.2f} s (first AdamS(compiled) step)")
    fast, ref = o["adams_compiled"], o["adams_foreach"]
    print(f"AdamS(compiled) / AdamW(fused)   = {fast / o['adamw_fused']:.2f}x")
    print(f"AdamS(compiled) / AdamW(foreach) = {fast / o['adamw_foreach']:.2f}x")
    print(f"AdamS(foreach)  / AdamW(fused)   = {ref / o['adamw_fused']:.2f}x")
    print(f"AdamS(foreach)  / AdamW(foreach) = {ref / o['adamw_foreach']:.2f}x")
    for kind in ("native", "inductor"):
        if f"refresh_{kind}" in o:
            print(f"mask refresh ({kind}) amortised over T1=10 / AdamS(compiled) step = {o[f'refresh_{kind}'] / 10 / fast:.3f}x")
    print(f"mask refresh (foreach) amortised over T1=10 / AdamS(foreach) step  = {o['refresh_foreach'] / 10 / ref:.3f}x")
    if not args.skip_steps:
        s = bench_steps(args.device, max(3, args.reps // 2), args.impl, args.teacher_dtype)
        print(f"tiny LLaMA ({s['param_shapes']} parameter shapes), AdamS impl={args.impl}, teacher {args.teacher_dtype}: "
              f"first CAST step {s['first_cast_step_s']:.1f} s (includes compilation)")
        print(f"dense fine-tune step: {s['dense_step'] * 1e3:.1f} ms; CAST step: {s['cast_step'] * 1e3:.1f} ms "
              f"(before the lean loss: {s['old_cast_step'] * 1e3:.1f} ms)")
        print(f"CAST step / dense step = {s['cast_step'] / s['dense_step']:.2f}x "
              f"(before: {s['old_cast_step'] / s['dense_step']:.2f}x)")


if __name__ == "__main__":
    main()
