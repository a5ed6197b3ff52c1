"""Your own checkpoint: one regression test per defect a new user hit with real architectures."""
from __future__ import annotations

import copy
import json
import os
import stat

import pytest
import torch
import yaml

from cast.config import ConfigError, resolve_config
from cast.sparsity import check_model, find_targets, hard_prune_, input_dim_of, weight_of

from tiny_archs import build

TARGETS = [r"\.(c_attn|c_proj|c_fc|q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|fc1|fc2|out_proj)$"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from cast.data import wiki_articles

    texts = [d["text"] for d in wiki_articles(200, 12)]
    return build(tmp_path_factory.mktemp("ckpts"), texts)


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_inner=64, n_layer=1, n_head=2, n_positions=32))


def _cfg(**train):
    raw = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "config", "test.yaml")))
    cfg = resolve_config(raw)
    cfg["train"].update(seqlen=16, batch_size=4, warmup_steps=0, checkpoint_every=0, log_every=1, **train)
    return cfg


# -- layout of GPT-2's Conv1D: robust to weight scaling and to wrappers --------------------------------
def test_conv1d_keeps_its_input_axis_with_scales_attached_and_under_fsdp():
    from cast.weight_scaling import attach_scales

    model = _gpt2()
    targets = find_targets(model, TARGETS, [], 4)
    attach_scales(targets, 2)
    assert all(type(m).__name__ == "ParametrizedConv1D" and input_dim_of(m) == 0 for m in targets.values())
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29531", rank=0, world_size=1)
    try:
        mod = next(iter(find_targets(_gpt2(), TARGETS, [], 4).values()))
        fully_shard(mod)
        assert type(mod).__name__.startswith("FSDP") and input_dim_of(mod) == 0
    finally:
        dist.destroy_process_group()


def test_cast_with_scaling_exports_exact_2_4_along_gpt2_inputs():
    """Was: once scaled, Conv1D looked like Linear, masks ran along outputs and the export failed."""
    import numpy as np
    from accelerate import Accelerator

    from cast.methods.cast_train import train_cast

    cfg, model = _cfg(), _gpt2()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    targets = find_targets(model, TARGETS, [], 4)
    tokens = np.random.default_rng(0).integers(0, 64, 2000).astype(np.uint16)
    train_cast(model, targets, cfg, {**cfg["methods"]["cast"], "t1": 2}, teacher=teacher, tokens=tokens, budget=4 * 16 * 6,
               method="cast", accelerator=Accelerator(cpu=True))
    for name, mod in targets.items():
        w = weight_of(mod).detach().t()  # (out, in): groups of 4 consecutive inputs
        assert int(((w.reshape(-1, 4) != 0).sum(1) > 2).sum()) == 0, name
    assert sum(check_model(model, targets, 2, 4).values()) == 0


# -- pruned entries are +0.0 bit for bit ------------------------------------------------------------------
def test_hard_prune_writes_positive_zeros():
    lin = torch.nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight.copy_(-torch.rand(4, 8) - 0.1)  # all negative: a product by the mask would give -0.0
    hard_prune_({"l": lin}, 2, 4)
    zeros = lin.weight == 0
    assert int(zeros.sum()) == 16 and not bool(torch.signbit(lin.weight[zeros]).any())


# -- exports: dtype kept, modes follow the umask ---------------------------------------------------------
def test_bf16_checkpoint_stays_bf16_and_files_follow_the_umask(ckpts, tmp_path):
    from cast.models import checkpoint_dtype, export_dtype, load_model, save_model

    cfg = {"models": {"q": {"pretrained": str(ckpts["qwen2"]), "dtype": "auto"},
                      "l": {"pretrained": str(ckpts["llama"]), "dtype": "auto"},
                      "f": {"pretrained": str(ckpts["qwen2"]), "dtype": "float32"}}}
    assert export_dtype(cfg, "q") == torch.bfloat16 and export_dtype(cfg, "l") == torch.float32
    assert export_dtype(cfg, "f") == torch.float32  # the config says otherwise
    model = load_model(str(ckpts["qwen2"]))  # computes in float32
    old = os.umask(0o022)
    try:
        out = save_model(model, None, tmp_path / "m", dtype=export_dtype(cfg, "q"))
    finally:
        os.umask(old)
    assert checkpoint_dtype(out) == torch.bfloat16
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


# -- config time: positions and vocabulary of a checkpoint ------------------------------------------------
def test_checkpoint_positions_come_from_its_config(micro_raw, ckpts):
    micro_raw["models"] = {"g": {"pretrained": str(ckpts["gpt2"])}}
    micro_raw["run"].update(sizes=["g"], method_sizes={})
    micro_raw["finetune"]["sizes"] = micro_raw["quantize"]["sizes"] = None
    cfg = resolve_config(micro_raw)
    assert "max_position_embeddings" not in cfg["models"]["g"]  # not a silent 512
    micro_raw["evaluate"]["ppl_seqlens"] = [129]
    with pytest.raises(ConfigError, match=r"evaluate.ppl_seqlens.0.*n_positions=128 of models.g"):
        resolve_config(micro_raw)
    micro_raw["evaluate"]["ppl_seqlens"] = [64]
    micro_raw["finetune"]["seqlen"] = 200
    with pytest.raises(ConfigError, match=r"finetune.seqlen.*200 exceeds n_positions=128"):
        resolve_config(micro_raw)


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(micro_raw, ckpts):
    micro_raw["models"] = {"l": {"pretrained": str(ckpts["llama"]), "tokenizer": str(ckpts["mistral"])}}
    micro_raw["run"].update(sizes=["l"], method_sizes={})
    micro_raw["finetune"]["sizes"] = micro_raw["quantize"]["sizes"] = None
    with pytest.raises(ConfigError, match=r"models.l.tokenizer.*token ids up to 33\d.*vocab_size=316"):
        resolve_config(micro_raw)
    micro_raw["models"]["l"]["tokenizer"] = str(ckpts["gpt2"])  # 300 tokens into 316 rows: fine
    resolve_config(micro_raw)


def test_each_model_gets_its_own_tokenizer_folder(micro_raw, ckpts):
    from cast import tokenizers

    micro_raw["models"].update(g={"pretrained": str(ckpts["gpt2"])}, o={"pretrained": str(ckpts["opt"])},
                               g2={"pretrained": str(ckpts["gpt2"])})
    micro_raw["run"]["sizes"] = ["xs", "g", "o", "g2"]
    cfg = resolve_config(micro_raw)
    assert tokenizers.ids(cfg) == {"bpe": None, "gpt2": str(ckpts["gpt2"]), "opt": str(ckpts["opt"])}
    assert [tokenizers.id_of(cfg, s) for s in cfg["run"]["sizes"]] == ["bpe", "gpt2", "opt", "gpt2"]


# -- plain-text corpora hold many documents --------------------------------------------------------------
@pytest.mark.parametrize("rule,expected", [
    ({"split": "file", "group_chars": 10, "separator": "----"}, ["a a a\n\nbb bb\n\ncc\n----\ndd dd dd"]),
    ({"split": "paragraphs", "group_chars": 6, "separator": "----"}, ["a a a\n\nbb bb", "cc\n----\ndd dd dd"]),
    ({"split": "separator", "group_chars": 10, "separator": "----"}, ["a a a\n\nbb bb\n\ncc", "dd dd dd"]),
])
def test_text_file_documents(rule, expected):
    from cast.data import text_documents

    assert text_documents("a a a\n\nbb bb\n\ncc\n----\ndd dd dd\n", rule) == expected


def test_one_large_text_file_is_a_corpus(tmp_path):
    from cast.data import load_corpus

    paras = [f"Paragraph {i} " + "word " * 60 for i in range(40)]
    (tmp_path / "big.txt").write_text("\n\n".join(paras))
    dcfg = {"source": "files", "files": [str(tmp_path / "big.txt")], "text_column": "text", "min_chars": 100,
            "max_documents": None, "val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 0,
            "txt": {"split": "paragraphs", "group_chars": 600, "separator": "----"}}
    splits = load_corpus(dcfg)
    assert sum(map(len, splits.values())) == 20  # 40 paragraphs of ~320 characters, two per document


# -- the tokens actually trained -----------------------------------------------------------------------
def test_sparsify_records_the_tokens_it_trained(micro_data, micro_teacher, tmp_path):
    from cast.stages import sparsify

    cfg, data = micro_data
    res = sparsify.run(cfg, "xs", "cast", "1.2k", micro_teacher, data, tmp_path / "out")
    assert res["budget_tokens"] == 1200 and res["steps"] == 2 and res["tokens"] == 2 * 8 * 64  # whole batches
    assert json.loads((tmp_path / "out" / "mask_stats.json").read_text())["violations"] == 0
