"""`cast tasks`: offline lm-eval zero-shot tasks (JSONL + YAML) built from the held-out test split."""
from __future__ import annotations

from pathlib import Path

from ..io import InputError, atomic_dir
from ..zeroshot import build_tasks


def test_documents(data_dir: str | Path) -> list[str]:
    """The test-split articles the data stage saved (datasets.save_to_disk under data_dir/corpus)."""
    corpus = Path(data_dir) / "corpus"
    if not corpus.is_dir():
        raise InputError(f"corpus not found: {corpus} (run the data stage)")
    import datasets

    dd = datasets.load_from_disk(str(corpus))
    if "test" not in dd:
        raise InputError(f"{corpus} has no 'test' split (splits: {', '.join(dd)})")
    return list(dd["test"]["text"])


def run(cfg: dict, data_dir: str | Path, out_dir: str | Path, tracker=None) -> dict:
    z = cfg["zeroshot"]
    docs = test_documents(data_dir)
    with atomic_dir(out_dir) as tmp:  # YAML files point at the final folder, not the temporary one
        return build_tasks(docs, tmp, cfg["seed"], n_mc=z["mc_items"], n_lastword=z["lastword_items"],
                           n_ppl=z["ppl_docs"], final_dir=out_dir)


def cli(cfg: dict, args, tracker=None) -> dict:
    return run(cfg, args.data, args.out)
