"""One-shot pruning baselines (no training): magnitude, and the layer-wise calibrated Wanda and SparseGPT."""
from __future__ import annotations

import torch

from ..config import ConfigError
from ..sparsity import hard_prune_, input_dim_of, weight_of
from . import register
from .calibration import calibration_settings, calibration_windows
from .layerwise import prune_layerwise
from .sparsegpt import Hessian, sparsegpt_prune
from .wanda import InputNorms, wanda_mask


@register("magnitude", "oneshot")
def magnitude(model, targets, cfg, mcfg, **_):
    """Keep the N largest |w| of every M consecutive inputs."""
    n, m = cfg["sparsity"]["n"], cfg["sparsity"]["m"]
    hard_prune_(targets, n, m)
    return {}


def _calibration(model, cfg, mcfg, method, tokens):
    samples, seqlen = calibration_settings(cfg, mcfg)
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if max_pos and seqlen > max_pos:
        key = f"'methods.{method}.calib_seqlen'" if mcfg["calib_seqlen"] else \
            f"'train.seqlen' (used as methods.{method}.calib_seqlen is null)"
        raise ConfigError(f"config key {key}: {seqlen} exceeds the model's max_position_embeddings {max_pos}")
    return calibration_windows(tokens, samples, seqlen, cfg["seed"])


def _matrix(mod) -> torch.Tensor:
    """The weight as (out, in), whatever the module's layout."""
    w = weight_of(mod)
    return w if input_dim_of(mod) == 1 else w.t()


def _write(mod, new: torch.Tensor) -> None:
    w = weight_of(mod)
    w.copy_(new if input_dim_of(mod) == 1 else new.t())


def _device(accelerator):
    return accelerator.device if accelerator is not None else torch.device("cpu")


@register("wanda", "oneshot")
def wanda(model, targets, cfg, mcfg, *, tokens, method="wanda", accelerator=None, **_):
    """Wanda: per row, keep the N largest |W_ij| * ||X_j||_2 of every M inputs (layer-wise calibration)."""
    n, m = cfg["sparsity"]["n"], cfg["sparsity"]["m"]
    device = _device(accelerator)

    def prune(_name, mod, stats):
        w = _matrix(mod)
        _write(mod, w * wanda_mask(w, stats.norms(), n, m).to(w.dtype))

    return prune_layerwise(model, targets, _calibration(model, cfg, mcfg, method, tokens),
                           lambda _n, mod: InputNorms(_matrix(mod).shape[1], device), prune, device=device)


@register("sparsegpt", "oneshot")
def sparsegpt(model, targets, cfg, mcfg, *, tokens, method="sparsegpt", accelerator=None, **_):
    """SparseGPT N:M with OBS error compensation (layer-wise calibration)."""
    n, m = cfg["sparsity"]["n"], cfg["sparsity"]["m"]
    if mcfg["blocksize"] % m:
        raise ConfigError(f"config key 'methods.{method}.blocksize': {mcfg['blocksize']} is not a multiple of M={m} (sparsity.m)")
    device = _device(accelerator)

    def prune(_name, mod, stats):
        new, _keep = sparsegpt_prune(_matrix(mod), stats.value(), n, m, mcfg["percdamp"], mcfg["blocksize"])
        _write(mod, new)

    return prune_layerwise(model, targets, _calibration(model, cfg, mcfg, method, tokens),
                           lambda _n, mod: Hessian(_matrix(mod).shape[1], device), prune, device=device)
