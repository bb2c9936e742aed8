# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Configuration
#
# Every knob of the engine lives in one dataclass, `EngineConfig`, built once, validated once in
# `__post_init__`, and passed down to every part. Each request carries its own
# `SamplingParams`. Both reject a bad value with a `ValueError` that names the field, the value
# and the allowed range, before any work starts.
#
# Sizes that follow from the config (how many KV blocks a sequence may need, how many bytes a
# token's KV takes) are computed in `minillm/config.py` and nowhere else. This notebook shows
# them for a model of Qwen3-0.6B's shape.
#
# **What you will see:** every field of `EngineConfig` with its default; a model's shape as a
# `ModelConfig`; the derived sizes (block table width, KV bytes per token and per block, how
# many blocks a memory budget buys, what tensor parallelism saves per rank); and the error
# each bad value gets. No model weights, no GPU: it runs in seconds.
#
# **Open `minillm/config.py` beside this notebook**: every field has its comment there, and
# `__post_init__` reads top to bottom in the order the checks below fire. Three exercises at
# the end.

# %%
from minillm.notebook import need, require

require("matplotlib")  # for the figure; if missing, it says what to pip install
# %matplotlib inline
import dataclasses

from minillm.config import DTYPE_BYTES, EngineConfig, ModelConfig, SamplingParams

# %% [markdown]
# ## The engine's knobs
#
# No model is needed to build a config: `model=None` is allowed, and the KV pool size
# (`num_kvcache_blocks`) can be given directly instead of being sized from memory.

# %%
# NBVAL_CHECK_OUTPUT
config = EngineConfig(num_kvcache_blocks=1024)
for f in dataclasses.fields(config):
    print(f"{f.name:24s} {getattr(config, f.name)!r}")

# %% [markdown]
# ## A model's shape
#
# The engine reads what it needs from a checkpoint's `config.json` into a `ModelConfig`
# (field names follow transformers). Here we write Qwen3-0.6B's shape by hand: 28 layers,
# 16 query heads sharing 8 KV heads (grouped-query attention), head_dim 128.

# %%
# NBVAL_CHECK_OUTPUT
qwen3_0_6b = ModelConfig(
    architecture="Qwen3ForCausalLM",
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1_000_000.0,
    tie_word_embeddings=True,
    eos_token_ids=(151645,),
)
config = EngineConfig(model_config=qwen3_0_6b, max_model_len=4096, kvcache_block_size=16)
print("eos_token_ids taken from the model:", config.eos_token_ids)

# %% [markdown]
# ## Derived sizes
#
# A block holds the keys and values of `kvcache_block_size` tokens in every layer. One token
# costs `2 (K and V) × kv heads × head_dim × bytes per value × layers`. With GQA only the 8 KV
# heads are stored, not the 16 query heads: half the memory.

# %%
# NBVAL_CHECK_OUTPUT
mc = config.model_config
print(f"max_blocks_per_seq = ceil({config.max_model_len} / {config.kvcache_block_size}) "
      f"= {config.max_blocks_per_seq}")
for dtype in ("float32", "bfloat16"):
    per_token = config.kv_bytes_per_token(dtype)
    print(f"{dtype}: 2 x {config.num_kv_heads_per_rank} kv heads x {mc.head_dim} x "
          f"{DTYPE_BYTES[dtype]} B x {mc.num_hidden_layers} layers = {per_token:,} B per token "
          f"({per_token // 1024} KiB), {config.kv_bytes_per_block(dtype) / 2**20:.2f} MiB "
          "per block")

# %% [markdown]
# How many blocks a memory budget buys, and how many full-length (4096-token) sequences that
# is. The CPU default budget is `cpu_kvcache_bytes` (1 GiB); on a GPU the runner gives what is
# left after the weights, within `gpu_memory_utilization`. KV memory, not compute, is what
# limits how many requests run at once: a 1 GiB float32 budget holds under 5,000 tokens of
# this small model.

# %%
# NBVAL_CHECK_OUTPUT
budgets = {"CPU, 1 GiB, float32": (config.cpu_kvcache_bytes, "float32"),
           "GPU, 8 GiB, bfloat16": (8 * 2**30, "bfloat16"),
           "GPU, 60 GiB, bfloat16": (60 * 2**30, "bfloat16")}
for name, (num_bytes, dtype) in budgets.items():
    blocks = config.blocks_for_budget(num_bytes, dtype)
    tokens = blocks * config.kvcache_block_size
    print(f"{name:22s} {blocks:6,d} blocks = {tokens:9,d} tokens = "
          f"{blocks // config.max_blocks_per_seq:4d} sequences of {config.max_model_len}")

# %% [markdown]
# Tensor parallelism splits the KV heads over ranks, so each rank stores fewer bytes per
# token. With more ranks than KV heads, the heads are replicated (each rank keeps one).

# %%
# NBVAL_CHECK_OUTPUT
tp_sizes = (1, 2, 4, 8, 16)
per_rank = {}
for tp in tp_sizes:
    c = EngineConfig(model_config=qwen3_0_6b, tensor_parallel_size=tp, max_model_len=4096)
    per_rank[tp] = c.kv_bytes_per_token("bfloat16")
    print(f"tp={tp:2d}: {c.num_kv_heads_per_rank} kv heads per rank, "
          f"{per_rank[tp] / 1024:5.1f} KiB per token per rank")

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5, 2.2))
ax.bar([str(tp) for tp in tp_sizes], [b / 1024 for b in per_rank.values()], color="#1f77b4")
ax.set_xlabel("tensor_parallel_size")
ax.set_ylabel("KiB per token per rank")
ax.set_title("Qwen3-0.6B KV cache, bfloat16", fontsize=9)
plt.show()

# %% [markdown]
# ## Validation: errors that say what is wrong
#
# Each bad argument fails in `__post_init__` with the field, the value and what is allowed.
# Some checks involve two fields (chunked prefill off needs a step budget of a whole prompt)
# or the model (the tensor-parallel size must divide the heads).

# %%
# NBVAL_CHECK_OUTPUT
bad_engine_args = [
    dict(kvcache_block_size=12),
    dict(max_num_seqs=0),
    dict(prefix_cache="lru"),
    dict(gpu_memory_utilization=1.5),
    dict(max_num_batched_tokens=128),
    dict(enable_chunked_prefill=False, max_num_batched_tokens=2048),
    dict(num_kvcache_blocks=100),
    dict(model_config=qwen3_0_6b, tensor_parallel_size=3),
]
for kwargs in bad_engine_args:
    try:
        EngineConfig(**kwargs)
    except ValueError as e:
        shown = {k: ("qwen3_0_6b" if k == "model_config" else v) for k, v in kwargs.items()}
        print(f"{shown}\n    -> {e}")

# %% [markdown]
# A `max_model_len` beyond what the model was trained for is capped, not refused (as vLLM
# does):

# %%
# NBVAL_CHECK_OUTPUT
short = dataclasses.replace(qwen3_0_6b, max_position_embeddings=2048)
print(EngineConfig(model_config=short, max_model_len=4096).max_model_len)

# %% [markdown]
# ## Sampling parameters
#
# One `SamplingParams` per request. `temperature=0.0` means greedy; `stop` is normalised to
# a list.

# %%
# NBVAL_CHECK_OUTPUT
print(SamplingParams())
greedy = SamplingParams(temperature=0.0, max_tokens=32, stop="\n\n")
print("greedy:", greedy.greedy, "| stop:", greedy.stop)

# %%
# NBVAL_CHECK_OUTPUT
bad_sampling_args = [
    dict(temperature=-0.5),
    dict(top_p=0.0),
    dict(top_k=0),
    dict(min_p=1.5),
    dict(max_tokens=0),
    dict(min_tokens=10, max_tokens=5),
    dict(presence_penalty=3.0),
    dict(stop=["ok", ""]),
    dict(logprobs=50),
]
for kwargs in bad_sampling_args:
    try:
        SamplingParams(**kwargs)
    except ValueError as e:
        print(f"{kwargs}\n    -> {e}")

# %% [markdown]
# ## Exercises
#
# Work each one out on paper (or in a cell of your own) first; the solution cells below check
# the answers with the real `EngineConfig`, so they hold whenever the notebook runs.
#
# ### 1 · Two problems, one error
#
# `EngineConfig(max_num_seqs=512, max_num_batched_tokens=256, num_kvcache_blocks=100)` has two
# problems. Which error do you get, and once that one is fixed, what is the smallest
# `num_kvcache_blocks` the config accepts (defaults elsewhere: `max_model_len=4096`, blocks of
# 16)?
#
# <details><summary>Solution</summary>
#
# `__post_init__` checks in order and stops at the first failure: the step's token budget
# comes before the KV pool, so the error names `max_num_batched_tokens=256` (each of 512
# running sequences decodes one token per step, so a step needs at least 512). With
# `max_num_batched_tokens=512`, the pool must hold one sequence of `max_model_len` tokens:
# ceil(4096 / 16) = 256 blocks. 255 fails, 256 passes.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
try:
    EngineConfig(max_num_seqs=512, max_num_batched_tokens=256, num_kvcache_blocks=100)
    raise AssertionError("expected a ValueError")
except ValueError as e:
    print(e)
    assert str(e).startswith("max_num_batched_tokens=256")

smallest = EngineConfig(max_num_seqs=512, max_num_batched_tokens=512).max_blocks_per_seq
EngineConfig(max_num_seqs=512, max_num_batched_tokens=512, num_kvcache_blocks=smallest)
try:
    EngineConfig(max_num_seqs=512, max_num_batched_tokens=512, num_kvcache_blocks=smallest - 1)
    raise AssertionError("expected a ValueError")
except ValueError as e:
    print(e)
assert smallest == 256

# %% [markdown]
# ### 2 · Capacity with two GPUs
#
# Qwen3-0.6B in bfloat16 with `tensor_parallel_size=2`, blocks of 16. Each of the two GPUs has
# 16 GiB left for the KV cache after the weights. How many bytes does one token's KV take on
# one rank, how many blocks fit, and how many sequences of 4,096 tokens can be in flight at
# once?
#
# <details><summary>Solution</summary>
#
# Each rank stores 8 / 2 = 4 kv heads: 2 (K and V) × 4 × 128 × 2 B × 28 layers = 57,344 B per
# token, 917,504 B per block of 16. 16 GiB / 917,504 B = 18,724 blocks (rounded down). A
# 4,096-token sequence needs 256 blocks, so 73 of them fit. Both ranks hold the same block
# ids (each for its own heads), so the pool is 18,724 blocks, twice what one 16 GiB GPU holds.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "qwen3_0_6b")
tp2 = EngineConfig(model_config=qwen3_0_6b, tensor_parallel_size=2, max_model_len=4096,
                   kvcache_block_size=16)
per_token = 2 * 4 * 128 * 2 * 28  # by hand
blocks = tp2.blocks_for_budget(16 * 2**30, "bfloat16")
print(f"{tp2.kv_bytes_per_token('bfloat16'):,} B per token, {blocks:,} blocks, "
      f"{blocks // tp2.max_blocks_per_seq} sequences of 4096")
assert tp2.kv_bytes_per_token("bfloat16") == per_token
assert blocks == 16 * 2**30 // (per_token * 16) == 18724
assert blocks // tp2.max_blocks_per_seq == 73
one_gpu = EngineConfig(model_config=qwen3_0_6b, max_model_len=4096)
assert blocks == 2 * one_gpu.blocks_for_budget(16 * 2**30, "bfloat16")

# %% [markdown]
# ### 3 · The cap comes first
#
# `EngineConfig(max_model_len=4096, num_kvcache_blocks=128)` fails: 128 blocks of 16 hold only
# 2,048 tokens. Does it still fail when `model_config` is a model trained on 2,048 positions
# (`max_position_embeddings=2048`)? Why?
#
# <details><summary>Solution</summary>
#
# It passes. `__post_init__` reads the model first and caps `max_model_len` at the model's
# `max_position_embeddings` (2,048), and only then checks the pool against
# `max_blocks_per_seq`, which is derived from the capped length: ceil(2048 / 16) = 128. Derived
# sizes always follow the final, validated values.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "qwen3_0_6b")
try:
    EngineConfig(max_model_len=4096, num_kvcache_blocks=128)
    raise AssertionError("expected a ValueError")
except ValueError as e:
    print("no model:", e)
trained_2k = dataclasses.replace(qwen3_0_6b, max_position_embeddings=2048)
capped = EngineConfig(model_config=trained_2k, max_model_len=4096, num_kvcache_blocks=128)
print("model of 2,048 positions: max_model_len", capped.max_model_len,
      "| max_blocks_per_seq", capped.max_blocks_per_seq)
assert (capped.max_model_len, capped.max_blocks_per_seq) == (2048, 128)

# %% [markdown]
# Next: [02 · Sequences](02_sequences.ipynb), the state of one request as it moves through
# the engine.
