"""Tiny local checkpoints of the architectures users bring (GPT-2, OPT, LLaMA, Qwen2, Mistral), each
saved with `save_pretrained` and its own tokenizer (a small byte-level BPE trained here), so the
"your own checkpoint" paths run offline. Random init: the tests check plumbing, not quality."""
from __future__ import annotations

from pathlib import Path

import torch

HIDDEN, INTER, POSITIONS = 32, 64, 128


def _configs(vocab: int) -> dict:
    from transformers import GPT2Config, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

    common = {"vocab_size": vocab, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}
    rope = {"hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": POSITIONS}
    return {
        "gpt2": GPT2Config(n_embd=HIDDEN, n_inner=INTER, n_layer=2, n_head=2, n_positions=POSITIONS, **common),
        "opt": OPTConfig(hidden_size=HIDDEN, ffn_dim=INTER, num_hidden_layers=2, num_attention_heads=2,
                         word_embed_proj_dim=HIDDEN, max_position_embeddings=POSITIONS, **common),
        "llama": LlamaConfig(tie_word_embeddings=False, **rope, **common),
        "qwen2": Qwen2Config(tie_word_embeddings=True, **rope, **common),
        "mistral": MistralConfig(sliding_window=32, tie_word_embeddings=False, **rope, **common),
    }


ARCHS = ("gpt2", "opt", "llama", "qwen2", "mistral")


def build(root: Path, texts: list[str], archs=ARCHS, bf16: str = "qwen2", padded: str = "opt", seed: int = 0) -> dict:
    """Save each architecture under root/<arch> with its own BPE (vocabulary 300 + 8 per architecture,
    so no two tokenizers are alike); `bf16` is saved in bfloat16, `padded` has 13 embedding rows more
    than its tokenizer has tokens. Returns {arch: folder}."""
    from transformers import AutoModelForCausalLM

    from cast.data import train_bpe_tokenizer

    out = {}
    for i, arch in enumerate(archs):
        tok = train_bpe_tokenizer(texts, 300 + 8 * i)
        vocab = len(tok) + (13 if arch == padded else 0)
        cfg = _configs(vocab)[arch]
        cfg.bos_token_id = cfg.eos_token_id = tok.eos_token_id
        cfg.pad_token_id = tok.pad_token_id
        torch.manual_seed(seed + i)
        model = AutoModelForCausalLM.from_config(cfg)
        if arch == bf16:
            model = model.to(torch.bfloat16)
        folder = Path(root) / arch
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        out[arch] = folder
    return out
