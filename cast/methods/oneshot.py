"""One-shot pruning baselines (no training): magnitude, and the layer-wise calibrated Wanda and
SparseGPT (cast.layerwise runs the calibration; registered in cast.methods)."""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..hessian import Hessian
from ..layerwise import calibration_windows, run_layerwise
from ..sparsity import hard_prune_, set_weight_matrix, weight_matrix
from .sparsegpt import sparsegpt_prune
from .wanda import InputNorms, wanda_mask


def magnitude(model, targets, cfg, mcfg, **_):
    """Keep the N largest |w| of every M consecutive inputs."""
    n, m = cfg["sparsity"]["n"], cfg["sparsity"]["m"]
    hard_prune_(targets, n, m)
    return {}


def _calibration(model, cfg, mcfg, method, tokens):
    """Seeded calibration windows; calib_seqlen null -> train.seqlen. (Config time checks the length
    against the positions of presets and local checkpoints; this guards a hub checkpoint.)"""
    samples, seqlen = int(mcfg["calib_samples"]), int(mcfg["calib_seqlen"] or cfg["train"]["seqlen"])
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if max_pos and seqlen > max_pos:
        key = f"'methods.{method}.calib_seqlen'" if mcfg["calib_seqlen"] else \
            f"'train.seqlen' (used as methods.{method}.calib_seqlen is null)"
        raise ConfigError(f"config key {key}: {seqlen} exceeds the model's max_position_embeddings {max_pos}")
    return calibration_windows(tokens, samples, seqlen, cfg["seed"])


def _device(accelerator):
    return accelerator.device if accelerator is not None else torch.device("cpu")


def wanda(model, targets, cfg, mcfg, *, tokens, method="wanda", accelerator=None, **_):
    """Wanda: per row, keep the N largest |W_ij| * ||X_j||_2 of every M inputs (layer-wise calibration)."""
    n, m = cfg["sparsity"]["n"], cfg["sparsity"]["m"]
    device = _device(accelerator)

    def prune(_name, mod, stats):
        w = weight_matrix(mod)
        set_weight_matrix(mod, torch.where(wanda_mask(w, stats.norms(), n, m), w, torch.zeros((), dtype=w.dtype, device=w.device)))

    return run_layerwise(model, targets, _calibration(model, cfg, mcfg, method, tokens),
                         lambda _n, mod: InputNorms(weight_matrix(mod).shape[1], device), prune, device=device)


def sparsegpt(model, targets, cfg, mcfg, *, tokens, method="sparsegpt", accelerator=None, **_):
    """SparseGPT N:M with OBS error compensation (layer-wise calibration)."""
    from . import get

    get("sparsegpt").check(cfg, method, mcfg)  # its registered config rule, for callers that skip validation
    n, m = cfg["sparsity"]["n"], cfg["sparsity"]["m"]
    device = _device(accelerator)

    def prune(_name, mod, stats):
        new, _keep = sparsegpt_prune(weight_matrix(mod), stats.value(), n, m, mcfg["percdamp"], mcfg["blocksize"])
        set_weight_matrix(mod, new)

    return run_layerwise(model, targets, _calibration(model, cfg, mcfg, method, tokens),
                         lambda _n, mod: Hessian(weight_matrix(mod).shape[1], device), prune, device=device)
