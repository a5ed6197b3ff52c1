"""`cast quantize --scheme NAME`: weight-only quantization of one model folder (RTN, GPTQ or torchao).

Output format: the model directory holds the DEQUANTIZED weights (q * s) as ordinary float
safetensors, so AutoModelForCausalLM, lm-eval and the evaluate stage load it with no quantization
library and no unpickling, and the N:M checker reads it directly. The integer codes and scales
themselves go next to it (qstate.safetensors, int8 codes + float32 scales per layer) with quant.json
(scheme, bits, group size, per-layer error), from which a real low-bit kernel format can be packed.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import ConfigError
from ..io import write_json
from ..models import pick_device, save_model
from ..quant import collect_linear_inputs, quantize_targets, weight_matrix
from ..sparsity import SparsityError, check_model, find_targets, input_dim_of, weight_of
from .common import load_dense, tokenizer_of, train_tokens


def scheme_config(cfg: dict, scheme: str) -> dict:
    schemes = cfg["quantize"]["schemes"]
    if scheme not in schemes:
        raise ConfigError(f"unknown quantization scheme {scheme!r}; defined in 'quantize.schemes': {', '.join(schemes)}")
    return schemes[scheme]


def nm_status(targets: dict, n: int, m: int) -> tuple[bool, int]:
    """(is the model exact N:M, violations); a target whose inputs M does not divide is not N:M."""
    if any(weight_of(mod).shape[input_dim_of(mod)] % m for mod in targets.values()):
        return False, -1
    v = sum(check_model(None, targets, n, m).values())
    return v == 0, v


def calibration_hessians(cfg: dict, qc: dict, model, targets, data_dir) -> dict:
    """GPTQ statistics from seeded random windows of the train split (the one-shot methods' protocol)."""
    from ..methods.calibration import calibration_windows

    ids = calibration_windows(train_tokens(data_dir), qc["calib_samples"], cfg["train"]["seqlen"], cfg["seed"])
    return collect_linear_inputs(model, targets, ids, batch_size=cfg["evaluate"]["batch_size"])


def run(cfg: dict, model_dir: str | Path, data_dir: str | Path, scheme: str, out_dir: str | Path, tracker=None) -> dict:
    qc = scheme_config(cfg, scheme)
    key = f"quantize.schemes.{scheme}"
    sp = cfg["sparsity"]
    out_dir = Path(out_dir)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    t0 = time.time()
    dev = pick_device(cfg["device"])
    tok = tokenizer_of(data_dir, cfg)
    model = load_dense(model_dir, cfg).to(dev).eval()
    targets = find_targets(model, sp["targets"], sp["exclude"])
    was_nm, _ = nm_status(targets, sp["n"], sp["m"])
    zeros = {name: weight_matrix(mod) == 0 for name, mod in targets.items()}
    hessians = calibration_hessians(cfg, qc, model, targets, data_dir) if qc["method"] == "gptq" else None
    try:
        states = quantize_targets(targets, qc["method"], qc["bits"], qc["group_size"], hessians,
                                  qc["percdamp"], qc["blocksize"])
    except ValueError as e:
        raise ConfigError(f"config key '{key}': {e}") from None
    revived = {n: int((weight_matrix(targets[n])[z] != 0).sum()) for n, z in zeros.items()}
    if any(revived.values()):
        raise SparsityError(f"quantization {scheme} made pruned weights non-zero: {({k: v for k, v in revived.items() if v})}")
    now_nm, violations = nm_status(targets, sp["n"], sp["m"])
    if was_nm and not now_nm:
        raise SparsityError(f"quantization {scheme} broke {sp['n']}:{sp['m']} sparsity: {violations} violating groups")
    model = model.to("cpu")
    save_model(model, tok, out_dir / "model")
    from safetensors.torch import save_file

    save_file({f"{n}.{k}": st[k] for n, st in states.items() for k in ("q", "scales")}, str(out_dir / "qstate.safetensors"))
    numel = sum(st["q"].numel() for st in states.values())
    avg_bits = sum(st["q"].numel() * qc["bits"] + st["scales"].numel() * 16 for st in states.values()) / numel
    meta = {"scheme": scheme, **qc, "symmetric": True, "scale_dtype_stored": "float32", "avg_bits_fp16_scales": avg_bits,
            "layers": {n: {"shape": list(st["q"].shape), "groups": st["scales"].shape[1], "rel_err": st["rel_err"]}
                       for n, st in states.items()}}
    write_json(out_dir / "quant.json", meta)
    total = sum(z.numel() for z in zeros.values())
    return {"scheme": scheme, "method": qc["method"], "bits": qc["bits"], "group_size": qc["group_size"],
            "targets": len(targets), "nm_sparse": was_nm, "nm_violations": 0 if was_nm else violations,
            "target_sparsity": sum(int(z.sum()) for z in zeros.values()) / total, "avg_bits": avg_bits,
            "rel_weight_err": sum(st["rel_err"] for st in states.values()) / len(states),
            "calib_samples": qc["calib_samples"] if hessians else 0, "wall_s": time.time() - t0}
