"""Which tokenizer each model uses, and the name of its data folder. Light: no torch, no transformers.

A preset (a LLaMA shape trained here) uses `models.<size>.tokenizer`, else `data.tokenizer.path`, else a
byte-level BPE trained on the train split (id `bpe`). A pretrained checkpoint uses
`models.<size>.tokenizer`, else its own (the checkpoint path). Every distinct tokenizer gets one data
folder, results/data/{id}/ (cast.layout), with the same document split: every model is scored on the
same text, and bits per byte compare rows whose tokenizers differ.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

BPE = "bpe"  # the id of the tokenizer trained on the train split


def source(cfg: dict, size: str) -> str | None:
    """The tokenizer a size's models use: a hub id or local folder, or None for the trained BPE."""
    spec = cfg["models"][size]
    if spec.get("tokenizer"):
        return spec["tokenizer"]
    if "pretrained" in spec:
        return spec["pretrained"]
    return cfg["data"]["tokenizer"]["path"]


def _slug(src: str) -> str:
    parts = [p for p in str(src).rstrip("/").split("/") if p]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", parts[-1] if parts else "tokenizer").strip("._") or "tokenizer"


def ids(cfg: dict) -> dict[str, str | None]:
    """{id: source} of every distinct tokenizer of run.sizes, in run.sizes order. Ids are readable
    (the folder or hub name) and unique (a short hash is added where two sources share a name)."""
    srcs = list(dict.fromkeys(source(cfg, s) for s in cfg["run"]["sizes"]))
    names = {src: BPE if src is None else _slug(src) for src in srcs}
    out = {}
    for src in srcs:
        name = names[src]
        if src is not None and (list(names.values()).count(name) > 1 or name == BPE):
            name = f"{name}-{hashlib.sha256(str(src).encode()).hexdigest()[:6]}"
        out[name] = src
    return out


def id_of(cfg: dict, size: str) -> str:
    src = source(cfg, size)
    return next(i for i, s in ids(cfg).items() if s == src)


def max_token_id(path: str | Path) -> int | None:
    """The largest token id of a tokenizer folder's tokenizer.json (vocabulary and added tokens), or
    None if there is no tokenizer.json to read (slow tokenizers: checked when the job loads it)."""
    f = Path(path).expanduser() / "tokenizer.json"
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    vocab = (doc.get("model") or {}).get("vocab") or {}
    if isinstance(vocab, dict):
        top = max(vocab.values(), default=-1)
    else:  # Unigram: a list of [piece, score]; ids are positions
        top = len(vocab) - 1
    added = [t.get("id", -1) for t in doc.get("added_tokens") or []]
    return max([top, *added])
