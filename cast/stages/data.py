"""`cast data`: corpus splits (by document), one tokenizer, packed token streams. Runs once per
distinct tokenizer (cast.tokenizers); the split depends on the data config only, so every
tokenizer's folder holds the same documents."""
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


CONFIG = "config"  # run(tokenizer=CONFIG): data.tokenizer.path (a trained BPE if unset)


def run(cfg: dict, out_dir: str | Path, tokenizer: str | None = CONFIG) -> dict:
    """tokenizer: a hub id or local folder, None for a BPE trained on the train split."""
    dcfg = cfg["data"]
    src = dcfg["tokenizer"]["path"] if tokenizer == CONFIG else tokenizer
    splits = D.load_corpus(dcfg)
    result = {"dataset": dataset_name(cfg), "documents": {k: len(v) for k, v in splits.items()},
              "tokenizer_source": src or "bpe (trained on the train split)"}
    with atomic_dir(out_dir) as tmp:
        import datasets

        dd = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
        dd.save_to_disk(str(tmp / "corpus"))
        texts = {k: [d["text"] for d in v] for k, v in splits.items()}
        if src:
            tok = D.load_tokenizer(src, cfg["trust_remote_code"])
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
                      bytes={k: len(D.joined_text(texts[k]).encode("utf-8")) for k in ("validation", "test")},
                      unigram_ppl_test=D.unigram_ppl(streams["train"], streams["test"], vocab),
                      tokenizer=str(Path(out_dir).resolve() / "tokenizer"))
    return result


def cli(cfg: dict, args, tracker=None) -> dict:
    from ..tokenizers import BPE

    tok = CONFIG if args.tokenizer is None else None if args.tokenizer == BPE else args.tokenizer
    return run(cfg, args.out, tokenizer=tok)
