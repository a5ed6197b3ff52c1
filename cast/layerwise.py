"""The layer-wise calibration runner shared by SparseGPT, Wanda and GPTQ, model-agnostic.

1. Run the model on the calibration windows until the first decoder layer and keep exactly what
   the model passes it (hidden states plus every other positional / keyword argument: attention
   mask, RoPE `position_embeddings`, position ids, ...), one entry per calibration batch.
2. For each decoder layer: forward hooks on its target linears accumulate input statistics over
   all calibration batches; then `apply` changes each target from its statistics (prunes it,
   quantizes it). With `sequential` (SparseGPT, Wanda) the layer is run again with its new weights
   and those outputs feed the next layer; otherwise (our GPTQ) the next layer sees the outputs of
   the unchanged layer, i.e. every layer is calibrated on the original model's activations.

The decoder layers are the nn.ModuleList holding the most targets (LLaMA `model.layers`, GPT-2
`transformer.h`, OPT `model.decoder.layers`); no per-architecture code.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .errors import SparsityError


def calibration_windows(tokens: np.ndarray, samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """The calibration data (SparseGPT / Wanda protocol: random windows of the training corpus):
    `samples` windows of `seqlen` consecutive tokens with uniformly random starts, (samples, seqlen)
    int64. Same seed and stream -> same windows; windows may overlap (as in the reference code)."""
    if samples < 1 or seqlen < 1:
        raise ValueError(f"calibration needs samples >= 1 and seqlen >= 1, got {samples} and {seqlen}")
    if len(tokens) < seqlen:
        raise ValueError(f"the train split has {len(tokens)} tokens, fewer than one calibration window of {seqlen}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - seqlen + 1, size=samples)
    windows = np.stack([np.asarray(tokens[s:s + seqlen]) for s in starts]).astype(np.int64)
    return torch.from_numpy(windows)


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
def run_layerwise(model: nn.Module, targets: dict[str, nn.Module], samples: torch.Tensor,
                  make_stats: Callable[[str, nn.Module], object], apply: Callable[[str, nn.Module, object], None],
                  device=None, batch_size: int = 8, sequential: bool = True) -> dict:
    """Change `targets` layer by layer from calibration statistics (see the module docstring).

    make_stats(name, module) -> an object with add(x) taking the module's inputs as (tokens, in_features);
    apply(name, module, stats) changes the module in place."""
    device = torch.device(device or "cpu")
    was_training = model.training
    model.eval()
    model.to(device)
    _, layers = decoder_layers(model, targets)
    per_layer = layer_targets(layers, targets)
    batches = capture_layer_inputs(model, layers[0], samples, batch_size, device)
    for layer, group in zip(layers, per_layer):
        outputs = None
        if group:
            stats = {name: make_stats(name, mod) for name, mod in group.items()}
            handles = [mod.register_forward_hook(
                lambda _m, inp, _out, s=stats[name]: s.add(inp[0].detach().reshape(-1, inp[0].shape[-1])))
                for name, mod in group.items()]
            try:
                outputs = []
                for hs, args, kwargs in batches:
                    out = _output(layer(hs, *args, **kwargs))
                    if not sequential:
                        outputs.append(out)
            finally:
                for h in handles:
                    h.remove()
            for name, mod in group.items():
                apply(name, mod, stats[name])
                stats[name] = None  # free the statistics (a Hessian is in x in) before the next target
        if sequential or not group:
            outputs = [_output(layer(hs, *args, **kwargs)) for hs, args, kwargs in batches]
        batches = [(out, args, kwargs) for out, (_, args, kwargs) in zip(outputs, batches)]
    model.train(was_training)
    return {"layers": len(layers), "calib_samples": int(samples.shape[0]), "calib_seqlen": int(samples.shape[1])}
