"""open_model and save_checkpoint: layouts, config parsing, lazy tensors, clear errors."""
import json
import re

import pytest
import torch

from rmsnorm_triton import open_model
from rmsnorm_triton.loading import INDEX_NAME, save_checkpoint

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "rms_norm_eps": 1e-5,
         "hidden_size": 16}


def _tensors():
    return {"model.norm.weight": torch.randn(16).to(torch.bfloat16),
            "model.layers.0.input_layernorm.weight": torch.randn(16),
            "model.embed_tokens.weight": torch.randn(8, 16).half()}


@pytest.mark.parametrize("shards, write_index", [(1, True), (3, False), (3, True)],
                         ids=["single", "shards", "index"])
def test_every_layout_reads_back_every_tensor(tmp_path, shards, write_index):
    tensors = _tensors()
    save_checkpoint(tmp_path, LLAMA, tensors, shards=shards, write_index=write_index)
    assert (tmp_path / INDEX_NAME).exists() == (shards > 1 and write_index)
    assert len(list(tmp_path.glob("*.safetensors"))) == shards
    model = open_model(tmp_path)
    assert sorted(model.keys()) == sorted(tensors)
    for key, want in tensors.items():
        assert model.has_tensor(key)
        got = model.get_tensor(key)
        assert got.dtype == want.dtype and got.device.type == "cpu" and torch.equal(got, want)
    assert not model.has_tensor("model.nope.weight")
    assert model.tp_context is None


def test_tensors_move_to_the_models_device_or_the_one_asked(tmp_path, device):
    save_checkpoint(tmp_path, LLAMA, _tensors())
    model = open_model(tmp_path, device=device)
    assert model.get_tensor("model.norm.weight").device.type == device
    assert model.get_tensor("model.norm.weight", device="meta").device.type == "meta"


def test_tensors_are_read_on_demand(tmp_path):
    save_checkpoint(tmp_path, LLAMA, _tensors())
    model = open_model(tmp_path)
    new = torch.arange(16.0).to(torch.bfloat16)
    save_checkpoint(tmp_path, LLAMA, {**_tensors(), "model.norm.weight": new})
    assert torch.equal(model.get_tensor("model.norm.weight"), new)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    save_checkpoint(tmp_path, LLAMA, _tensors(), shards=2)
    save_checkpoint(tmp_path, LLAMA, _tensors(), shards=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        INDEX_NAME]


def test_save_refuses_bad_shard_counts(tmp_path):
    with pytest.raises(ValueError, match=r"shards must be an int in \[1, 3\].*got 4"):
        save_checkpoint(tmp_path, LLAMA, _tensors(), shards=4)


def test_missing_key_names_key_and_directory(tmp_path):
    save_checkpoint(tmp_path, LLAMA, _tensors())
    with pytest.raises(KeyError, match=re.escape(f"'model.nope.weight' not found in {tmp_path}")):
        open_model(tmp_path).get_tensor("model.nope.weight")


# ---- config.json ------------------------------------------------------------------------------

def _open_with(tmp_path, config):
    save_checkpoint(tmp_path, config, _tensors())
    return open_model(tmp_path).config


@pytest.mark.parametrize("config, eps", [
    (LLAMA, 1e-5),
    ({"architectures": ["LlamaForCausalLM"], "rms_norm_eps": 1}, 1.0),
    ({"architectures": ["Gemma3ForConditionalGeneration"],
      "text_config": {"model_type": "gemma3_text", "rms_norm_eps": 3e-6}}, 3e-6),
    ({"architectures": ["Gemma3ForCausalLM"]}, 1e-6),
    ({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}}, 1e-6),
], ids=["top-level", "int", "text_config", "gemma3-default", "gemma3-model-type"])
def test_norm_eps(tmp_path, config, eps):
    got = _open_with(tmp_path, config).norm_eps
    assert got == eps and type(got) is float


@pytest.mark.parametrize("config, words", [
    ({"architectures": ["LlamaForCausalLM"]}, "has no rms_norm_eps .*LlamaForCausalLM"),
    ({"architectures": ["Gemma2ForCausalLM"], "rms_norm_eps": None}, "has no rms_norm_eps"),
    ({"rms_norm_eps": "1e-6"}, "rms_norm_eps must be a finite number >= 0, got '1e-6'"),
    ({"rms_norm_eps": -1e-6}, "rms_norm_eps must be a finite number >= 0, got -1e-06"),
])
def test_bad_or_missing_eps(tmp_path, config, words):
    with pytest.raises(ValueError, match=words):
        _open_with(tmp_path, config)


@pytest.mark.parametrize("config, bias", [
    (LLAMA, 0.0),
    ({"architectures": ["GemmaForCausalLM"], "rms_norm_eps": 1e-6}, 1.0),
    ({"model_type": "gemma2", "rms_norm_eps": 1e-6}, 1.0),
    ({"architectures": ["Gemma3ForConditionalGeneration"], "text_config": {}}, 1.0),
    ({"text_config": {"model_type": "gemma3_text", "rms_norm_eps": 1e-6}}, 1.0),
    ({"architectures": ["Gemma3nForConditionalGeneration"], "rms_norm_eps": 1e-6}, 0.0),
    ({"architectures": ["Qwen3ForCausalLM"], "rms_norm_eps": 1e-6}, 0.0),
], ids=["llama", "gemma", "gemma2-type", "gemma3", "gemma3-text", "gemma3n", "qwen3"])
def test_norm_constant_bias(tmp_path, config, bias):
    assert _open_with(tmp_path, config).arch.lm.norm_constant_bias == bias


def test_hidden_size_from_top_level_or_text_config(tmp_path):
    assert _open_with(tmp_path, LLAMA).hidden_size == 16
    cfg = {"rms_norm_eps": 1e-6, "text_config": {"hidden_size": 32}}
    assert _open_with(tmp_path, cfg).hidden_size == 32


# ---- errors that name the file -----------------------------------------------------------------

def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        open_model(tmp_path / "nope")


def test_missing_config(tmp_path):
    save_checkpoint(tmp_path, LLAMA, _tensors())
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config.json is missing"):
        open_model(tmp_path)


@pytest.mark.parametrize("text, words", [("{not json", "config.json is not valid JSON"),
                                         ("[1, 2]", "config.json must hold a JSON object")])
def test_malformed_config(tmp_path, text, words):
    save_checkpoint(tmp_path, LLAMA, _tensors())
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=words):
        open_model(tmp_path)


def test_no_safetensors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    with pytest.raises(FileNotFoundError, match=r"has no \*.safetensors file"):
        open_model(tmp_path)


@pytest.mark.parametrize("index, words", [
    ("{oops", "index.json is not a JSON object"),
    ('["a"]', "index.json is not a JSON object"),
    ('{"metadata": {}}', "must have a \"weight_map\" object .* got NoneType"),
    ('{"weight_map": {"a": 3}}', "must have a \"weight_map\" object"),
    ('{"weight_map": {"a": "missing.safetensors"}}', "names shard.* missing.safetensors"),
])
def test_malformed_index(tmp_path, index, words):
    save_checkpoint(tmp_path, LLAMA, _tensors(), shards=2)
    (tmp_path / INDEX_NAME).write_text(index)
    with pytest.raises(ValueError, match=words):
        open_model(tmp_path)


def test_corrupt_safetensors_names_the_file(tmp_path):
    save_checkpoint(tmp_path, LLAMA, _tensors())
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00garbage")
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors"):
        open_model(tmp_path)


def test_a_key_in_two_shards_without_index_is_ambiguous(tmp_path):
    save_checkpoint(tmp_path / "a", LLAMA, _tensors())
    save_checkpoint(tmp_path / "b", LLAMA, _tensors())
    (tmp_path / "b" / "model.safetensors").rename(tmp_path / "a" / "other.safetensors")
    with pytest.raises(ValueError, match=r"in both model.safetensors and other.safetensors"):
        open_model(tmp_path / "a")
