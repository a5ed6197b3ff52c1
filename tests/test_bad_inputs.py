"""Bad files: each gives one clear line naming the path (no deep traceback)."""
import json
import subprocess
import sys

import pytest
import torch

from cast.config import ConfigError, load_config, resolve_config
from cast.data import load_corpus, load_tokenizer, load_tokens
from cast.io import InputError, read_json
from cast.models import load_model, save_model


def _model_dir(tmp_path, llama_factory):
    return save_model(llama_factory(), None, tmp_path / "model")


def _no_config(d):
    (d / "config.json").unlink()


def _pickle_only(d):
    (d / "model.safetensors").unlink()
    torch.save({}, d / "pytorch_model.bin")


def _truncated(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _bad_json_config(d):
    (d / "config.json").write_text("{not json")


@pytest.mark.parametrize("breaker,needle", [(_no_config, "no config.json"), (_pickle_only, "no safetensors"),
                                            (_truncated, "cannot load model"), (_bad_json_config, "cannot load model")])
def test_broken_model_dirs(tmp_path, llama_factory, breaker, needle):
    d = _model_dir(tmp_path, llama_factory)
    breaker(d)
    with pytest.raises(InputError) as err:
        load_model(str(d))
    assert needle in str(err.value) and str(d) in str(err.value) and "\n" not in str(err.value)


def _files_cfg(tmp_path, name, content, **extra):
    f = tmp_path / name
    f.write_text(content)
    return {"source": "files", "files": [str(f)], "text_column": "text", "min_chars": 10, "max_documents": None,
            "val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 0, **extra}, f


def test_empty_corpus(tmp_path):
    dcfg, f = _files_cfg(tmp_path, "empty.txt", "")
    with pytest.raises(InputError, match="corpus too small|cannot read"):
        load_corpus(dcfg)


def test_dataset_without_text_column(tmp_path):
    rows = "\n".join(json.dumps({"body": f"document number {i} " * 5}) for i in range(20))
    dcfg, f = _files_cfg(tmp_path, "docs.jsonl", rows)
    with pytest.raises(InputError) as err:
        load_corpus(dcfg)
    assert "no text column 'text'" in str(err.value) and str(f) in str(err.value) and "body" in str(err.value)


def test_local_jsonl_corpus_works(tmp_path):
    rows = "\n".join(json.dumps({"text": f"document number {i} " * 5}) for i in range(30))
    dcfg, _ = _files_cfg(tmp_path, "docs.jsonl", rows)
    splits = load_corpus(dcfg)
    assert sum(len(v) for v in splits.values()) == 30


def test_missing_tokenizer_and_tokens(tmp_path):
    with pytest.raises(InputError, match=str(tmp_path / "tok")):
        load_tokenizer(str(tmp_path / "tok"))
    with pytest.raises(InputError, match=str(tmp_path / "tokens_test.npy")):
        load_tokens(tmp_path, "test")


def test_corrupt_result_json(tmp_path):
    (tmp_path / "result.json").write_text('{"run_id": ')
    with pytest.raises(InputError, match=str(tmp_path / "result.json")):
        read_json(tmp_path / "result.json")


def test_config_file_problems(tmp_path, micro_raw):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("experiment: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    micro_raw["models"]["xs"] = {"pretrained": str(tmp_path / "no_such_model")}
    with pytest.raises(ConfigError, match="models.xs.pretrained.*no_such_model"):
        resolve_config(micro_raw)


def test_missing_tokenizer_path_in_config(micro_raw, tmp_path):
    micro_raw["data"]["tokenizer"] = {"path": str(tmp_path / "missing_tok")}
    with pytest.raises(ConfigError, match="data.tokenizer.path.*missing_tok"):
        resolve_config(micro_raw)


def test_cli_reports_one_line_for_bad_model(tmp_path, micro_data):
    cfg, data = micro_data
    import yaml

    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump({**cfg, "results_dir": str(tmp_path / "r")}))
    proc = subprocess.run([sys.executable, "-m", "cast.cli", "evaluate", "--config", str(cfgfile), "--model",
                           str(tmp_path / "ghost"), "--data", str(data), "--result", str(tmp_path / "e.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"cast evaluate: error: model directory not found: {tmp_path / 'ghost'}"
    assert "Traceback" not in proc.stderr


def test_seqlen_beyond_a_local_checkpoint(micro_raw, tmp_path, llama_factory):
    d = save_model(llama_factory(), None, tmp_path / "ckpt")  # max_position_embeddings 64
    micro_raw["models"]["xs"] = {"pretrained": str(d)}
    micro_raw["run"]["sizes"] = ["xs"]
    micro_raw["evaluate"]["ppl_seqlens"] = [128]
    with pytest.raises(ConfigError, match="evaluate.ppl_seqlens.0.*max_position_embeddings=64"):
        resolve_config(micro_raw)
