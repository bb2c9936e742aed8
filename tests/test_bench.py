"""`minillm bench offline`'s pieces that need no GPU: the architecture presets, random
weights, and an engine without a tokenizer."""

from __future__ import annotations

import json
import os

import pytest
import torch

from minillm import LLM, SamplingParams
from minillm.bench import PRESETS, workload, write_preset
from minillm.config import EngineConfig, ModelConfig
from tests.tiny import make_checkpoint


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_write_the_real_architecture(name, tmp_path):
    path = write_preset(name, str(tmp_path))
    cfg = json.load(open(os.path.join(path, "config.json")))
    assert cfg["architectures"] == ["Qwen3ForCausalLM"]
    mc = ModelConfig.from_pretrained(path)
    assert (mc.hidden_size, mc.num_hidden_layers, mc.head_dim) == (
        PRESETS[name]["hidden_size"], PRESETS[name]["num_hidden_layers"], 128)
    assert mc.vocab_size == 151936 and mc.num_key_value_heads == 8


def test_qwen3_0_6b_has_its_published_size(tmp_path):
    """0.6B (0.44B without the tied embedding): counted from the preset, not hard-coded."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(write_preset("qwen3-0.6b", str(tmp_path)))
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(cfg)
    assert 0.59e9 < sum(p.numel() for p in model.parameters()) < 0.61e9


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="random-weights"):
        write_preset("qwen3-1000b")


def test_workload_is_seeded_and_in_range():
    a = workload(16, (100, 1024), (100, 1024), 151936, seed=0)
    assert a == workload(16, (100, 1024), (100, 1024), 151936, seed=0)
    assert all(100 <= len(p) <= 1024 for p in a[0]) and all(100 <= n <= 1024 for n in a[1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("q")), "qwen3")


def test_dummy_weights_replace_the_checkpoint(checkpoint):
    real = LLM(checkpoint, device="cpu", num_kvcache_blocks=32)
    dummy = LLM(checkpoint, device="cpu", num_kvcache_blocks=32, load_format="dummy")
    a = dict(real.engine.runner.model.named_parameters())
    b = dict(dummy.engine.runner.model.named_parameters())
    assert a.keys() == b.keys()
    qkv = next(k for k in a if "qkv" in k)
    assert not torch.equal(a[qkv], b[qkv]) and 0.015 < b[qkv].std().item() < 0.025
    norm = next(k for k in b if k.endswith("norm.weight"))
    assert torch.equal(b[norm], torch.ones_like(b[norm]))
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    assert len(dummy.generate([[1, 2, 3]], params, use_tqdm=False)[0].token_ids) == 4


def test_skip_tokenizer_init_takes_token_ids_only(checkpoint):
    llm = LLM(checkpoint, device="cpu", num_kvcache_blocks=32, skip_tokenizer_init=True)
    assert llm.engine.tokenizer is None
    out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=3, ignore_eos=True),
                       use_tqdm=False)[0]
    assert len(out.token_ids) == 3 and out.text == ""
    with pytest.raises(ValueError, match="skip_tokenizer_init"):
        llm.generate(["text"], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="stop strings"):
        llm.generate([[1, 2]], SamplingParams(max_tokens=2, stop=["x"]))
    with pytest.raises(ValueError, match="chat template"):
        llm.chat([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("field, value", [("load_format", "pt"), ("skip_tokenizer_init", 1)])
def test_bad_load_options_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        EngineConfig(**{field: value})
