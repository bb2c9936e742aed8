"""Configuration: one `EngineConfig` for the engine, one `SamplingParams` per request.

Both are dataclasses validated once, in `__post_init__`. Every error is a `ValueError` that
names the field, the value it got and the range it allows, so a bad argument fails before any
work starts. Values the engine derives (the model's shape from its `config.json`, KV sizes) are
computed here, in one place, and nowhere else.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PREFIX_CACHES = ("radix", "hash")
ATTENTION_BACKENDS = ("auto", "torch", "triton", "flash_attn", "flashinfer")
LOAD_FORMATS = ("auto", "dummy")
MAX_BLOCK_SIZE = 1024  # the largest page any backend we target uses is 256; leave headroom
MAX_LOGPROBS = 20  # the OpenAI API's limit for top logprobs


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name}={value!r} is invalid: {allowed}")


def _check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    """An int (not a bool) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        _fail(name, value, "must be an integer")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else str(lo)
        hi_s = "inf" if hi is None else str(hi)
        _fail(name, value, f"must be in [{lo_s}, {hi_s}]")


def _check_real(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        _fail(name, value, "must be a finite number")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(name, value, "must be True or False")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(name, value, f"must be one of {', '.join(repr(c) for c in choices)}")


# --------------------------------------------------------------------------------------------
# The model's shape, read from config.json
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """What the engine needs to know about a checkpoint, read from its `config.json`.

    Field names follow transformers, so a reader can match them against any `config.json`.
    """

    architecture: str  # e.g. "Qwen3ForCausalLM", "LlamaForCausalLM"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int  # < num_attention_heads means grouped-query attention
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # biases on q/k/v projections (Qwen2 has them)
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str | None = None

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Build from a parsed `config.json` (missing optional keys take transformers' defaults)."""
        archs = cfg.get("architectures") or [cfg.get("model_type", "unknown")]
        heads = cfg["num_attention_heads"]
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        rope_theta = cfg.get("rope_theta")
        rope_scaling = cfg.get("rope_scaling")
        rope_params = cfg.get("rope_parameters")  # transformers >= 5 nests rope settings here
        if isinstance(rope_params, dict):
            rope_theta = rope_theta or rope_params.get("rope_theta")
            if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
                rope_scaling = dict(rope_params)
        return cls(
            architecture=archs[0],
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta or 10000.0),
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", archs[0] == "Qwen2ForCausalLM")),
            eos_token_ids=eos_ids,
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
        )

    @classmethod
    def from_pretrained(cls, model_dir: str) -> ModelConfig:
        """Read `config.json` from a local checkpoint directory."""
        path = os.path.join(model_dir, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"model={model_dir!r} is invalid: no config.json in that directory")
        with open(path) as f:
            return cls.from_dict(json.load(f))


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


@dataclass
class EngineConfig:
    """Every knob of the engine, validated once; `LLM(...)` keyword arguments land here.

    `model_config` is read from `<model>/config.json` when `model` is a local directory and it
    was not given. Tests and notebooks that need no weights pass `model=None` and, if they want
    model-dependent checks, a `ModelConfig` directly.
    """

    model: str | None = None  # local checkpoint directory or hub id; None: none needed
    device: str = "auto"  # "cpu" | "cuda" | "auto" (cuda when available)
    dtype: str = "auto"  # "float32" | "bfloat16" | "float16" | "auto" (bf16 GPU, fp32 CPU)
    tensor_parallel_size: int = 1  # ranks the model is split over
    enforce_eager: bool = False  # True: never capture CUDA graphs
    # Launch step N+1 before step N's tokens are read back; None: on with one CUDA device
    overlap_schedule: bool | None = None
    max_num_seqs: int = 256  # most sequences in one batch (and running at once)
    max_num_batched_tokens: int = 16384  # token budget of one step (prefill chunks + decodes)
    max_model_len: int = 4096  # prompt + completion, capped by max_position_embeddings
    kvcache_block_size: int = 16  # tokens per KV block (a page)
    num_kvcache_blocks: int | None = None  # None: sized by the runner from memory
    enable_prefix_caching: bool = True  # reuse KV of prompts that share a prefix
    prefix_cache: str = "radix"  # "radix" (SGLang's tree) | "hash" (vLLM's chained hashes)
    attention_backend: str = "auto"  # "torch" | "triton" | "flash_attn" | "flashinfer" | "auto"
    seed: int = 0  # seeds sampling of requests that carry no seed of their own
    enable_chunked_prefill: bool = True  # split prompts longer than the step's token budget
    gpu_memory_utilization: float = 0.9  # share of GPU memory the engine may fill
    cpu_kvcache_bytes: int = 1 << 30  # CPU KV-cache budget when num_kvcache_blocks is None
    load_format: str = "auto"  # "auto": the checkpoint's safetensors | "dummy": random weights
    skip_tokenizer_init: bool = False  # True: no tokenizer; prompts are token ids, no text out
    model_config: ModelConfig | None = None  # derived from config.json when not given
    eos_token_ids: tuple[int, ...] = field(default=())  # derived: the model's EOS ids

    def __post_init__(self) -> None:
        if self.model is not None and not isinstance(self.model, str):
            _fail("model", self.model, "must be a path, a hub id or None")
        _check_choice("device", self.device, DEVICES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_int("tensor_parallel_size", self.tensor_parallel_size, 1)
        _check_bool("enforce_eager", self.enforce_eager)
        if self.overlap_schedule is not None:
            _check_bool("overlap_schedule", self.overlap_schedule)
            if self.overlap_schedule and self.tensor_parallel_size > 1:
                _fail("overlap_schedule", True, "needs tensor_parallel_size=1 (the other ranks "
                      "would need each step's sampled tokens on their own devices)")
        _check_int("max_num_seqs", self.max_num_seqs, 1)
        _check_int("max_model_len", self.max_model_len, 1)
        _check_int("max_num_batched_tokens", self.max_num_batched_tokens, 1)
        _check_int("kvcache_block_size", self.kvcache_block_size, 1, MAX_BLOCK_SIZE)
        bs = self.kvcache_block_size
        if bs & (bs - 1):
            _fail("kvcache_block_size", bs, f"must be a power of two in [1, {MAX_BLOCK_SIZE}]")
        _check_bool("enable_prefix_caching", self.enable_prefix_caching)
        _check_choice("prefix_cache", self.prefix_cache, PREFIX_CACHES)
        _check_choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        _check_int("seed", self.seed, 0)
        _check_bool("enable_chunked_prefill", self.enable_chunked_prefill)
        _check_real("gpu_memory_utilization", self.gpu_memory_utilization)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            _fail("gpu_memory_utilization", self.gpu_memory_utilization, "must be in (0, 1]")
        _check_int("cpu_kvcache_bytes", self.cpu_kvcache_bytes, 1)
        _check_choice("load_format", self.load_format, LOAD_FORMATS)
        _check_bool("skip_tokenizer_init", self.skip_tokenizer_init)

        if self.model_config is None and self.model is not None and os.path.isdir(self.model):
            self.model_config = ModelConfig.from_pretrained(self.model)
        mc = self.model_config
        if mc is not None:
            if self.max_model_len > mc.max_position_embeddings:
                # The model was never trained past this; vLLM derives the same cap.
                self.max_model_len = mc.max_position_embeddings
            if not self.eos_token_ids:
                self.eos_token_ids = mc.eos_token_ids
            self._check_tensor_parallel(mc)
        if not isinstance(self.eos_token_ids, (list, tuple)):
            _fail("eos_token_ids", self.eos_token_ids, "must be a list of token ids")
        for t in self.eos_token_ids:
            _check_int("eos_token_ids[...]", t, 0)
        self.eos_token_ids = tuple(self.eos_token_ids)

        if self.max_num_batched_tokens < self.max_num_seqs:
            _fail(
                "max_num_batched_tokens",
                self.max_num_batched_tokens,
                f"must be >= max_num_seqs={self.max_num_seqs} (each running sequence decodes "
                "one token per step)",
            )
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            _fail(
                "max_num_batched_tokens",
                self.max_num_batched_tokens,
                f"must be >= max_model_len={self.max_model_len} when enable_chunked_prefill is "
                "False (a whole prompt must fit in one step)",
            )
        if self.num_kvcache_blocks is not None:
            need = self.max_blocks_per_seq
            _check_int("num_kvcache_blocks", self.num_kvcache_blocks, 1)
            if self.num_kvcache_blocks < need:
                _fail(
                    "num_kvcache_blocks",
                    self.num_kvcache_blocks,
                    f"must be >= {need} to hold one sequence of max_model_len="
                    f"{self.max_model_len} tokens in blocks of {bs} (or lower max_model_len)",
                )

    def _check_tensor_parallel(self, mc: ModelConfig) -> None:
        tp = self.tensor_parallel_size
        if mc.num_attention_heads % tp:
            _fail(
                "tensor_parallel_size",
                tp,
                f"must divide num_attention_heads={mc.num_attention_heads}",
            )
        if mc.intermediate_size % tp:
            _fail("tensor_parallel_size", tp,
                  f"must divide intermediate_size={mc.intermediate_size}")
        kv = mc.num_key_value_heads
        if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
            _fail(
                "tensor_parallel_size",
                tp,
                f"must divide num_key_value_heads={kv}, or be a multiple of it (kv heads are "
                "then replicated)",
            )

    # ---- derived values: computed here and only here ----

    @property
    def max_blocks_per_seq(self) -> int:
        """KV blocks one sequence of `max_model_len` tokens needs (the block table's width)."""
        return -(-self.max_model_len // self.kvcache_block_size)

    @property
    def num_kv_heads_per_rank(self) -> int:
        """KV heads each tensor-parallel rank stores (replicated if fewer than ranks)."""
        if self.model_config is None:
            raise ValueError("num_kv_heads_per_rank needs model_config (no model was given)")
        return max(1, self.model_config.num_key_value_heads // self.tensor_parallel_size)

    def kv_bytes_per_token(self, dtype: str) -> int:
        """Bytes of K and V that one token occupies on one rank, over all layers."""
        mc = self.model_config
        if mc is None:
            raise ValueError("kv_bytes_per_token needs model_config (no model was given)")
        _check_choice("dtype", dtype, tuple(DTYPE_BYTES))
        per_layer = 2 * self.num_kv_heads_per_rank * mc.head_dim * DTYPE_BYTES[dtype]
        return per_layer * mc.num_hidden_layers

    def kv_bytes_per_block(self, dtype: str) -> int:
        """Bytes of one KV block on one rank, over all layers."""
        return self.kv_bytes_per_token(dtype) * self.kvcache_block_size

    def blocks_for_budget(self, num_bytes: int, dtype: str) -> int:
        """How many KV blocks fit in `num_bytes` (the CPU budget, or the GPU's free memory)."""
        return num_bytes // self.kv_bytes_per_block(dtype)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


@dataclass
class SamplingParams:
    """How to pick tokens for one request, and when to stop. `temperature=0.0` is greedy.

    The ranges follow vLLM and the OpenAI API, so a server can pass requests straight through.
    """

    temperature: float = 1.0  # 0: greedy; higher: flatter distribution
    top_k: int = -1  # keep the k most likely tokens; -1: all
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p
    min_p: float = 0.0  # drop tokens less likely than min_p * p(most likely)
    max_tokens: int = 64  # most tokens to generate
    min_tokens: int = 0  # EOS and stop_token_ids cannot end the request before this many
    ignore_eos: bool = False  # keep going past EOS (benchmarks)
    stop: str | list[str] | None = None  # stop strings; the text is cut before them
    stop_token_ids: list[int] | None = None  # extra token ids that end the request
    seed: int | None = None  # per-request seed: same seed, same tokens, whatever the batch
    repetition_penalty: float = 1.0  # >1 discourages tokens already in prompt or output
    presence_penalty: float = 0.0  # subtracted once from tokens already generated
    frequency_penalty: float = 0.0  # subtracted per occurrence in the generated tokens
    logprobs: int | None = None  # return this many top log-probabilities per token

    def __post_init__(self) -> None:
        _check_real("temperature", self.temperature)
        if self.temperature < 0:
            _fail("temperature", self.temperature, "must be >= 0 (0 means greedy)")
        _check_int("top_k", self.top_k)
        if self.top_k == 0 or self.top_k < -1:
            _fail("top_k", self.top_k, "must be -1 (disabled) or >= 1")
        _check_real("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            _fail("top_p", self.top_p, "must be in (0, 1]")
        _check_real("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            _fail("min_p", self.min_p, "must be in [0, 1]")
        _check_int("max_tokens", self.max_tokens, 1)
        _check_int("min_tokens", self.min_tokens, 0)
        if self.min_tokens > self.max_tokens:
            _fail("min_tokens", self.min_tokens, f"must be <= max_tokens={self.max_tokens}")
        _check_bool("ignore_eos", self.ignore_eos)
        self.stop = self._normalize_stop(self.stop)
        if self.stop_token_ids is not None:
            if not isinstance(self.stop_token_ids, (list, tuple)):
                _fail("stop_token_ids", self.stop_token_ids, "must be a list of token ids")
            for t in self.stop_token_ids:
                _check_int("stop_token_ids[...]", t, 0)
            self.stop_token_ids = list(self.stop_token_ids)
        if self.seed is not None:
            _check_int("seed", self.seed)
        _check_real("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            _fail("repetition_penalty", self.repetition_penalty, "must be > 0 (1 means off)")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check_real(name, value)
            if not -2.0 <= value <= 2.0:
                _fail(name, value, "must be in [-2, 2]")
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, 0, MAX_LOGPROBS)

    @staticmethod
    def _normalize_stop(stop: Any) -> list[str]:
        if stop is None:
            return []
        items = [stop] if isinstance(stop, str) else stop
        if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
            _fail("stop", stop, "must be a string or a list of strings")
        if any(s == "" for s in items):
            _fail("stop", stop, "must not contain empty strings")
        return list(items)

    @property
    def greedy(self) -> bool:
        """True when the most likely token is always taken."""
        return self.temperature == 0.0
