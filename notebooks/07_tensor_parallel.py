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
# # 07 · Tensor parallelism: one model split over several ranks
#
# With `LLM(model, tensor_parallel_size=N)`, every large weight of the model is cut into N
# pieces, one per **rank** (a process, one per GPU). minillm splits the way Megatron-LM does,
# as vLLM, SGLang and nano-vllm do: attention heads and MLP features are divided between the
# ranks, each rank computes its share of every layer, and two **all-reduces** per layer
# (sums over the ranks) put the pieces back together.
#
# Rank 0 lives in your process: it runs the scheduler and samples. Ranks 1..N-1 are worker
# processes that run the same forward pass each step, told what to compute by one small
# message from rank 0 (`minillm/worker.py`). On GPUs the tensors travel through NCCL; on the
# CPU, as here, through gloo.
#
# **What you will see:** a linear layer split by hand both ways (column- and row-parallel)
# giving the unsplit result, an all-reduce taken apart, which slice of each weight every rank
# holds (drawn for Qwen3-0.6B and Qwen2.5-1.5B), a tiny model run on two CPU ranks giving
# the tokens one rank gives, the size of the per-step control message, and the same ranks
# started by `torchrun`.
#
# **Open `minillm/layers/linear.py` beside this notebook** (125 lines): the sharding rules
# live there, in each parallel layer's `weight_loader`. `minillm/distributed.py` holds the
# process group and `all_reduce`, `minillm/worker.py` the loop ranks 1..N-1 run. Three
# exercises at the end.

# %%
from minillm.notebook import need, require

require("matplotlib")  # for the figures; if missing, it says what to pip install
# %matplotlib inline
import dataclasses
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open

from minillm import LLM, SamplingParams
from minillm.config import EngineConfig, ModelConfig
from minillm.distributed import free_port
from minillm.hub import resolve_model
from minillm.layers import ColumnParallelLinear, RowParallelLinear
from minillm.models.decoder import DecoderMLP
from minillm.sequence import StepInput
from minillm.viz.sharding import (
    all_reduce_text,
    draw_all_reduce,
    draw_shards,
    shard_ranges,
    shards_text,
)
from minillm.worker import StepMessage

# %% [markdown]
# ## Column-parallel: split the outputs
#
# A linear layer computes `y = x · Wᵀ`, its weight stored as `[out_features, in_features]`.
# A **column-parallel** layer gives each rank a band of the weight's *rows*, that is of the
# output features (the name comes from Megatron's `y = x · A`, where `A = Wᵀ` is cut into
# columns). Every rank multiplies the whole input by its band and gets its own slice of `y`,
# with no communication at all.
#
# In this process there is one rank, so `ColumnParallelLinear(8, 6)` is a plain linear layer
# holding the whole weight; two `ColumnParallelLinear(8, 3)` are what two ranks would hold.
# Small integers keep every sum exact.

# %%
# NBVAL_CHECK_OUTPUT
g = torch.Generator().manual_seed(0)
x = torch.randint(-3, 4, (2, 8), generator=g).float()  # [tokens, in_features]
w = torch.randint(-3, 4, (6, 8), generator=g).float()  # [out_features, in_features]

full = ColumnParallelLinear(8, 6)  # one rank: the whole weight
full.weight.data.copy_(w)
ranks = [ColumnParallelLinear(8, 3) for _ in range(2)]  # the shape each of 2 ranks holds
for r, layer in enumerate(ranks):
    layer.weight.data.copy_(w[3 * r : 3 * (r + 1)])  # rank r's rows
ys = [layer(x) for layer in ranks]  # [tokens, 3] each: a slice of the output features
print("each rank's output:", [tuple(y.shape) for y in ys])
print("side by side == unsplit:", torch.equal(torch.cat(ys, dim=-1), full(x)))

# %% [markdown]
# ## Row-parallel: split the inputs, sum the outputs
#
# A **row-parallel** layer gives each rank a band of the weight's *columns*: the input
# features. Each rank multiplies its slice of the input by its band and gets a full-size
# output that is only a *partial sum*; adding the ranks' partials gives `y`. That addition,
# done so that every rank ends up with the total, is the all-reduce
# (`RowParallelLinear.forward` ends in `minillm.distributed.all_reduce`, which does nothing
# with one rank).

# %%
# NBVAL_CHECK_OUTPUT
w = torch.randint(-3, 4, (4, 8), generator=g).float()  # [out_features, in_features]
full = RowParallelLinear(8, 4)
full.weight.data.copy_(w)
ranks = [RowParallelLinear(4, 4) for _ in range(2)]
for r, layer in enumerate(ranks):
    layer.weight.data.copy_(w[:, 4 * r : 4 * (r + 1)])  # rank r's columns
partials = [layer(x[:, 4 * r : 4 * (r + 1)]) for r, layer in enumerate(ranks)]  # [tokens, 4]
print("each rank's partial:", [tuple(p.shape) for p in partials])
print("sum of partials == unsplit:", torch.equal(partials[0] + partials[1], full(x)))

# %% [markdown]
# ## Column, then row: one all-reduce per block
#
# The two kinds come in pairs. In the MLP, `gate_proj` and `up_proj` are column-parallel
# (`MergedColumnParallelLinear`, one weight holding this rank's gate rows and its up rows),
# SiLU-and-multiply works feature by feature on this rank's slice, and `down_proj` is
# row-parallel: it takes exactly the slice this rank already has. The intermediate activation
# never leaves its rank, and one all-reduce at the end restores the hidden state. Attention
# does the same with heads: q/k/v column-parallel by heads, attention per head on its own
# rank, `o_proj` row-parallel. Two all-reduces per layer, each of `[tokens, hidden_size]`.
#
# Here the real `DecoderMLP`, whole and in two halves, its weights loaded through the real
# weight loaders with the halves' slices:

# %%
# NBVAL_CHECK_OUTPUT
shape = ModelConfig(architecture="LlamaForCausalLM", vocab_size=32, hidden_size=8,
                    intermediate_size=12, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=2, head_dim=4, max_position_embeddings=16)
gate, up = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g)
down = torch.randn(8, 12, generator=g)


def load_mlp(mlp: DecoderMLP, rows: slice) -> DecoderMLP:
    """Fill an MLP with the gate/up rows and down columns `rows` of the full weights."""
    mlp.gate_up_proj.weight.weight_loader(mlp.gate_up_proj.weight, gate[rows], 0)
    mlp.gate_up_proj.weight.weight_loader(mlp.gate_up_proj.weight, up[rows], 1)
    mlp.down_proj.weight.weight_loader(mlp.down_proj.weight, down[:, rows])
    return mlp


full_mlp = load_mlp(DecoderMLP(shape), slice(0, 12))
half = dataclasses.replace(shape, intermediate_size=6)  # each of 2 ranks: 6 features
parts = [load_mlp(DecoderMLP(half), slice(6 * r, 6 * (r + 1))) for r in range(2)]
xs = torch.randn(3, 8, generator=g)  # [tokens, hidden]
mlp_partials = [p(xs) for p in parts]  # [tokens, hidden] each, before the all-reduce
print("sum of the halves' outputs == whole MLP:",
      torch.allclose(mlp_partials[0] + mlp_partials[1], full_mlp(xs), atol=1e-5))

# %% [markdown]
# ## An all-reduce taken apart
#
# The row-parallel matmul above, drawn: each rank multiplies its input columns by its weight
# columns, and the all-reduce adds the partial products, leaving the same sum on every rank.
# On the wire, gloo and NCCL usually do it as a ring: a *reduce-scatter* (each rank adds up
# one chunk of the output from everybody's partials) then an *all-gather* (each rank sends
# its finished chunk around), so each rank sends about `2 · (N-1)/N` times the tensor's size,
# whatever N is.

# %%
# NBVAL_CHECK_OUTPUT
print(all_reduce_text(x, w, 2))

# %%
draw_all_reduce(x, w, 2)

# %% [markdown]
# What that costs in a real model: for Qwen3-0.6B (written out below), a decode step of 32
# sequences all-reduces 32 rows of `hidden_size` twice per layer.

# %%
# NBVAL_CHECK_OUTPUT
qwen3_0_6b = ModelConfig(  # Qwen/Qwen3-0.6B's config.json
    architecture="Qwen3ForCausalLM", vocab_size=151936, hidden_size=1024,
    intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
    head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True)
rows, bf16 = 32, 2
per_reduce = rows * qwen3_0_6b.hidden_size * bf16
per_step = 2 * qwen3_0_6b.num_hidden_layers
print(f"{per_step} all-reduces per step, {per_reduce // 1024} KiB each, "
      f"{per_step * per_reduce // 1024} KiB in all")

# %% [markdown]
# ## What each rank holds
#
# `shard_ranges(model_config, tp_size, rank)` says which rows or columns of each checkpoint
# tensor a rank loads; it restates the rules of the layers' `weight_loader`s
# (`minillm/layers/linear.py`, `minillm/layers/embedding.py`), and
# `tests/test_viz_sharding.py` checks it against what two real ranks load. The embedding is
# split by vocabulary: a rank looks up only its own token ids (zeros for the others) and an
# all-reduce assembles the rows. The LM head, tied to it here, computes this rank's slice of
# the logits, and rank 0 gathers the whole vocabulary to sample.
#
# Qwen3-0.6B over 2 ranks: each rank holds half the heads and half the MLP, and so half the
# parameters.

# %%
# NBVAL_CHECK_OUTPUT
print(shards_text(qwen3_0_6b, 2))

# %%
draw_shards(qwen3_0_6b, 2)

# %% [markdown]
# Over 4 ranks, the bands get thinner: 4 query heads and 2 kv heads each.

# %%
draw_shards(qwen3_0_6b, 4)

# %% [markdown]
# ### Fewer kv heads than ranks
#
# With grouped-query attention, every query head reads one kv head: in Qwen2.5-1.5B, 12
# query heads share 2 kv heads, heads 0–5 the first and 6–11 the second. Over 4 ranks there
# is no half of a kv head to give: each rank keeps a whole copy of the kv head its queries
# read, so ranks 0 and 1 both hold kv head 0 (striped below, `×2`). The KV cache then shrinks
# with the ranks only down to one head per rank (notebook 01 computes the bytes).
#
# The rank count must divide the number of query heads, and divide the number of kv heads
# or be a multiple of it; `EngineConfig` says so before anything starts.

# %%
# NBVAL_CHECK_OUTPUT
qwen25_1_5b = ModelConfig(  # Qwen/Qwen2.5-1.5B's config.json
    architecture="Qwen2ForCausalLM", vocab_size=151936, hidden_size=1536,
    intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
    head_dim=128, max_position_embeddings=32768, tie_word_embeddings=True)
print(shards_text(qwen25_1_5b, 4))
try:
    EngineConfig(model_config=qwen25_1_5b, tensor_parallel_size=3)
except ValueError as e:
    print("\ntp=3:", e)

# %%
draw_shards(qwen25_1_5b, 4)

# %% [markdown]
# ## Two CPU ranks, the same tokens as one
#
# Now a real run. We build a tiny Qwen3 with transformers (2 layers, 4 query heads, a single
# kv head, so over 2 ranks the kv head is replicated), seeded, into a temporary directory,
# with the demo model's tokenizer (`resolve_model(None)` fetches it once per machine). Its
# weights are random, so its text is nonsense: what matters is that it is the same.

# %%
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # no progress widget in the stored notebook
demo_dir = resolve_model(None)  # SmolLM2-135M-Instruct: we only borrow its tokenizer
model_dir = tempfile.mkdtemp(prefix="minillm-tp-")
torch.manual_seed(0)
tiny = Qwen3Config(vocab_size=49152, hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                   head_dim=16, max_position_embeddings=512, tie_word_embeddings=True,
                   initializer_range=0.1,  # peaky logits: no near-ties for rounding to flip
                   bos_token_id=1, eos_token_id=2)
Qwen3ForCausalLM(tiny).save_pretrained(model_dir)
for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(demo_dir, name), model_dir)
tiny_config = ModelConfig.from_pretrained(model_dir)

# %%
# NBVAL_CHECK_OUTPUT
print(shards_text(tiny_config, 2))

# %% [markdown]
# The same prompts, greedy, on one rank and on two. `LLM(..., tensor_parallel_size=2)`
# spawns one worker process (rank 1); the workers import everything from `minillm`, so this
# works from a notebook. On CPU the ranks compute in float32 and the sums of the all-reduce
# come out equal to rounding, far below the gap between the two best tokens.

# %%
# NBVAL_CHECK_OUTPUT
prompts = ["Tensor parallelism splits a model", "The capital of France is"]
greedy = SamplingParams(temperature=0.0, max_tokens=12)
engine_args = dict(device="cpu", max_model_len=256, num_kvcache_blocks=32)

with LLM(model_dir, tensor_parallel_size=1, **engine_args) as llm1:
    one = llm1.generate(prompts, greedy, use_tqdm=False)
llm2 = LLM(model_dir, tensor_parallel_size=2, **engine_args)
two = llm2.generate(prompts, greedy, use_tqdm=False)
for a, b in zip(one, two):
    print(f"{a.prompt!r} -> {a.text!r}\n  tp=1: {a.token_ids}\n  tp=2: {b.token_ids}")
print("same tokens:", [a.token_ids for a in one] == [b.token_ids for b in two])

# %% [markdown]
# Rank 0 is this process, so its shard can be inspected: layer 0's fused `qkv_proj` weight is
# exactly rank 0's slices of the checkpoint's `q_proj`, `k_proj` and `v_proj`, as
# `shard_ranges` names them. Rank 1 lives in the worker process listed below.

# %%
# NBVAL_CHECK_OUTPUT
qkv = llm2.engine.runner.model.model.layers[0].self_attn.qkv_proj.weight
mine = shard_ranges(tiny_config, 2, rank=0)
with safe_open(os.path.join(model_dir, "model.safetensors"), framework="pt") as f:
    parts = [f.get_tensor(f"model.layers.0.self_attn.{n}.weight")[mine[n].slices()]
             for n in ("q_proj", "k_proj", "v_proj")]
print("rank 0 qkv_proj:", tuple(qkv.shape), "= q", tuple(parts[0].shape), "+ k",
      tuple(parts[1].shape), "+ v", tuple(parts[2].shape))
print("equal to the checkpoint slices:", torch.equal(qkv, torch.cat(parts)))
print("workers:", [(p.name, p.is_alive()) for p in llm2.engine.workers.processes])

# %% [markdown]
# `close()` (or leaving a `with` block, or the interpreter's exit) sends the workers an exit
# message and waits for them: no process is left behind.

# %%
# NBVAL_CHECK_OUTPUT
llm2.close()
print("child processes left:", multiprocessing.active_children())

# %% [markdown]
# ## The control channel
#
# Each step, rank 0 broadcasts one `StepMessage` to the workers over a gloo group on the CPU:
# the step's `StepInput`s, that is for each sequence the tokens computed this step, where
# they start, and its block table. Workers never see sampling parameters or the token
# history. A decode step of 32 sequences with 1,024 tokens of context each (64 blocks of 16):

# %%
# NBVAL_CHECK_OUTPUT
step = StepMessage([StepInput(seq_id=i, token_ids=(1000 + i,), start_pos=1023,
                              block_table=tuple(range(64 * i, 64 * (i + 1))))
                    for i in range(32)], sampled=[True] * 32)
print(f"{len(step.inputs)} sequences, {len(pickle.dumps(step)):,} bytes pickled")

# %% [markdown]
# `benchmarks/tp_control_overhead.py` times that broadcast between two gloo ranks
# (`benchmarks/results/tp_control_overhead_cpu.json`). On a 2-core CPU host, the median time
# from rank 0's call until the worker held the message was 1.4 ms for this step (1.0 ms for
# one sequence, 2.5 ms for 256), against 0.95 s for one decode forward of the demo model at
# batch 32 on one rank (77 ms at batch 1): 0.15 % of the step at batch 32, 1.3 % at batch 1.
# On a GPU, where that forward takes milliseconds, the same millisecond weighs far more.

# %% [markdown]
# ## torchrun: torch's launcher instead of minillm's
#
# Across machines, minillm does not start the ranks: `torchrun` does, as for any
# `torch.distributed` program.
#
# ```
# torchrun --nproc-per-node 2 -m minillm generate "Hello" --tensor-parallel-size 2 --device cpu
# ```
#
# starts the command twice with `RANK`, `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT` set.
# `minillm.distributed.launched_by_torchrun()` sees them: rank 0 runs the command and joins
# the group through `env://` instead of spawning workers; every other rank skips the command
# and runs `minillm.worker.run_worker()`, the same loop a spawned worker runs. Over two hosts,
# run it on each with `--nnodes 2 --node-rank 0|1 --master-addr <host 0>`.
#
# Here with `python -m torch.distributed.run` (what the `torchrun` script calls), a free
# port, and our tiny model: the text is the one the notebook's rank 0 produced above.

# %%
# NBVAL_CHECK_OUTPUT
command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(free_port()), "-m", "minillm", "generate", prompts[1],
           "--model", model_dir, "--tensor-parallel-size", "2", "--device", "cpu",
           "--max-tokens", "12", "--max-model-len", "256", "--num-kvcache-blocks", "32"]
run = subprocess.run(command, capture_output=True, text=True, timeout=300)
print("exit code:", run.returncode)
print("torchrun's text:", repr(run.stdout.rstrip("\n")))
print("same as LLM's:  ", run.stdout.rstrip("\n") == two[1].text)

# %%
shutil.rmtree(model_dir)

# %% [markdown]
# ## Exercises
#
# Work out each answer by hand; the solution cells check it with `shard_ranges`, which states
# the layers' loading rules (and is tested against what real ranks load).
#
# ### 1 · Which rows of `q_proj` does rank 1 hold?
#
# Qwen3-0.6B (16 query heads and 8 kv heads of 128 dimensions, hidden size 1024) over 2
# ranks. Which rows of the checkpoint's `q_proj` weight (`[2048, 1024]`) does rank 1 load,
# which heads are they, and which rows of `k_proj`? Which part of `o_proj` does it take? Why
# does rank 1's attention need nothing from rank 0?
#
# <details><summary>Solution</summary>
#
# Rows 1024–2047 of `q_proj`: query heads 8–15 (128 rows each). Rows 512–1023 of `k_proj` (and
# of `v_proj`): kv heads 4–7. `o_proj` is row-parallel: rank 1 takes *columns* 1024–2047, the
# inputs that come from its own heads' outputs. With groups of 16 / 8 = 2, query head `h`
# reads kv head `h // 2`, so heads 8–15 read kv heads 4–7: exactly the ones rank 1 holds.
# Attention needs no exchange; only `o_proj`'s partial sums are all-reduced.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "qwen3_0_6b")
rank1 = shard_ranges(qwen3_0_6b, 2, rank=1)
for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
    shard = rank1[name]
    print(f"{name}: {('rows', 'columns')[shard.dim]} {shard.start}-{shard.stop - 1} of "
          f"{shard.shape}, heads {shard.heads[0]}-{shard.heads[1] - 1}")
q_shard, k_shard, o_shard = rank1["q_proj"], rank1["k_proj"], rank1["o_proj"]
assert (q_shard.dim, q_shard.start, q_shard.stop, q_shard.heads) == (0, 1024, 2048, (8, 16))
assert (k_shard.start, k_shard.stop, k_shard.heads) == (512, 1024, (4, 8))
assert (o_shard.dim, o_shard.start, o_shard.stop) == (1, 1024, 2048)
assert {h // 2 for h in range(*q_shard.heads)} == set(range(*k_shard.heads))  # GQA groups

# %% [markdown]
# ### 2 · Fewer kv heads than ranks
#
# Qwen2.5-1.5B (12 query heads, 2 kv heads) over 4 ranks. Which query heads and which kv head
# does rank 3 hold? Which other rank holds the same kv head, and how many kv heads does each
# rank keep in its KV cache?
#
# <details><summary>Solution</summary>
#
# 12 / 4 = 3 query heads per rank: rank 3 holds heads 9–11. Those read kv head 1 (heads 6–11
# share it). A kv head cannot be split, so 4 / 2 = 2 ranks hold each one: ranks 2 and 3 both
# load kv head 1 (rows 128–255 of `k_proj` and `v_proj`), and each rank's KV cache stores one
# kv head per token. Going from 2 to 4 ranks halves the query work per rank but not the KV
# cache per rank.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "qwen25_1_5b")
shards = [shard_ranges(qwen25_1_5b, 4, rank=r) for r in range(4)]
print("rank 3:", "q heads", shards[3]["q_proj"].heads, "| kv heads", shards[3]["k_proj"].heads,
      "| k_proj rows", (shards[3]["k_proj"].start, shards[3]["k_proj"].stop))
same_kv = [r for r in range(4) if shards[r]["k_proj"].heads == shards[3]["k_proj"].heads]
print("ranks holding that kv head:", same_kv)
assert shards[3]["q_proj"].heads == (9, 12) and shards[3]["k_proj"].heads == (1, 2)
assert same_kv == [2, 3] and shards[3]["k_proj"].replicas == 2
tp4 = EngineConfig(model_config=qwen25_1_5b, tensor_parallel_size=4)
assert tp4.num_kv_heads_per_rank == 1

# %% [markdown]
# ### 3 · A vocabulary that does not divide
#
# Many fine-tunes of Llama-2-7B add one padding token: a vocabulary of 32,001. Over 4 ranks,
# how many embedding rows does each rank hold? Which rank looks up token 20,000, and what do
# the other ranks contribute for it? How many zero rows does the last rank carry?
#
# <details><summary>Solution</summary>
#
# The vocabulary is padded to a multiple of the rank count: ceil(32,001 / 4) = 8,001 rows per
# rank, rank `r` holding token ids `8001·r` to `8001·r + 8000`. Token 20,000 is in rank 2's
# range (16,002–24,002); the other ranks output zeros for it, and the all-reduce's sum is
# rank 2's row. The last rank holds ids 24,003–32,000, 7,998 real rows, and 3 zero rows. The
# untied `lm_head` is split the same way; rank 0 gathers the logits and drops the padding.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
llama2_7b_pad = ModelConfig(  # meta-llama/Llama-2-7b-hf's shape, plus one added token
    architecture="LlamaForCausalLM", vocab_size=32001, hidden_size=4096,
    intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, head_dim=128, max_position_embeddings=4096)
embed = [shard_ranges(llama2_7b_pad, 4, rank=r)["embed_tokens"] for r in range(4)]
for r, shard in enumerate(embed):
    print(f"rank {r}: token ids {shard.start}-{shard.stop - 1}, {shard.size} rows "
          f"({shard.padding} zero)")
looks_up = [r for r, shard in enumerate(embed) if shard.start <= 20000 < shard.stop]
print("token 20000 is looked up by rank", looks_up)
assert {shard.size for shard in embed} == {8001} and looks_up == [2]
assert (embed[3].start, embed[3].stop, embed[3].padding) == (24003, 32001, 3)
assert shard_ranges(llama2_7b_pad, 4, rank=3)["lm_head"].padding == 3

# %% [markdown]
# The tests that hold this together: `tests/test_tensor_parallel.py` (two ranks equal one
# for Qwen3 and Llama, kv heads split and replicated, preemption and chunked prefill, a dead
# worker, torchrun) and `tests/test_viz_sharding.py` (each rank loads the slices drawn here).
