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
# # 06 · The model runner: a prefill and a decode step, taken apart
#
# The scheduler (04) decides which sequences run and how many tokens each computes; the
# model (05) computes. `minillm.runner.ModelRunner` sits between them. It owns the model, the
# KV cache (one tensor for all layers, cut into blocks) and the sampler, and each step it:
#
# 1. `prepare(step_inputs)`: packs the step's new tokens of every sequence into one flat row
#    of `input_ids` and `positions`, and builds the `AttentionMetadata`: where each token's
#    key and value go (`slot_mapping`), where each sequence's earlier keys are
#    (`block_tables`), and how the flat row splits into sequences (`cu_seqlens_q`, `seq_lens`);
# 2. `forward(...)`: runs the model and computes logits for the rows that are sampled;
# 3. samples one token per sequence with the `Sampler`.
#
# `run(batch)` does all three; here they are called one at a time, on the demo model
# (SmolLM2-135M-Instruct) with a deliberately small KV pool: 24 blocks of 4 tokens.
#
# **What you will see:** the flat inputs of a prefill step, a decode step and a mixed step
# with a cached prefix, printed and drawn over the KV pool (which slot each token's key and
# value go to); the keys found in exactly those slots after the forward pass; three requests
# generated to the end; and the sampler's temperature, top-k, top-p and min-p filters on a
# real next-token distribution, with seeded draws that match it.
#
# **Open `minillm/runner.py` beside this notebook**: `prepare` builds the step's tensors,
# `forward` and `run` use them. The metadata it fills is `AttentionMetadata` in
# `minillm/attention/`, whose `torch_backend.py` is the reference backend used here; the
# sampler is `minillm/sampling.py`. Three exercises at the end.

# %%
from minillm.notebook import need, require

require("matplotlib")  # for the figures; if missing, it says what to pip install
# %matplotlib inline
import dataclasses

import torch

from minillm import viz
from minillm.attention.torch_backend import gather_kv
from minillm.config import EngineConfig, SamplingParams
from minillm.hub import resolve_model
from minillm.runner import ModelRunner
from minillm.sampling import SamplingBatch
from minillm.scheduler import Scheduler
from minillm.sequence import Sequence, StepInput
from minillm.tokenizer import Tokenizer

torch.manual_seed(0)
model_dir = resolve_model("demo")  # downloaded and converted on first use (about a minute)

# %% [markdown]
# ## The runner and its KV pool
#
# The KV cache is one zeroed tensor, `[2 (k, v), layers, blocks, block_size, kv_heads,
# head_dim]`; each attention layer holds a view of its own slice. A token's **slot** is
# `block × block_size + offset`: with blocks of 4, slot 13 is block 3, offset 1. The
# attention backend that stores and reads it is `torch` on the CPU: plain PyTorch, the
# reference that every faster backend is tested against.

# %%
# NBVAL_CHECK_OUTPUT
config = EngineConfig(model=model_dir, device="cpu", dtype="float32", kvcache_block_size=4,
                      num_kvcache_blocks=24, max_model_len=64, max_num_seqs=4,
                      max_num_batched_tokens=64, seed=0)
runner = ModelRunner(config)
tokenizer = Tokenizer(model_dir)
print("backend:", runner.backend.name)
print("KV cache:", tuple(runner.kv_cache.shape), f"{runner.kv_cache_bytes() / 2**20:.1f} MiB")

# %% [markdown]
# ## A prefill step
#
# Three requests arrive. The scheduler admits all three in one step and gives each the
# blocks its prompt needs (greedy decoding, so the tokens below are the model's own choice).

# %%
# NBVAL_CHECK_OUTPUT
scheduler = Scheduler(config)
prompts = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):"]
seqs = [Sequence(tokenizer.encode(p), SamplingParams(temperature=0.0, max_tokens=8),
                 seq_id=i) for i, p in enumerate(prompts)]
for seq in seqs:
    scheduler.add(seq)
batch = scheduler.schedule()
print(batch)
for seq in seqs:
    print(f"seq {seq.seq_id}: {[tokenizer.decode([t]) for t in seq.prompt_token_ids]}")

# %% [markdown]
# What crosses from the scheduler to the runner is small: per sequence, the tokens to compute
# this step, the position of the first one, and the block table (`StepInput`; this is also
# all a tensor-parallel worker receives). `prepare` turns them into tensors.

# %%
# NBVAL_CHECK_OUTPUT
inputs = batch.step_inputs()
print(inputs[0])
input_ids, positions, meta = runner.prepare(inputs)
print(viz.step_inputs_text(input_ids, positions, meta, [s.seq_id for s in batch.seqs]))

# %% [markdown]
# The same step drawn. Top: the flat row of 24 tokens, sequence after sequence with no
# padding; `cu_seqlens_q` marks where each sequence's rows begin. Bottom: the KV pool. Each
# token's key and value are written to the slot the `slot_mapping` names, inside the blocks
# of its sequence's block table; the numbers in the slots are the tokens' positions. Seq 0
# needs 5 slots: all of block 0 and the first of block 1.

# %%
viz.draw_step_inputs(input_ids, positions, meta, config.num_kvcache_blocks,
                     [s.seq_id for s in batch.seqs])

# %% [markdown]
# The forward pass computes hidden states for all 24 tokens, but logits only for each
# sequence's last one: the only rows that are sampled. Then the sampler picks a token per
# row from a `SamplingBatch` (the requests' `SamplingParams` as tensors), and the scheduler
# appends it (`postprocess`).

# %%
# NBVAL_CHECK_OUTPUT
logits = runner.forward(inputs, batch.sampled)  # [num_sampled, vocab_size]
print("logits:", tuple(logits.shape))
sampling = SamplingBatch.from_sequences(batch.seqs, vocab_size=logits.shape[-1],
                                        eos_token_ids=config.eos_token_ids)
tokens = runner.sampler(logits, sampling).token_ids.tolist()
print("sampled:", tokens, [tokenizer.decode([t]) for t in tokens])
scheduler.postprocess(batch, tokens)
prefill_logits = logits  # kept for the sampler section below

# %% [markdown]
# The attention backend wrote every layer's keys and values into the pool during the
# forward pass, at exactly the slots of the slot mapping. To attend, a sequence's keys are
# gathered back in order through its block table (`gather_kv`; faster backends read the
# blocks in place).

# %%
# NBVAL_CHECK_OUTPUT
k_pool = runner.kv_cache[0, 0]  # layer 0's keys: [blocks, block_size, kv_heads, head_dim]
filled = k_pool.flatten(0, 1).abs().sum(dim=(1, 2)).nonzero().flatten().tolist()
print("slots holding keys == slot_mapping:", filled == sorted(meta.slot_mapping.tolist()))
keys = gather_kv(k_pool, meta.block_tables[1], meta.seq_lens_cpu[1])
print("seq 1's keys, gathered from blocks", meta.block_tables[1, :2].tolist(), ":",
      tuple(keys.shape), "# [seq_len, kv_heads, head_dim]")

# %% [markdown]
# ## A decode step
#
# Now every sequence computes one token: the one it just sampled, at the next position. Seq 1
# had filled its two blocks exactly (8 tokens), so the scheduler gave it a new block for
# position 8. Each sequence attends to all its earlier keys through its block table: one query
# row, many keys. `max_query_len` is 1, so the backend takes its decode path.

# %%
# NBVAL_CHECK_OUTPUT
batch = scheduler.schedule()
print(batch)
inputs = batch.step_inputs()
input_ids, positions, meta = runner.prepare(inputs)
print(viz.step_inputs_text(input_ids, positions, meta, [s.seq_id for s in batch.seqs]))
print("decode only:", meta.is_decode_only)

# %%
viz.draw_step_inputs(input_ids, positions, meta, config.num_kvcache_blocks,
                     [s.seq_id for s in batch.seqs])

# %%
# NBVAL_CHECK_OUTPUT
out = runner.run(batch, inputs)  # forward + sample, as above
scheduler.postprocess(batch, out.token_ids.tolist())
print("sampled:", [tokenizer.decode([t]) for t in out.token_ids.tolist()])

# %% [markdown]
# ## A mixed step, with a cached prefix
#
# A fourth request arrives that starts with the same four tokens as seq 0. Seq 0's first
# block is full and computed, so the prefix cache holds it: the new request's block table
# starts with that same block, and its prefill computes only the tokens after it (its first
# position is 4, and it attends to more keys than it computes). The step mixes three decodes
# and one prefill, so each sequence's query length differs: this is what `cu_seqlens_q`
# (query rows) and `seq_lens` (keys) are for.

# %%
# NBVAL_CHECK_OUTPUT
late = Sequence(tokenizer.encode("The capital of France is Paris. The capital of Italy is"),
                SamplingParams(temperature=0.0, max_tokens=8), seq_id=3)
scheduler.add(late)
batch = scheduler.schedule()
print(batch)
print("prompt tokens found in the prefix cache:", late.num_cached_tokens)
inputs = batch.step_inputs()
input_ids, positions, meta = runner.prepare(inputs)
print(viz.step_inputs_text(input_ids, positions, meta, [s.seq_id for s in batch.seqs]))

# %%
viz.draw_step_inputs(input_ids, positions, meta, config.num_kvcache_blocks,
                     [s.seq_id for s in batch.seqs])

# %% [markdown]
# The rest of the way with `run`: step until every request is done (8 tokens each, or EOS).
# Finished requests give their blocks back; the full blocks stay in the prefix cache,
# evictable (`~`), for a later request that starts the same way.

# %%
# NBVAL_CHECK_OUTPUT
scheduler.postprocess(batch, runner.run(batch, inputs).token_ids.tolist())
while scheduler.has_unfinished():
    batch = scheduler.schedule()
    scheduler.postprocess(batch, runner.run(batch).token_ids.tolist())
for seq in [*seqs, late]:
    print(f"seq {seq.seq_id} ({seq.finish_reason}): {tokenizer.decode(seq.token_ids)!r}")
print(viz.block_pool_text(scheduler.block_manager))

# %% [markdown]
# ## The sampler on a real distribution
#
# Back to the prefill's logits for seq 1, "Once upon a time, there was a": an open
# continuation, so the model spreads its probability over many tokens. The sampler's stages
# for a request with `temperature=0.8, top_k=10, top_p=0.6, min_p=0.5`, in the order the
# `Sampler` applies them (`sampler_stages` calls `minillm.sampling`'s own functions):
#
# - **temperature** divides the logits: below 1 it sharpens the distribution;
# - **top-k** keeps the k most likely tokens;
# - **top-p** keeps the smallest set of those whose probability reaches p;
# - **min-p** drops tokens less likely than min_p × the most likely one.
#
# Each stage renormalises what is left; hatched bars are what a stage cut.

# %%
params = SamplingParams(temperature=0.8, top_k=10, top_p=0.6, min_p=0.5)
row = prefill_logits[1]  # [vocab_size]


def label(token: int) -> str:
    return repr(tokenizer.decode([token]))


viz.draw_sampler_filters(row, params, token_label=label)

# %% [markdown]
# The same as numbers (`-`: cut):

# %%
print(viz.sampler_filters_text(row, params, n=8, token_label=label))

# %% [markdown]
# ## Greedy, seeded, sampled
#
# Greedy decoding (`temperature=0`) takes the argmax and skips the filters. Otherwise the
# sampler draws from what the filters left, with the exponential race: `argmax(p / q)` with
# `q ~ Exponential(1)` per token is a sample from `p`. A request with a `seed` takes its noise
# from a generator seeded by (seed, tokens generated so far), so it gets the same token
# whatever else is in the batch. Eight requests with seeds 0–7, sampled twice:

# %%
# NBVAL_CHECK_OUTPUT
prompt = seqs[1].prompt_token_ids
greedy = SamplingBatch.from_sequences([Sequence(prompt, SamplingParams(temperature=0.0))],
                                      vocab_size=row.numel())
print("greedy:", label(runner.sampler(row[None], greedy).token_ids.item()))

seeded = [Sequence(prompt, SamplingParams(temperature=0.8, top_k=10, top_p=0.6, min_p=0.5,
                                          seed=s)) for s in range(8)]
batch8 = SamplingBatch.from_sequences(seeded, vocab_size=row.numel())
first = runner.sampler(row.expand(8, -1), batch8).token_ids
again = runner.sampler(row.expand(8, -1), batch8).token_ids
print("seeds 0-7:", [label(t) for t in first.tolist()])
print("the same seeds again, the same tokens:", torch.equal(first, again))
print("allowed by the filters:", sorted(label(t) for t in
                                       viz.sampler_stages(row, params)[-1][1].nonzero()[:, 0]))

# %% [markdown]
# Drawn many times, the tokens come out as often as the filtered distribution says. Only the
# 10 most likely tokens can survive `top_k=10`, so 2,000 draws can use just the 50 largest
# logits: the filters keep the same tokens with the same renormalised probabilities.

# %%
# NBVAL_CHECK_OUTPUT
top_logits, top_ids = row.topk(50)
draws = [Sequence(prompt, SamplingParams(temperature=0.8, top_k=10, top_p=0.6, min_p=0.5,
                                         seed=s)) for s in range(2000)]
picked = runner.sampler(top_logits.expand(2000, -1),
                        SamplingBatch.from_sequences(draws, vocab_size=50)).token_ids
frequency = torch.bincount(picked, minlength=50) / 2000
expected = viz.sampler_stages(top_logits, params)[-1][1]
print("token     expected  drawn")
for i in expected.nonzero()[:, 0].tolist():
    print(f"{label(top_ids[i].item()):<9} {expected[i]:8.2f}  {frequency[i]:5.2f}")
assert (frequency - expected).abs().max() < 0.05
print("drawn frequencies match the filtered distribution (within 0.05)")

# %% [markdown]
# ## Exercises
#
# Work out each answer by hand; the solution cells ask the real runner and sampler. The
# runner's `prepare` only builds tensors, so it can be called with any step inputs.
#
# ### 1 · A slot mapping from a block table
#
# With blocks of 4 tokens, a sequence whose block table is `[7, 2, 9]` has 6 tokens computed
# and this step computes 4 more (positions 6 to 9). Which slots does `prepare` give them?
#
# <details><summary>Solution</summary>
#
# Position `p` goes to `block_table[p // 4] * 4 + p % 4`. Positions 6 and 7 are in logical
# block 1, physical block 2: slots 10 and 11. Positions 8 and 9 are in logical block 2,
# physical block 9: slots 36 and 37. So `[10, 11, 36, 37]`: contiguous within a block, a
# jump between blocks.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "runner")
one = StepInput(seq_id=9, token_ids=(11, 12, 13, 14), start_pos=6, block_table=(7, 2, 9))
_, one_positions, one_meta = runner.prepare([one])
slots = one_meta.slot_mapping.tolist()
print("positions", one_positions.tolist(), "-> slots", slots)
assert slots == [(7, 2, 9)[p // 4] * 4 + p % 4 for p in range(6, 10)] == [10, 11, 36, 37]

# %% [markdown]
# ### 2 · The metadata of a mixed step
#
# One step holds three sequences: a decode of the token at position 20 (block table
# `[0, 1, 2, 3, 4, 5]`), a new 5-token prompt (blocks `[6, 7]`), and a prompt whose first 8
# tokens were found in the prefix cache, computing its last 3 (blocks `[8, 9, 10]`). What are
# `cu_seqlens_q`, `seq_lens`, `max_query_len` and the slot mapping?
#
# <details><summary>Solution</summary>
#
# Query lengths are 1, 5 and 3, so the rows start at `cu_seqlens_q = [0, 1, 6, 9]`. Each
# sequence attends to every key up to its last new token: `seq_lens = [21, 5, 11]`.
# `max_query_len` is 5, so this is not a decode-only step. Slots: position 20 is in block
# `table[5] = 5`, slot 20; the new prompt's positions 0 to 4 are slots 24 to 27 (block 6) and
# 28 (block 7); positions 8 to 10 of the third are in block `table[2] = 10`: slots 40 to 42.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "runner")
mixed = [StepInput(0, (501,), start_pos=20, block_table=(0, 1, 2, 3, 4, 5)),
         StepInput(1, (502, 503, 504, 505, 506), start_pos=0, block_table=(6, 7)),
         StepInput(2, (507, 508, 509), start_pos=8, block_table=(8, 9, 10))]
_, _, mixed_meta = runner.prepare(mixed)
print("cu_seqlens_q", mixed_meta.cu_seqlens_q.tolist(), "| seq_lens",
      mixed_meta.seq_lens.tolist(), "| max_query_len", mixed_meta.max_query_len)
print("slot_mapping", mixed_meta.slot_mapping.tolist())
assert mixed_meta.cu_seqlens_q.tolist() == [0, 1, 6, 9]
assert mixed_meta.seq_lens.tolist() == [21, 5, 11] and mixed_meta.max_query_len == 5
assert not mixed_meta.is_decode_only
assert mixed_meta.slot_mapping.tolist() == [20, 24, 25, 26, 27, 28, 40, 41, 42]

# %% [markdown]
# ### 3 · What top-p and min-p keep
#
# A model gives five tokens the probabilities `[0.5, 0.2, 0.15, 0.1, 0.05]`. With
# `top_p=0.8`, which tokens can be drawn, and with what probabilities? With `min_p=0.35`
# instead?
#
# <details><summary>Solution</summary>
#
# top-p keeps the smallest set of most likely tokens whose probability reaches 0.8: 0.5 + 0.2
# = 0.7 is not enough, 0.5 + 0.2 + 0.15 = 0.85 is. Tokens 0, 1 and 2, renormalised: 0.5 /
# 0.85 ≈ 0.588, 0.2 / 0.85 ≈ 0.235, 0.15 / 0.85 ≈ 0.176. min-p keeps tokens at least 0.35 ×
# 0.5 = 0.175 likely: tokens 0 and 1, with 0.5 / 0.7 ≈ 0.714 and 0.2 / 0.7 ≈ 0.286. The
# seeded draws below never pick anything else.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "runner")
five = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]).log()  # logits of the five tokens
for params, expected in ((SamplingParams(top_p=0.8), [0.5, 0.2, 0.15, 0, 0]),
                         (SamplingParams(min_p=0.35), [0.5, 0.2, 0, 0, 0])):
    kept = viz.sampler_stages(five, params)[-1][1]  # the probabilities the sampler draws from
    expected = torch.tensor(expected) / sum(expected)
    requests = [Sequence([1], dataclasses.replace(params, seed=s)) for s in range(1000)]
    drawn = runner.sampler(five.expand(1000, -1),
                           SamplingBatch.from_sequences(requests, vocab_size=5)).token_ids
    print(f"top_p={params.top_p:g} min_p={params.min_p:g}: keeps",
          [round(p, 3) for p in kept.tolist()], "| drawn:", sorted(set(drawn.tolist())))
    assert torch.allclose(kept, expected, atol=1e-6)
    assert set(drawn.tolist()) == set(expected.nonzero()[:, 0].tolist())

# %% [markdown]
# Next: tensor parallelism (07) splits the same model over several ranks. The
# [quickstart](00_quickstart.ipynb) drives all of it through `LLM`.
