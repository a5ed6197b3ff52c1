"""Quantize the target linears of a model in place (weight-only, fake-quant storage: the layer keeps a
float weight equal to q * s, so any HF loader evaluates the quantized model), returning the integer
codes and scales per layer. Also the torchao route used as an independent reference."""
from __future__ import annotations

import torch
from torch import nn

from ..sparsity import set_weight_matrix, weight_matrix
from .gptq import gptq_quantize
from .rtn import dequantize, rtn_quantize

METHODS = ("rtn", "gptq", "torchao")
__all__ = ["METHODS", "quantize_targets", "quantize_weight", "torchao_codes", "set_weight_matrix", "weight_matrix"]


def torchao_codes(w: torch.Tensor, bits: int, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao weight-only RTN of a (rows, cols) weight on CPU -> (q int8, scales (rows, groups)).

    int8 per-channel: Int8WeightOnlyConfig; otherwise IntxWeightOnlyConfig(int{bits}, PerGroup/PerAxis).
    torchao's symmetric scheme uses s = max|w| / (qmax + 0.5) and codes in [-qmax-1, qmax]."""
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, PerAxis, PerGroup, quantize_

    rows, cols = w.shape
    if group_size is not None and cols % group_size:
        raise ValueError(f"torchao needs group_size {group_size} to divide the {cols} inputs of every layer")
    lin = nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w.float())
    if bits == 8 and group_size is None:
        cfg = Int8WeightOnlyConfig()
    else:
        gran = PerAxis(0) if group_size is None else PerGroup(group_size)
        cfg = IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"), granularity=gran)
    quantize_(lin, cfg)
    qw = lin.weight
    zp = getattr(qw, "zero_point", None)
    if zp is not None and bool((zp != 0).any()):
        raise ValueError("torchao returned a non-zero zero point: the symmetric scheme was expected")
    scale = qw.scale.reshape(rows, -1).float()
    return qw.qdata.reshape(rows, cols).to(torch.int8), scale


def quantize_weight(w: torch.Tensor, method: str, bits: int, group_size: int | None, H: torch.Tensor | None = None,
                    percdamp: float = 0.01, blocksize: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """One (rows, cols) weight -> (q, scales) with rtn, gptq (needs H) or torchao. Zeros stay zero:
    symmetric codes map 0 to 0, and GPTQ keeps the mask w != 0 fixed."""
    if method == "rtn":
        return rtn_quantize(w, bits, group_size)
    if method == "gptq":
        if H is None:
            raise ValueError("GPTQ needs the calibration Hessian of every layer")
        return gptq_quantize(w, H, bits, group_size, mask=w != 0, percdamp=percdamp, blocksize=blocksize)
    if method == "torchao":
        return torchao_codes(w, bits, group_size)
    raise ValueError(f"unknown quantization method {method!r}; expected one of {METHODS}")


@torch.no_grad()
def quantize_targets(targets: dict[str, nn.Module], method: str, bits: int, group_size: int | None,
                     hessians: dict[str, torch.Tensor] | None = None, percdamp: float = 0.01,
                     blocksize: int = 128) -> dict[str, dict]:
    """Replace every target's weight by its dequantized quantization. Returns per layer
    {"q": int8 codes, "scales": float32, "rel_err": ||W_hat - W|| / ||W||}."""
    out = {}
    for name, mod in targets.items():
        w = weight_matrix(mod).float().clone()  # a copy: the weight is overwritten below
        H = hessians.get(name) if hessians else None
        q, s = quantize_weight(w, method, bits, group_size, H, percdamp, blocksize)
        w_hat = dequantize(q.cpu(), s.cpu(), group_size).to(w.device)
        set_weight_matrix(mod, w_hat)
        out[name] = {"q": q.cpu().contiguous(), "scales": s.cpu().contiguous(),
                     "rel_err": float((w_hat - w).norm() / w.norm().clamp_min(1e-12))}
    return out
