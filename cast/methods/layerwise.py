"""Layer-wise one-shot pruning driver (the SparseGPT / Wanda loop), model-agnostic.

1. Run the model on the calibration windows until the first decoder layer and keep exactly what
   the model passes it (hidden states plus every other positional / keyword argument: attention
   mask, RoPE `position_embeddings`, position ids, ...), one entry per calibration batch.
2. For each decoder layer: forward hooks on its target linears accumulate input statistics over
   all calibration batches; the targets are pruned from these statistics; the layer is run again
   with its pruned weights and its outputs become the next layer's inputs.

The decoder layers are the nn.ModuleList holding the most targets (LLaMA `model.layers`, GPT-2
`transformer.h`, OPT `model.decoder.layers`); no per-architecture code.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..sparsity import SparsityError


class _Stop(Exception):
    """Raised by the layer-0 hook once its inputs are captured: nothing after it runs."""


def decoder_layers(model: nn.Module, targets: dict[str, nn.Module]) -> tuple[str, nn.ModuleList]:
    """(name, ModuleList) of the decoder layers: the ModuleList whose entries contain the most targets."""
    ids = {id(m) for m in targets.values()}
    best, best_count = None, 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod):
            count = sum(id(sub) in ids for sub in mod.modules())
            if count > best_count:
                best, best_count = (name, mod), count
    if best is None:
        raise SparsityError("no decoder-layer list (nn.ModuleList) holds a target layer; layer-wise pruning needs one")
    return best


def layer_targets(layers: nn.ModuleList, targets: dict[str, nn.Module]) -> list[dict[str, nn.Module]]:
    """Targets of each decoder layer; every target must live in one of them."""
    by_id = {id(m): name for name, m in targets.items()}
    per_layer, seen = [], set()
    for layer in layers:
        found = {by_id[id(m)]: m for m in layer.modules() if id(m) in by_id}
        per_layer.append(found)
        seen.update(found)
    outside = sorted(set(targets) - seen)
    if outside:
        raise SparsityError(f"targets outside the decoder layers cannot be pruned layer-wise: {outside} "
                            "(narrow sparsity.targets or add them to sparsity.exclude)")
    return per_layer


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, layer0: nn.Module, samples: torch.Tensor, batch_size: int,
                         device) -> list[tuple[torch.Tensor, tuple, dict]]:
    """(hidden_states, other args, kwargs) that `model` passes to `layer0`, per batch of samples."""
    captured = []

    def hook(_mod, args, kwargs):
        captured.append((args[0].detach(), tuple(args[1:]), dict(kwargs)))
        raise _Stop

    handle = layer0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i in range(0, len(samples), batch_size):
            try:
                model(samples[i:i + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
            else:
                raise RuntimeError("the model forward never reached its first decoder layer")
    finally:
        handle.remove()
    return captured


def _output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def prune_layerwise(model: nn.Module, targets: dict[str, nn.Module], samples: torch.Tensor,
                    make_stats: Callable[[str, nn.Module], object], prune: Callable[[str, nn.Module, object], None],
                    device=None, batch_size: int = 8) -> dict:
    """Prune `targets` layer by layer from calibration statistics (sequential: layer l sees the outputs of
    the already pruned layers < l).

    make_stats(name, module) -> an object with add(x) taking the module's inputs as (tokens, in_features);
    prune(name, module, stats) prunes the module in place.
    """
    device = torch.device(device or "cpu")
    was_training = model.training
    model.eval()
    model.to(device)
    _, layers = decoder_layers(model, targets)
    per_layer = layer_targets(layers, targets)
    batches = capture_layer_inputs(model, layers[0], samples, batch_size, device)
    for layer, group in zip(layers, per_layer):
        if group:
            stats = {name: make_stats(name, mod) for name, mod in group.items()}
            handles = [mod.register_forward_hook(
                lambda _m, inp, _out, s=stats[name]: s.add(inp[0].detach().reshape(-1, inp[0].shape[-1])))
                for name, mod in group.items()]
            try:
                for hs, args, kwargs in batches:
                    layer(hs, *args, **kwargs)
            finally:
                for h in handles:
                    h.remove()
            for name, mod in group.items():
                prune(name, mod, stats[name])
                stats[name] = None  # free the statistics (a Hessian is in x in) before the next target
        batches = [(_output(layer(hs, *args, **kwargs)), args, kwargs) for hs, args, kwargs in batches]
    model.train(was_training)
    return {"layers": len(layers), "calib_samples": int(samples.shape[0]), "calib_seqlen": int(samples.shape[1])}
