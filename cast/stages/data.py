"""`cast data`: corpus splits (by document), tokenizer, packed token streams."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .. import data as D
from ..io import atomic_dir


def dataset_name(cfg: dict) -> str:
    src = cfg["data"]["source"]
    if src == "gensim_wiki":
        return "wiki"
    if src == "hf":
        return re.sub(r"[^A-Za-z0-9]+", "_", cfg["data"]["hf"]["path"].split("/")[-1]).strip("_").lower()
    return "local"


def run(cfg: dict, out_dir: str | Path) -> dict:
    dcfg = cfg["data"]
    splits = D.load_corpus(dcfg)
    result = {"dataset": dataset_name(cfg), "documents": {k: len(v) for k, v in splits.items()}}
    with atomic_dir(out_dir) as tmp:
        import datasets

        dd = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
        dd.save_to_disk(str(tmp / "corpus"))
        texts = {k: [d["text"] for d in v] for k, v in splits.items()}
        if dcfg["tokenizer"]["path"]:
            tok = D.load_tokenizer(dcfg["tokenizer"]["path"], cfg["trust_remote_code"])
        else:
            tok = D.train_bpe_tokenizer(texts["train"], dcfg["tokenizer"]["vocab_size"])
        tok.save_pretrained(str(tmp / "tokenizer"))
        streams = {"train": D.encode_stream(tok, texts["train"]),
                   "validation": D.encode_joined(tok, texts["validation"]),
                   "test": D.encode_joined(tok, texts["test"])}
        for k, arr in streams.items():
            np.save(tmp / f"tokens_{k}.npy", arr)
        if dcfg["source"] == "gensim_wiki":
            import gensim

            (tmp / "ATTRIBUTION.md").write_text(D.ATTRIBUTION.format(version=gensim.__version__, file=D.WIKI_FILE))
        vocab = len(tok)
        result.update(vocab_size=vocab, tokens={k: int(len(v)) for k, v in streams.items()},
                      unigram_ppl_test=D.unigram_ppl(streams["train"], streams["test"], vocab),
                      tokenizer=str(Path(out_dir).resolve() / "tokenizer"))
    return result


def cli(cfg: dict, args, tracker=None) -> dict:
    return run(cfg, args.out)
