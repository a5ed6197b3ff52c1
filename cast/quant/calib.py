"""Calibration statistics of linear layers: H = 2 X X^T / n from forward hooks on the full model.

Interface kept small (`collect_linear_inputs(model, targets, calib_ids) -> {name: H}`) so a
layer-wise runner (quantize block by block, feeding quantized outputs forward) can replace it."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def collect_linear_inputs(model: nn.Module, targets: dict[str, nn.Module], calib_ids: torch.Tensor,
                          batch_size: int = 8) -> dict[str, torch.Tensor]:
    """GPTQ Hessians H = 2/n * sum_t x_t x_t^T (float64, (in, in)) of every target's inputs over the
    n calibration token positions of calib_ids (samples, seqlen), one dense forward per batch."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def fn(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.t() @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    handles = [mod.register_forward_pre_hook(hook(name)) for name, mod in targets.items()]
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        for i in range(0, len(calib_ids), batch_size):
            model(calib_ids[i:i + batch_size].to(dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in targets if n not in sums]
    if missing:
        raise ValueError(f"calibration forward never reached layers {missing}")
    return {n: 2.0 * sums[n] / counts[n] for n in targets}
