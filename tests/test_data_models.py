"""Data stage (splits, tokenizer, packing) and model export."""
import numpy as np
import pytest
import torch

from cast.data import blocks, split_documents, unigram_ppl
from cast.io import InputError


def test_split_is_deterministic_and_disjoint():
    docs = [{"title": f"a{i}", "text": f"text {i}"} for i in range(50)]
    a = split_documents(docs, 0.1, 0.1, seed=3)
    b = split_documents(docs, 0.1, 0.1, seed=3)
    c = split_documents(docs, 0.1, 0.1, seed=4)
    assert a == b and a != c
    titles = {k: {d["title"] for d in v} for k, v in a.items()}
    assert sum(len(v) for v in titles.values()) == 50
    assert not (titles["train"] & titles["test"]) and not (titles["train"] & titles["validation"])
    assert not (titles["validation"] & titles["test"])
    assert len(titles["test"]) == 5 and len(titles["validation"]) == 5


def test_tiny_corpus_is_rejected():
    with pytest.raises(InputError, match="too small"):
        split_documents([{"title": "x", "text": "y"}] * 2, 0.1, 0.1, 0)


def test_blocks_drop_remainder():
    b = blocks(np.arange(10), 3)
    assert b.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    with pytest.raises(InputError):
        blocks(np.arange(2), 3)


def test_unigram_ppl_by_hand():
    # train counts 0:3, 1:1 (+1 smoothing over vocab 2): p0 = 4/6, p1 = 2/6
    got = unigram_ppl(np.array([0, 0, 0, 1]), np.array([0, 1]), 2)
    assert got == pytest.approx(float(np.exp(-(np.log(4 / 6) + np.log(2 / 6)) / 2)))


def test_data_stage_outputs(micro_data):
    import datasets

    from cast.data import load_tokenizer, load_tokens

    cfg, d = micro_data
    dd = datasets.load_from_disk(str(d / "corpus"))
    titles = {k: set(dd[k]["title"]) for k in ("train", "validation", "test")}
    assert not (titles["train"] & titles["test"]) and titles["test"]
    assert (d / "ATTRIBUTION.md").read_text().count("CC BY-SA") >= 1
    tok = load_tokenizer(str(d / "tokenizer"))
    assert len(tok) == cfg["data"]["tokenizer"]["vocab_size"]
    text = "The anarchist movement, in 1936: Spain's revolution!"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # round trip
    test = load_tokens(d, "test")
    joined = "\n\n".join(dd["test"]["text"])
    assert np.array_equal(np.asarray(test), np.asarray(tok(joined, add_special_tokens=False)["input_ids"]))
    train = np.asarray(load_tokens(d, "train"))
    assert (train == tok.eos_token_id).sum() == len(dd["train"])  # one EOS per training document


def test_export_reloads_with_identical_logits(tmp_path, llama_factory):
    from transformers import AutoModelForCausalLM

    from cast.models import load_model, non_embedding_params, save_model

    model = llama_factory()
    save_model(model, None, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    x = torch.randint(0, 64, (2, 10))
    assert torch.equal(model(x).logits, again(x).logits)
    assert non_embedding_params(model) == sum(p.numel() for n, p in model.named_parameters()
                                              if "embed_tokens" not in n and "lm_head" not in n)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 10)  # truncated weights
    with pytest.raises(InputError, match=str(tmp_path / "m")):
        load_model(str(tmp_path / "m"))
    with pytest.raises(InputError, match="model directory not found"):
        load_model(str(tmp_path / "missing"))


def test_wiki_articles_limit_is_the_first_documents_of_the_whole_parse():
    from cast.data import wiki_articles

    whole = wiki_articles(200)
    assert len(whole) > 40 and wiki_articles(200, 40) == whole[:40]
