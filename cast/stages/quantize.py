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

from ..errors import CastError, ConfigError
from ..hessian import Hessian
from ..io import write_json
from ..layerwise import calibration_windows, run_layerwise
from ..models import checkpoint_dtype, pick_device, save_model
from ..quant import quantize_targets
from ..sparsity import SparsityError, assert_zeros_kept, find_targets, keep_masks, nm_status, weight_matrix
from .common import load_dense, tokenizer_of, train_tokens


def scheme_config(cfg: dict, scheme: str) -> dict:
    schemes = cfg["quantize"]["schemes"]
    if scheme not in schemes:
        raise ConfigError(f"unknown quantization scheme {scheme!r}; defined in 'quantize.schemes': {', '.join(schemes)}")
    return schemes[scheme]


def quantize_model(cfg: dict, qc: dict, model, targets: dict, data_dir, dev) -> dict:
    """Quantize every target in place; per layer {"q", "scales", "rel_err"}. GPTQ's Hessians come from
    the shared layer-wise runner on seeded windows of the train split (the one-shot methods'
    protocol), every layer calibrated on the unquantized model's activations (sequential=False)."""
    args = (qc["method"], qc["bits"], qc["group_size"])
    if qc["method"] != "gptq":
        return quantize_targets(targets, *args)
    states = {}

    def apply(name, mod, hess):
        states.update(quantize_targets({name: mod}, *args, {name: hess.value()}, qc["percdamp"], qc["blocksize"]))

    windows = calibration_windows(train_tokens(data_dir), qc["calib_samples"], cfg["train"]["seqlen"], cfg["seed"])
    run_layerwise(model, targets, windows, lambda _n, mod: Hessian(weight_matrix(mod).shape[1], dev), apply,
                  device=dev, batch_size=cfg["evaluate"]["batch_size"], sequential=False)
    return states


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
    kept = keep_masks(targets)
    try:
        states = quantize_model(cfg, qc, model, targets, data_dir, dev)
    except CastError:
        raise
    except ValueError as e:  # the scheme's values (group size, dampening) do not fit this model
        raise ConfigError(f"config key '{key}': {e}") from None
    assert_zeros_kept(targets, kept, f"quantization {scheme}")
    now_nm, violations = nm_status(targets, sp["n"], sp["m"])
    if was_nm and not now_nm:
        raise SparsityError(f"quantization {scheme} broke {sp['n']}:{sp['m']} sparsity: {violations} violating groups")
    model = model.to("cpu")
    save_model(model, tok, out_dir / "model", dtype=checkpoint_dtype(model_dir))  # bf16 in, bf16 out (codes exact in qstate)
    from safetensors.torch import save_file

    save_file({f"{n}.{k}": st[k] for n, st in states.items() for k in ("q", "scales")}, str(out_dir / "qstate.safetensors"))
    numel = sum(st["q"].numel() for st in states.values())
    avg_bits = sum(st["q"].numel() * qc["bits"] + st["scales"].numel() * 16 for st in states.values()) / numel
    meta = {"scheme": scheme, **qc, "symmetric": True, "scale_dtype_stored": "float32", "avg_bits_fp16_scales": avg_bits,
            "layers": {n: {"shape": list(st["q"].shape), "groups": st["scales"].shape[1], "rel_err": st["rel_err"]}
                       for n, st in states.items()}}
    write_json(out_dir / "quant.json", meta)
    total = sum(k.numel() for k in kept.values())
    return {"scheme": scheme, "method": qc["method"], "bits": qc["bits"], "group_size": qc["group_size"],
            "targets": len(targets), "nm_sparse": was_nm, "nm_violations": 0 if was_nm else violations,
            "target_sparsity": sum(int((~k).sum()) for k in kept.values()) / total, "avg_bits": avg_bits,
            "rel_weight_err": sum(st["rel_err"] for st in states.values()) / len(states),
            "calib_samples": qc["calib_samples"] if qc["method"] == "gptq" else 0, "wall_s": time.time() - t0}


def cli(cfg: dict, args, tracker=None) -> dict:
    return run(cfg, args.model, args.data, args.scheme, args.out, tracker=tracker)
