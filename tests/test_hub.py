"""minillm.hub: local directories, hub ids (offline here), and the converted demo model."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from minillm import hub
from minillm.hub import download_demo_model, resolve_model
from tests.demo import demo_model_dir


def _tiny_config_dir(path: Path) -> str:
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1).save_pretrained(path)
    return str(path)


def test_local_directory_is_returned_as_is(tmp_path):
    path = _tiny_config_dir(tmp_path / "ckpt")
    assert resolve_model(path) == path


@pytest.mark.parametrize("name", ["./no-such-dir", "/no/such/dir", "~/no-such-minillm-dir"])
def test_local_looking_path_without_config_names_the_path(name):
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        resolve_model(name)


def test_existing_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}.*config.json"):
        resolve_model(str(tmp_path))


def test_hub_id_offline_says_how_to_pass_a_local_directory(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    with pytest.raises(ValueError, match="hub is unreachable") as e:
        resolve_model("minillm-tests/no-such-model")
    assert "local directory" in str(e.value) and "model=None" in str(e.value)


def test_hub_connection_error_is_a_value_error(monkeypatch):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(ValueError, match="hub is unreachable"):
        resolve_model("org/model")


def test_hub_is_asked_for_checkpoint_files_only(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        (tmp_path / "model.safetensors").touch()
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model("org/model") == str(tmp_path)
    (repo_id, patterns), = calls
    assert repo_id == "org/model"
    assert "*.safetensors" in patterns and "config.json" in patterns
    assert not any(p.endswith((".bin", ".gguf", ".pt")) for p in patterns)


def test_hub_repository_without_safetensors(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(tmp_path))
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        resolve_model("org/pytorch-bin-only")


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILLM_CACHE", str(tmp_path / "a"))
    assert hub.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("MINILLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "minillm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hub.cache_dir() == Path.home() / ".cache" / "minillm"


def test_demo_model_in_cache_is_not_converted_again(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILLM_CACHE", str(tmp_path))
    (tmp_path / hub.DEMO_MODEL).mkdir()
    monkeypatch.setattr(hub, "_fetch_demo_gguf", lambda workdir: pytest.fail("fetched again"))
    assert resolve_model("demo") == str(tmp_path / hub.DEMO_MODEL)


def test_interrupted_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILLM_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "_fetch_demo_gguf", lambda workdir: workdir / "model.gguf")

    def interrupted(gguf_file, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(hub, "convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download_demo_model()
    assert os.listdir(tmp_path) == []


# ---- the real demo model (converted once per machine, then cached) ----


def test_demo_model_directory_is_a_plain_llama_checkpoint():
    path = Path(demo_model_dir())
    assert path.name == hub.DEMO_MODEL
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["eos_token_id"] == 2 and config["tie_word_embeddings"]
    assert config["rms_norm_eps"] == 1e-5
    assert {"model.safetensors", "tokenizer.json", "generation_config.json"} <= set(
        os.listdir(path))


def test_demo_model_answers_paris_through_minillm_as_transformers_does():
    """The README's main job, in-process: `chat` answers Paris, greedy, and its tokens are
    transformers' own on the same converted weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from minillm import LLM, SamplingParams

    path = demo_model_dir()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with LLM(path, device="cpu", dtype="float32", max_model_len=256) as llm:
        ours = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=20))
    assert "Paris" in ours.text

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    assert inputs["input_ids"][0].tolist() == ours.prompt_token_ids
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    theirs = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert ours.token_ids == theirs[:len(ours.token_ids)]  # ours stops at EOS, as they do
    assert "Paris" in tokenizer.decode(theirs, skip_special_tokens=True)
