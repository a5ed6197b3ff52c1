"""Model presets, loading with clear errors, safetensors export."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import looks_local
from .io import InputError, atomic_dir


def llama_config(spec: dict, vocab_size: int, tok=None):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec.get("num_kv_heads", spec["num_heads"]),
        max_position_embeddings=spec.get("max_position_embeddings", 512),
        tie_word_embeddings=False,
        bos_token_id=getattr(tok, "bos_token_id", None),
        eos_token_id=getattr(tok, "eos_token_id", None),
        pad_token_id=getattr(tok, "pad_token_id", None),
    )


def build_llama(spec: dict, vocab_size: int, tok=None, seed: int = 0) -> nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(spec, vocab_size, tok))


def non_embedding_params(model: nn.Module) -> int:
    """Parameters outside the input embedding and the LM head (the N of scaling laws)."""
    skip = set()
    for mod in (model.get_input_embeddings(), model.get_output_embeddings()):
        if mod is not None:
            skip.update(id(p) for p in mod.parameters())
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def check_model_dir(path: str | Path) -> Path:
    """A model directory must hold config.json and safetensors weights (we never unpickle)."""
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"model directory not found: {p}")
    if not (p / "config.json").exists():
        raise InputError(f"not a model directory (no config.json): {p}")
    if not any(p.glob("*.safetensors")):
        raise InputError(f"no safetensors weights in {p} (pickled checkpoints are not loaded)")
    return p


def load_model(path: str, dtype=torch.float32, trust_remote_code: bool = False, local_only: bool | None = None):
    """AutoModelForCausalLM from a local dir (validated) or a hub id; safetensors only."""
    from transformers import AutoModelForCausalLM

    is_local = looks_local(path) if local_only is None else local_only
    if is_local:
        check_model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - one line naming the path, not a deep traceback
        first = str(e).splitlines()[0] if str(e) else ""
        raise InputError(f"cannot load model from {path}: {type(e).__name__}: {first}") from None
    return model


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checkpoint_dtype(path: str | Path) -> torch.dtype | None:
    """The dtype a local checkpoint is stored in: its config.json (`dtype`, or `torch_dtype` before
    transformers 5), else its first safetensors tensor; None if neither tells."""
    import json

    p = Path(path)
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    name = cfg.get("dtype") or cfg.get("torch_dtype")
    if isinstance(name, str) and name in DTYPES:
        return DTYPES[name]
    files = sorted(p.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        with safe_open(str(files[0]), "pt") as f:
            key = next(iter(f.keys()), None)
            code = f.get_slice(key).get_dtype() if key else None
        return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(code)
    return None


def export_dtype(cfg: dict, size: str) -> torch.dtype:
    """What a size's models are saved in: `models.<size>.dtype`; `auto` keeps a checkpoint's own
    dtype (presets: float32). Training and pruning compute in float32 either way."""
    spec = cfg["models"][size]
    if spec.get("dtype", "auto") != "auto":
        return DTYPES[spec["dtype"]]
    if "pretrained" in spec and looks_local(spec["pretrained"]):
        return checkpoint_dtype(Path(spec["pretrained"]).expanduser()) or torch.float32
    if "pretrained" in spec:  # a hub id: its config in the cache, if there
        from .validation import checkpoint_config

        mc, _ = checkpoint_config(spec["pretrained"])
        name = (mc or {}).get("dtype") or (mc or {}).get("torch_dtype")
        return DTYPES.get(name, torch.float32)
    return torch.float32


def save_model(model: nn.Module, tokenizer, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Atomic safetensors export that AutoModelForCausalLM and lm-eval load by path, in `dtype`
    (default: the model's own). Files get the modes any other output gets (the umask)."""
    if dtype is not None and any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        model = model.to(dtype)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("config key 'device': cuda requested but no GPU is visible")
    return torch.device(name)
