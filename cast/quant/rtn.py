"""Round-to-nearest (RTN) weight-only quantization: symmetric, no zero point, so 0 maps to 0 exactly
and an N:M sparse weight keeps its zeros.

Layout: w is (rows=outputs, cols=inputs). Scales are (rows, groups): one per output row
(group_size None, per-channel) or one per `group_size` consecutive inputs of a row (group-wise).
Integer codes q lie in [-qmax, qmax] with qmax = 2^(bits-1) - 1 (127 for int8, 7 for int4) and are
stored as int8; the dequantized weight is q * scale.
"""
from __future__ import annotations

import torch


def qmax_of(bits: int) -> int:
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"unsupported bit width {bits} (expected 8 or 4)")
    return 2 ** (bits - 1) - 1


def groups_of(cols: int, group_size: int | None) -> int:
    """Groups per row: 1 for per-channel (group_size None), else ceil(cols / group_size) (the last
    group is shorter when group_size does not divide cols, as GPTQ's col // group_size indexing)."""
    if group_size is None:
        return 1
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    return -(-cols // group_size)


def expand_scales(scales: torch.Tensor, cols: int, group_size: int | None) -> torch.Tensor:
    """(rows, groups) -> (rows, cols): input j gets the scale of group j // group_size."""
    if group_size is None:
        if scales.shape[1] != 1:
            raise ValueError(f"{scales.shape[1]} scales per row need their group_size")
        return scales.expand(-1, cols)
    if scales.shape[1] != groups_of(cols, group_size):
        raise ValueError(f"{scales.shape[1]} scales per row do not match {cols} inputs in groups of {group_size}")
    return scales.repeat_interleave(group_size, dim=1)[:, :cols]


def absmax_scales(w: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """s = max|w| / qmax over each group (symmetric absmax); an all-zero group gets s = 1 (its codes are 0)."""
    rows, cols = w.shape
    n = groups_of(cols, group_size)
    a = w.detach().abs()
    if n * (group_size or cols) != cols:  # ragged last group: pad with zeros (they never win the max)
        a = torch.nn.functional.pad(a, (0, n * group_size - cols))
    amax = a.reshape(rows, n, -1).amax(dim=-1)
    s = amax / qmax_of(bits)
    return torch.where(amax > 0, s, torch.ones_like(s))


def quantize_codes(w: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """q = clamp(round(w / s), -qmax, qmax), as int8 (round half to even; round(0) = 0)."""
    qm = qmax_of(bits)
    return torch.clamp(torch.round(w / expand_scales(scales, w.shape[1], group_size)), -qm, qm).to(torch.int8)


def dequantize(q: torch.Tensor, scales: torch.Tensor, group_size: int | None = None, dtype=torch.float32) -> torch.Tensor:
    """w_hat = q * s (per row, or per group of group_size inputs)."""
    return q.to(dtype) * expand_scales(scales.to(dtype), q.shape[1], group_size)


def rtn_quantize(w: torch.Tensor, bits: int, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RTN of a (rows, cols) weight: returns (q int8 codes, scales (rows, groups))."""
    w = w.detach().float()
    scales = absmax_scales(w, bits, group_size)
    return quantize_codes(w, scales, bits, group_size), scales
