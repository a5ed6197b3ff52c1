"""Downstream data for sparse fine-tuning: texts from the Lee news corpus in the gensim wheel, a HF
dataset or local files (plain text, or prompt/response pairs joined), split train/test by document."""
from __future__ import annotations

import random

import numpy as np

from .data import bible_chapters, encode_joined, encode_stream, load_local_rows, news_articles, schema_defaults
from .io import InputError


def _rows_to_texts(rows: dict, d: dict, where: str) -> list[str]:
    cols = list(rows)
    if d["prompt_column"]:
        for c in (d["prompt_column"], d["response_column"]):
            if c not in rows:
                raise InputError(f"{where}: no column {c!r}; columns: {cols}")
        return [f"{p}\n{r}" for p, r in zip(rows[d["prompt_column"]], rows[d["response_column"]]) if p or r]
    if d["text_column"] not in rows:
        raise InputError(f"{where}: no text column {d['text_column']!r}; columns: {cols}")
    return [t for t in rows[d["text_column"]] if t]


def load_texts(d: dict, name: str) -> list[str]:
    """Distinct documents of one `finetune.datasets` entry (prompt + newline + response for pair data)."""
    if d["source"] in ("gensim_news", "bible_kjv"):
        texts = [a["text"] for a in (news_articles() if d["source"] == "gensim_news" else bible_chapters())]
    else:
        import datasets

        if d["source"] == "hf":
            where = f"finetune.datasets.{name}: dataset {d['path']}"
            try:
                rows = datasets.load_dataset(d["path"], d["name"], split=d["split"]).to_dict()
            except Exception as e:  # noqa: BLE001 - one line naming the source
                raise InputError(f"cannot load {where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        else:
            where = f"finetune.datasets.{name}: files {d['files']}"
            rows = load_local_rows(d["files"], d.get("txt") or schema_defaults("data", "txt"), d["text_column"], where)
        texts = _rows_to_texts(rows, d, where)
    # exact duplicates dropped (the Lee corpus repeats 7 articles): a copy must not sit in both splits
    texts = list(dict.fromkeys(t.strip() for t in texts if len(t.strip()) >= d["min_chars"]))
    if d.get("max_documents"):
        texts = texts[:d["max_documents"]]
    if len(texts) < 2:
        raise InputError(f"finetune.datasets.{name}: {len(texts)} usable documents (need at least 2)")
    return texts


def split_train_test(texts: list[str], test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Deterministic split by document: a seeded shuffle, the first round(n * test_fraction) are test."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_test = min(max(1, round(len(texts) * test_fraction)), len(texts) - 1)
    test = set(order[:n_test])
    return {"train": [t for i, t in enumerate(texts) if i not in test],
            "test": [t for i, t in enumerate(texts) if i in test]}


def tokenize_splits(tok, splits: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Train: documents + EOS concatenated (training stream); test: joined once (perplexity protocol)."""
    return {"train": encode_stream(tok, splits["train"]), "test": encode_joined(tok, splits["test"])}
