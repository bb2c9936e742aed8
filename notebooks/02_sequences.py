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
# # 02 · Sequences: a request's life
#
# A `Sequence` is one request as the engine sees it: its tokens (prompt, then completion), its
# status, its KV block table, and how many of its tokens already have their keys and values
# computed. Everything the scheduler and block manager decide about a request is written there.
#
# ```
#            schedule()                     postprocess(): EOS / max_tokens / ...
# WAITING ─────────────────▶ RUNNING ─────────────────────────────────────────▶ FINISHED
#    ▲                          │
#    └──── PREEMPTED ◀──────────┘  out of KV blocks: blocks freed, recomputed later
# ```
#
# There is no model yet: a real `Scheduler` drives the sequences, and the "model" is
# `minillm.simulate.made_up_token`, a deterministic function of a sequence's tokens.
#
# **What you will see:** one request printed after every step, from WAITING through a
# prefill in two chunks and its decode steps to FINISHED; its block table, drawn; the small
# `StepInput` that crosses to tensor-parallel workers; and a request preempted for lack of KV
# blocks that still produces exactly the tokens it would have produced otherwise.
#
# **Open `minillm/sequence.py` beside this notebook** (156 lines): `Sequence`'s fields are
# the ones printed below. `Scheduler.schedule` and `postprocess` in `minillm/scheduler.py`
# are what move a sequence from one state to the next. Three exercises at the end.

# %%
from minillm.notebook import need, require

require("matplotlib")  # for the figures; if missing, it says what to pip install
# %matplotlib inline
import pickle

from minillm import viz
from minillm.config import EngineConfig, SamplingParams
from minillm.scheduler import Scheduler
from minillm.sequence import Sequence, SequenceStatus
from minillm.simulate import made_up_token, run, step

# %% [markdown]
# ## A new request
#
# A prompt of 10 token ids, greedy, at most 5 new tokens. It starts WAITING, with no blocks
# and nothing computed.

# %%
# NBVAL_CHECK_OUTPUT
params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
seq = Sequence(list(range(101, 111)), params)
print(seq)
print([s.value for s in SequenceStatus])
print("in prefill:", seq.in_prefill, "| tokens without KV yet:", seq.num_uncomputed_tokens)

# %% [markdown]
# ## Admitted, in chunks
#
# A tiny engine: blocks of 4 tokens, 16 blocks, and a budget of 8 tokens per step, so the
# 10-token prompt is prefilled in two chunks (8, then 2).
#
# One step is: `schedule()` picks the sequences and their token counts (a `Batch`), the model
# runner would compute them, and `postprocess()` applies the sampled tokens. A chunk that does
# not finish the prompt samples nothing.

# %%
# NBVAL_CHECK_OUTPUT
config = EngineConfig(max_num_seqs=4, max_num_batched_tokens=8, max_model_len=32,
                      kvcache_block_size=4, num_kvcache_blocks=16)
scheduler = Scheduler(config, trace=True)
scheduler.add(seq)

batch = scheduler.schedule()
print(batch, "| samples a token:", batch.sampled)
scheduler.postprocess(batch, [])
print(seq)

# %% [markdown]
# The second chunk ends the prompt, so the model's output at its last position gives the
# first new token. That token is appended at once, but its own KV is computed by the next
# step (it is the input of the first decode).

# %%
# NBVAL_CHECK_OUTPUT
batch = scheduler.schedule()
print(batch, "| samples a token:", batch.sampled)
tokens = [made_up_token(s) for s, sampled in zip(batch.seqs, batch.sampled, strict=True)
          if sampled]
scheduler.postprocess(batch, tokens)
print(seq)
print("prompt:", seq.prompt_token_ids)
print("completion:", seq.completion_token_ids, "| uncomputed:", seq.num_uncomputed_tokens)

# %% [markdown]
# ## The block table
#
# Logical block `i` holds token positions `4i .. 4i+3`; the block table maps it to a physical
# block of the pool. The sampled token (in parentheses) is known but has no KV yet.

# %%
# NBVAL_CHECK_OUTPUT
print(viz.block_tables_text([seq], scheduler.block_manager))

# %%
viz.draw_block_tables([seq], scheduler.block_manager)

# %% [markdown]
# ## Decoding to the end
#
# Each decode step computes one token's KV and samples the next; a fresh block is taken when
# the last one is full. At `max_tokens` the sequence finishes with reason `"length"` and its
# blocks go back to the pool (kept as evictable prefix-cache entries: a later request with
# the same prefix can reuse them).

# %%
# NBVAL_CHECK_OUTPUT
while not seq.is_finished:
    step(scheduler)  # schedule, made-up tokens, postprocess
    print(scheduler.trace[-1].to_text())
    print("   ", seq)
print("finish_reason:", seq.finish_reason, "| completion:", seq.completion_token_ids)
print(scheduler.block_manager)

# %% [markdown]
# Timestamps for metrics (time to first token, latency) are recorded along the way:

# %%
# NBVAL_CHECK_OUTPUT
print(seq.arrival_time <= seq.first_scheduled_time <= seq.first_token_time <= seq.finish_time)

# %%
print(f"time to first token: {1e3 * (seq.first_token_time - seq.arrival_time):.2f} ms")

# %% [markdown]
# ## What crosses to tensor-parallel workers
#
# Workers run the forward pass but never sample, so they need neither the sampling params nor
# the token history: only the tokens of this step, their start position and the block table.
# That is a `StepInput`. A decode step sends one token per sequence.

# %%
# NBVAL_CHECK_OUTPUT
other = Sequence(list(range(201, 207)), params)
scheduler.add(other)
step(scheduler)  # its prefill: 6 tokens
batch = scheduler.schedule()  # a decode step
print(batch)
for step_input in batch.step_inputs():
    print(step_input)
finished = scheduler.postprocess(batch, [made_up_token(other)])

# %%
print(f"pickled Sequence: {len(pickle.dumps(other))} B, "
      f"StepInput: {len(pickle.dumps(batch.step_inputs()[0]))} B")

# %% [markdown]
# ## Preempted, and nothing lost
#
# Two requests that each grow to 28 tokens (7 blocks) share a pool of 10 blocks. When the
# older one needs a block and none is free, the newest running sequence is preempted: its
# blocks are freed, its status becomes PREEMPTED, and it waits at the head of the queue. Its
# tokens are kept; when blocks free up it is recomputed (prompt and completion so far, as one
# prefill) and goes on.

# %%
# NBVAL_CHECK_OUTPUT
def two_requests() -> list[Sequence]:
    long = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    return [Sequence(list(range(301, 313)), long), Sequence(list(range(401, 413)), long)]


squeezed = Scheduler(EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=32,
                                  kvcache_block_size=4, num_kvcache_blocks=10,
                                  enable_prefix_caching=False), trace=True)
a, b = two_requests()
squeezed.add(a)
squeezed.add(b)
last = None
while squeezed.has_unfinished():
    step(squeezed)
    now = (a.status.value, b.status.value)
    if now != last:
        print(f"after step {squeezed.num_steps - 1:2d}: a {now[0]:9s} b {now[1]:9s}  {b}")
        last = now

# %% [markdown]
# The same two requests on a pool large enough for both produce the same tokens: preemption
# costs recomputation, never output.

# %%
# NBVAL_CHECK_OUTPUT
roomy = Scheduler(EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=32,
                               kvcache_block_size=4, num_kvcache_blocks=32))
a2, b2 = two_requests()
roomy.add(a2)
roomy.add(b2)
while roomy.has_unfinished():
    step(roomy)
print("same tokens:", a.token_ids == a2.token_ids and b.token_ids == b2.token_ids)
print("preemptions:", squeezed.stats()["preemptions"], "vs", roomy.stats()["preemptions"])

# %%
viz.draw_scheduler_trace(squeezed.trace, title="two requests, 10 KV blocks")

# %% [markdown]
# ## Exercises
#
# Predict each answer before running its solution cell; the cells drive the real `Scheduler`
# and assert the answer, so they hold whenever the notebook runs.
#
# ### 1 · A long prompt in chunks
#
# The tiny engine from above (budget of 8 tokens per step, blocks of 4) gets one request: a
# 23-token prompt with `max_tokens=3`. How many steps until it finishes? How many tokens does
# each step compute, and which steps sample a token?
#
# <details><summary>Solution</summary>
#
# Five steps. The prompt goes in chunks of 8, 8 and 7 tokens; only the chunk that ends the
# prompt samples (the model's output at the prompt's last position is the first new token).
# Then two decode steps compute one token each and sample one each. After the third token the
# request finishes with `"length"`: the last sampled token's KV is never computed.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
tiny = EngineConfig(max_num_seqs=4, max_num_batched_tokens=8, max_model_len=32,
                    kvcache_block_size=4, num_kvcache_blocks=16)
chunked = Scheduler(tiny)
long_prompt = Sequence(list(range(1, 24)), SamplingParams(temperature=0.0, max_tokens=3,
                                                          ignore_eos=True))
chunked.add(long_prompt)
computed_and_sampled = []
while not long_prompt.is_finished:
    batch = chunked.schedule()
    print(batch, "| samples:", batch.sampled[0])
    computed_and_sampled.append((batch.num_new_tokens[0], batch.sampled[0]))
    chunked.postprocess(batch, [made_up_token(long_prompt)] if batch.sampled[0] else [])
print(long_prompt)
assert computed_and_sampled == [(8, False), (8, False), (7, True), (1, True), (1, True)]
assert long_prompt.finish_reason == "length" and long_prompt.num_computed_tokens == 25

# %% [markdown]
# ### 2 · A stop token, and `min_tokens`
#
# Run the 10-token prompt of the first section with `max_tokens=10` and note its third
# completion token, `T`. Run it again with `stop_token_ids=[T]`: how does it end, and is `T`
# part of the completion? Then with `stop_token_ids=[T]` and `min_tokens=3`?
#
# <details><summary>Solution</summary>
#
# With the stop token it finishes after 3 tokens with `finish_reason="stop"`, and `T` stays
# in the completion as its last token: it was sampled and appended before the stop check.
# `min_tokens=3` means stop tokens and EOS cannot end the request until *more than* 3 tokens
# were generated (`Scheduler._stop_reason`), so `T` in third place is ignored and the request
# runs to `max_tokens`: `"length"` after 10 tokens (the made-up model never says `T` again).
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
def finish(**params) -> Sequence:
    """The first section's prompt, run to the end with made-up tokens and these params."""
    seq = Sequence(list(range(101, 111)), SamplingParams(temperature=0.0, **params))
    run(Scheduler(tiny), [seq])
    return seq


T = finish(max_tokens=10).completion_token_ids[2]
stopped = finish(max_tokens=10, stop_token_ids=[T])
print(f"T = {T}: {stopped.finish_reason!r}, completion {stopped.completion_token_ids}")
at_least = finish(max_tokens=10, stop_token_ids=[T], min_tokens=3)
print(f"min_tokens=3: {at_least.finish_reason!r}, completion {at_least.completion_token_ids}")
assert stopped.finish_reason == "stop" and stopped.completion_token_ids[-1] == T
assert stopped.num_completion_tokens == 3
assert at_least.finish_reason == "length" and at_least.num_completion_tokens == 10

# %% [markdown]
# ### 3 · The price of a preemption
#
# In the preemption section, request `b` (a 12-token prompt) was preempted, then readmitted
# once `a` finished. How many tokens did its recompute step compute? Work it out from the
# trace: which steps did `b` decode in before it was preempted?
#
# <details><summary>Solution</summary>
#
# Its whole history: the 12 prompt tokens, the token sampled by its prefill, and one token per
# decode step before the preemption (8 of them): 12 + 1 + 8 = 21 tokens in one prefill (the
# step budget is 64, so one chunk). Nothing was lost, but 20 tokens of KV were computed twice,
# which is why the scheduler preempts the newest request: it has the least to recompute.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "squeezed", "b")
trace = squeezed.trace
preempted_at = next(t.step for t in trace if b.seq_id in t.preempted)
decodes_before = sum(b.seq_id in t.decode for t in trace[:preempted_at])
recompute = next(t.prefill[b.seq_id] for t in trace[preempted_at:] if b.seq_id in t.prefill)
print(f"b preempted at step {preempted_at} after {decodes_before} decodes; "
      f"recomputed {recompute} tokens")
assert recompute == b.num_prompt_tokens + 1 + decodes_before == 21

# %% [markdown]
# Next: [03 · Block manager](03_block_manager.ipynb), the pool these blocks come from, and
# how prefixes are shared.
