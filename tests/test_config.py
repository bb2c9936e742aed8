"""`minillm.config`: every bad value fails early with a message naming the field and the value;
good values pass; the model's shape is read from a transformers `config.json`; derived sizes."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest

from minillm.config import EngineConfig, ModelConfig, SamplingParams

NAN = float("nan")


def shape(**kw) -> ModelConfig:
    """A model shape without a checkpoint (Qwen3-0.6B's attention: 28 layers, 8 kv heads)."""
    args = dict(architecture="Qwen3ForCausalLM", vocab_size=151936, hidden_size=1024,
                intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                num_key_value_heads=8, head_dim=128, max_position_embeddings=40960)
    args.update(kw)
    return ModelConfig(**args)


def assert_names(err: pytest.ExceptionInfo, field: str, value) -> None:
    msg = str(err.value)
    assert msg.startswith(f"{field}="), msg
    assert repr(value) in msg, msg


# --------------------------------------------------------------------------------------------
# EngineConfig
# --------------------------------------------------------------------------------------------

BAD_ENGINE = [
    ("model", 123),
    ("model", ["dir"]),
    ("device", "tpu"),
    ("device", None),
    ("dtype", "int8"),
    ("dtype", "fp16"),
    ("attention_backend", "xformers"),
    ("prefix_cache", "lru"),
    ("prefix_cache", None),
    ("tensor_parallel_size", 0),
    ("tensor_parallel_size", True),
    ("tensor_parallel_size", 2.0),
    ("enforce_eager", 1),
    ("enforce_eager", "yes"),
    ("max_num_seqs", 0),
    ("max_num_seqs", -3),
    ("max_num_seqs", True),
    ("max_num_seqs", 4.0),
    ("max_num_seqs", "8"),
    ("max_model_len", 0),
    ("max_model_len", False),
    ("max_model_len", 1024.0),
    ("max_num_batched_tokens", 0),
    ("max_num_batched_tokens", True),
    ("max_num_batched_tokens", NAN),
    ("kvcache_block_size", 0),
    ("kvcache_block_size", 3),
    ("kvcache_block_size", 24),
    ("kvcache_block_size", 2048),
    ("kvcache_block_size", True),
    ("kvcache_block_size", 16.0),
    ("num_kvcache_blocks", 0),
    ("num_kvcache_blocks", -1),
    ("num_kvcache_blocks", True),
    ("num_kvcache_blocks", 300.0),
    ("enable_prefix_caching", 1),
    ("enable_prefix_caching", None),
    ("seed", -1),
    ("seed", True),
    ("seed", 0.5),
    ("enable_chunked_prefill", 0),
    ("gpu_memory_utilization", 0.0),
    ("gpu_memory_utilization", -0.5),
    ("gpu_memory_utilization", 1.01),
    ("gpu_memory_utilization", NAN),
    ("gpu_memory_utilization", math.inf),
    ("gpu_memory_utilization", True),
    ("gpu_memory_utilization", "0.9"),
    ("cpu_kvcache_bytes", 0),
    ("cpu_kvcache_bytes", 1.5),
    ("cpu_kvcache_bytes", True),
]


@pytest.mark.parametrize("field, value", BAD_ENGINE)
def test_engine_config_rejects_bad_value(field, value):
    with pytest.raises(ValueError) as err:
        EngineConfig(**{field: value})
    assert_names(err, field, value)


def test_engine_config_defaults_and_edges_pass():
    EngineConfig()
    EngineConfig(kvcache_block_size=1, max_model_len=1, max_num_seqs=1,
                 max_num_batched_tokens=1, num_kvcache_blocks=1)
    EngineConfig(kvcache_block_size=1024, num_kvcache_blocks=4)  # 4096 tokens in 4 blocks
    EngineConfig(enable_chunked_prefill=False, max_model_len=512, max_num_batched_tokens=512)
    EngineConfig(gpu_memory_utilization=1.0, seed=2**40, device="cpu", dtype="bfloat16",
                 attention_backend="triton", prefix_cache="hash")
    EngineConfig(model="Qwen/Qwen3-0.6B")  # a hub id: no local directory, nothing read
    EngineConfig(enable_prefix_caching=False, prefix_cache="hash")


@pytest.mark.parametrize("tokens", [1, 100, 511])
def test_whole_prompt_must_fit_a_step_without_chunked_prefill(tokens):
    with pytest.raises(ValueError) as err:
        EngineConfig(enable_chunked_prefill=False, max_model_len=512,
                     max_num_batched_tokens=tokens, max_num_seqs=1)
    assert_names(err, "max_num_batched_tokens", tokens)
    assert "max_model_len=512" in str(err.value)
    # With chunked prefill on, the same budget is fine: prompts are split into chunks.
    EngineConfig(enable_chunked_prefill=True, max_model_len=512,
                 max_num_batched_tokens=tokens, max_num_seqs=1)


@pytest.mark.parametrize("budget, seqs", [(8, 9), (1, 2), (255, 256)])
def test_budget_must_cover_one_decode_per_sequence(budget, seqs):
    with pytest.raises(ValueError) as err:
        EngineConfig(max_num_batched_tokens=budget, max_num_seqs=seqs)
    assert_names(err, "max_num_batched_tokens", budget)
    assert f"max_num_seqs={seqs}" in str(err.value)
    EngineConfig(max_num_batched_tokens=seqs, max_num_seqs=seqs)


@pytest.mark.parametrize("max_model_len, block_size, blocks", [
    (4096, 16, 255), (4097, 16, 256), (64, 4, 15), (1, 1, 0), (100, 32, 3),
])
def test_pool_must_hold_one_whole_sequence(max_model_len, block_size, blocks):
    with pytest.raises(ValueError) as err:
        EngineConfig(max_model_len=max_model_len, kvcache_block_size=block_size,
                     num_kvcache_blocks=blocks)
    assert_names(err, "num_kvcache_blocks", blocks)
    EngineConfig(max_model_len=max_model_len, kvcache_block_size=block_size,
                 num_kvcache_blocks=blocks + 1)


@pytest.mark.parametrize("heads, kv_heads, tp, ok", [
    (16, 8, 1, True), (16, 8, 2, True), (16, 8, 8, True),
    (16, 8, 16, True), (16, 4, 8, True), (8, 2, 4, True),  # fewer kv heads than ranks: replicas
    (12, 12, 4, True), (6, 6, 6, True),
    (16, 8, 3, False), (16, 8, 32, False), (12, 4, 8, False),  # heads not divisible
    (6, 3, 2, False), (12, 6, 4, False),  # kv heads not divisible
    (6, 2, 3, False), (8, 3, 8, False),  # ranks not a multiple of kv heads
])
def test_tensor_parallel_size_must_divide_heads(heads, kv_heads, tp, ok):
    mc = shape(num_attention_heads=heads, num_key_value_heads=kv_heads)
    if ok:
        EngineConfig(model_config=mc, tensor_parallel_size=tp)
        return
    with pytest.raises(ValueError) as err:
        EngineConfig(model_config=mc, tensor_parallel_size=tp)
    assert_names(err, "tensor_parallel_size", tp)
    assert "heads" in str(err.value)


@pytest.mark.parametrize("value", [5, "ab", ["a"], [-1], [True], [1.0]])
def test_eos_token_ids_rejects_bad_ids(value):
    # eos_token_ids is a field like any other: a bad value is a ValueError naming it.
    with pytest.raises(ValueError) as err:
        EngineConfig(eos_token_ids=value)
    assert str(err.value).startswith("eos_token_ids"), str(err.value)


def test_eos_token_ids_good_values():
    assert EngineConfig(eos_token_ids=[2, 7]).eos_token_ids == (2, 7)
    assert EngineConfig(eos_token_ids=()).eos_token_ids == ()


def test_tensor_parallel_is_unchecked_without_a_model():
    EngineConfig(tensor_parallel_size=3)  # nothing to divide yet


# --------------------------------------------------------------------------------------------
# Derived values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_model_len, block_size, expected", [
    (4096, 16, 256), (4097, 16, 257), (4095, 16, 256), (1, 16, 1), (64, 4, 16), (7, 1, 7),
])
def test_max_blocks_per_seq(max_model_len, block_size, expected):
    cfg = EngineConfig(max_model_len=max_model_len, kvcache_block_size=block_size)
    assert cfg.max_blocks_per_seq == expected


def test_kv_sizes_for_a_known_shape():
    # Qwen3-0.6B: 28 layers x (K and V) x 8 kv heads x 128 dims x 2 bytes = 114688 bytes/token.
    cfg = EngineConfig(model_config=shape(), kvcache_block_size=16)
    assert cfg.num_kv_heads_per_rank == 8
    assert cfg.kv_bytes_per_token("bfloat16") == 28 * 2 * 8 * 128 * 2 == 114688
    assert cfg.kv_bytes_per_token("float16") == 114688
    assert cfg.kv_bytes_per_token("float32") == 2 * 114688
    assert cfg.kv_bytes_per_block("bfloat16") == 16 * 114688
    assert cfg.blocks_for_budget(1 << 30, "bfloat16") == (1 << 30) // (16 * 114688) == 585
    assert cfg.blocks_for_budget(16 * 114688 - 1, "bfloat16") == 0

    tp2 = EngineConfig(model_config=shape(), tensor_parallel_size=2)
    assert tp2.num_kv_heads_per_rank == 4
    assert tp2.kv_bytes_per_token("bfloat16") == 114688 // 2
    # More ranks than kv heads: each rank keeps a replica of one kv head.
    tp16 = EngineConfig(model_config=shape(), tensor_parallel_size=16)
    assert tp16.num_kv_heads_per_rank == 1
    assert tp16.kv_bytes_per_token("float32") == 28 * 2 * 1 * 128 * 4


def test_kv_sizes_need_a_model_and_a_concrete_dtype():
    with pytest.raises(ValueError, match="model_config"):
        EngineConfig().kv_bytes_per_token("float32")
    with pytest.raises(ValueError, match="model_config"):
        _ = EngineConfig().num_kv_heads_per_rank
    with pytest.raises(ValueError) as err:
        EngineConfig(model_config=shape()).kv_bytes_per_token("auto")
    assert_names(err, "dtype", "auto")


def test_model_config_caps_max_model_len_and_gives_eos():
    mc = shape(max_position_embeddings=512, eos_token_ids=(3, 4))
    cfg = EngineConfig(model_config=mc, max_model_len=4096)
    assert cfg.max_model_len == 512
    assert cfg.eos_token_ids == (3, 4)
    assert EngineConfig(model_config=mc, max_model_len=100).max_model_len == 100
    assert EngineConfig(model_config=mc, eos_token_ids=[9]).eos_token_ids == (9,)
    # The capped length is what the pool and budget are checked against.
    EngineConfig(model_config=mc, kvcache_block_size=16, num_kvcache_blocks=32)
    EngineConfig(model_config=mc, enable_chunked_prefill=False, max_num_batched_tokens=512)


# --------------------------------------------------------------------------------------------
# config.json written by transformers
# --------------------------------------------------------------------------------------------


def test_from_pretrained_reads_a_qwen3_config(tmp_path):
    from transformers import Qwen3Config

    Qwen3Config(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=32,  # != 64 / 4
                max_position_embeddings=256, eos_token_id=7, rope_theta=12345.0,
                rms_norm_eps=1e-5, architectures=["Qwen3ForCausalLM"]).save_pretrained(tmp_path)
    cfg = EngineConfig(model=str(tmp_path))
    mc = cfg.model_config
    assert mc is not None
    assert mc.architecture == "Qwen3ForCausalLM"
    assert (mc.num_hidden_layers, mc.num_attention_heads, mc.num_key_value_heads) == (3, 4, 2)
    assert (mc.head_dim, mc.hidden_size, mc.intermediate_size) == (32, 64, 128)
    assert mc.vocab_size == 384
    assert mc.max_position_embeddings == 256
    assert mc.rope_theta == 12345.0
    assert mc.rms_norm_eps == 1e-5
    assert mc.attention_bias is False
    assert cfg.eos_token_ids == mc.eos_token_ids == (7,)
    assert cfg.max_model_len == 256  # the default 4096, capped
    assert cfg.kv_bytes_per_token("float32") == 3 * 2 * 2 * 32 * 4

    with pytest.raises(ValueError) as err:
        EngineConfig(model=str(tmp_path), tensor_parallel_size=8)  # 4 heads
    assert_names(err, "tensor_parallel_size", 8)
    with pytest.raises(ValueError) as err:
        EngineConfig(model=str(tmp_path), kvcache_block_size=16, num_kvcache_blocks=15)
    assert_names(err, "num_kvcache_blocks", 15)  # 256 tokens need 16 blocks of 16
    assert EngineConfig(model=str(tmp_path), kvcache_block_size=16,
                        num_kvcache_blocks=16).max_blocks_per_seq == 16


def test_from_pretrained_reads_a_llama_config(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=8192,
                eos_token_id=[5, 6], tie_word_embeddings=True).save_pretrained(tmp_path)
    cfg = EngineConfig(model=str(tmp_path), max_model_len=1000)
    mc = cfg.model_config
    assert mc is not None
    assert (mc.num_hidden_layers, mc.num_attention_heads, mc.num_key_value_heads) == (2, 6, 3)
    assert mc.head_dim == 8  # hidden_size / heads
    assert mc.vocab_size == 300
    assert mc.tie_word_embeddings is True
    assert cfg.eos_token_ids == (5, 6)
    assert cfg.max_model_len == 1000  # below max_position_embeddings: kept
    EngineConfig(model=str(tmp_path), tensor_parallel_size=3)
    EngineConfig(model=str(tmp_path), tensor_parallel_size=6)  # kv heads replicated
    with pytest.raises(ValueError) as err:
        EngineConfig(model=str(tmp_path), tensor_parallel_size=4)
    assert_names(err, "tensor_parallel_size", 4)


def test_from_dict_fills_transformers_defaults(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(
        model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=8)))
    mc = EngineConfig(model=str(tmp_path)).model_config
    assert mc is not None
    assert mc.architecture == "llama"
    assert mc.num_key_value_heads == 8  # absent: multi-head attention
    assert mc.head_dim == 8
    assert mc.max_position_embeddings == 2048
    assert mc.eos_token_ids == ()
    assert mc.rope_theta == 10000.0


def test_model_directory_without_config_json(tmp_path):
    with pytest.raises(ValueError) as err:
        EngineConfig(model=str(tmp_path))
    assert_names(err, "model", str(tmp_path))


# --------------------------------------------------------------------------------------------
# SamplingParams
# --------------------------------------------------------------------------------------------

BAD_SAMPLING = [
    ("temperature", -0.01),
    ("temperature", -1),
    ("temperature", NAN),
    ("temperature", "1.0"),
    ("temperature", True),
    ("temperature", None),
    ("top_k", 0),
    ("top_k", -2),
    ("top_k", 1.0),
    ("top_k", True),
    ("top_p", 0.0),
    ("top_p", -0.1),
    ("top_p", 1.0001),
    ("top_p", NAN),
    ("top_p", False),
    ("min_p", -0.01),
    ("min_p", 1.5),
    ("min_p", NAN),
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("max_tokens", 16.0),
    ("max_tokens", True),
    ("max_tokens", None),
    ("min_tokens", -1),
    ("min_tokens", 1.0),
    ("min_tokens", 65),  # > max_tokens=64
    ("ignore_eos", 1),
    ("ignore_eos", "no"),
    ("stop", ""),
    ("stop", [""]),
    ("stop", ["ok", 3]),
    ("stop", 5),
    ("stop_token_ids", 5),
    ("stop_token_ids", "12"),
    ("seed", 1.5),
    ("seed", "7"),
    ("seed", True),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("repetition_penalty", NAN),
    ("presence_penalty", 2.01),
    ("presence_penalty", -2.5),
    ("presence_penalty", NAN),
    ("frequency_penalty", 3),
    ("frequency_penalty", -2.01),
    ("frequency_penalty", NAN),
    ("frequency_penalty", "0"),
    ("logprobs", -1),
    ("logprobs", 21),
    ("logprobs", 1.0),
    ("logprobs", True),
]


@pytest.mark.parametrize("field, value", BAD_SAMPLING)
def test_sampling_params_reject_bad_value(field, value):
    with pytest.raises(ValueError) as err:
        SamplingParams(**{field: value})
    assert_names(err, field, value)


@pytest.mark.parametrize("value", [-1, 1.0, True, "3", None])
def test_stop_token_ids_reject_bad_ids(value):
    with pytest.raises(ValueError) as err:
        SamplingParams(stop_token_ids=[1, value])
    assert str(err.value).startswith("stop_token_ids")
    assert repr(value) in str(err.value)


def test_min_tokens_above_max_tokens_names_both():
    with pytest.raises(ValueError) as err:
        SamplingParams(max_tokens=3, min_tokens=5)
    assert_names(err, "min_tokens", 5)
    assert "max_tokens=3" in str(err.value)


def test_sampling_params_good_values_pass_and_normalize():
    assert SamplingParams().greedy is False
    assert SamplingParams(temperature=0.0).greedy is True
    p = SamplingParams(temperature=0, top_k=1, top_p=1.0, min_p=1.0, max_tokens=1,
                       min_tokens=1, stop="END", stop_token_ids=(3, 4), seed=-7,
                       repetition_penalty=1.3, presence_penalty=-2.0, frequency_penalty=2.0,
                       logprobs=20)
    assert p.greedy and p.stop == ["END"] and p.stop_token_ids == [3, 4]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams().stop == []
    SamplingParams(top_p=Fraction(1, 2), min_p=0, logprobs=0, top_k=-1)
    SamplingParams(temperature=2, frequency_penalty=-2)
