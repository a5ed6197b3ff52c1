"""Calibration data of the one-shot baselines: seeded random windows of the train token stream
(SparseGPT / Wanda protocol: 128 random windows of the training corpus)."""
from __future__ import annotations

import numpy as np
import torch


def calibration_windows(tokens: np.ndarray, samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`samples` windows of `seqlen` consecutive tokens with uniformly random starts: (samples, seqlen) int64.

    Same seed and stream -> same windows; windows may overlap (as in the reference implementations)."""
    if samples < 1 or seqlen < 1:
        raise ValueError(f"calibration needs samples >= 1 and seqlen >= 1, got {samples} and {seqlen}")
    if len(tokens) < seqlen:
        raise ValueError(f"the train split has {len(tokens)} tokens, fewer than one calibration window of {seqlen}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - seqlen + 1, size=samples)
    windows = np.stack([np.asarray(tokens[s:s + seqlen]) for s in starts]).astype(np.int64)
    return torch.from_numpy(windows)


def calibration_settings(cfg: dict, mcfg: dict) -> tuple[int, int]:
    """(calib_samples, calib_seqlen) of a method entry; calib_seqlen null -> train.seqlen."""
    return int(mcfg["calib_samples"]), int(mcfg["calib_seqlen"] or cfg["train"]["seqlen"])
