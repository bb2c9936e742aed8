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
# # 04 · The scheduler: continuous batching, chunked prefill, preemption
#
# Each engine step, `Scheduler.schedule()` decides which sequences run and how many tokens
# each computes, within two budgets: `max_num_seqs` sequences and `max_num_batched_tokens`
# tokens per step. Its policy (the docstring of `minillm/scheduler.py` has it in full):
#
# 1. **Running sequences first, oldest first**: one token each when decoding, the rest of
#    the prompt (within the budget) when still prefilling.
# 2. **Preempt on KV pressure**: when a running sequence cannot get a block, the newest
#    running sequence gives up its blocks and goes back to the front of the queue, to be
#    recomputed later.
# 3. **Admit waiting sequences in arrival order** while budgets and blocks allow (strict FIFO).
# 4. **Chunked prefill**: a prompt longer than the budget left is prefilled over several
#    steps, so decodes never stall behind it.
#
# Then `postprocess()` applies the sampled tokens and finishes sequences. There is no model
# here: `minillm.simulate` makes up tokens, deterministically, from each sequence's tokens.

# %%
# %matplotlib inline
from IPython.display import display

from minillm import viz
from minillm.config import EngineConfig
from minillm.scheduler import Scheduler
from minillm.sequence import Sequence
from minillm.simulate import Workload, run, step

# %% [markdown]
# ## A burst of requests
#
# Eight requests arrive at once (seeded: prompts of 8–32 tokens, 4–20 new tokens each). At
# most four run together. **Continuous batching**: the moment one finishes, the head of the
# queue takes its place in the very next step; nobody waits for the whole batch to drain.
# The first steps also show chunking: the third prompt does not fit in what is left of the
# 48-token budget, so its last token is prefilled in step 1.

# %%
# NBVAL_CHECK_OUTPUT
burst = Workload(num_requests=8, prompt_len=(8, 32), output_len=(4, 20), seed=1)


def make_scheduler(num_blocks: int) -> Scheduler:
    config = EngineConfig(max_num_seqs=4, max_num_batched_tokens=48, max_model_len=96,
                          kvcache_block_size=4, num_kvcache_blocks=num_blocks,
                          enable_prefix_caching=False)
    return Scheduler(config, trace=True)


roomy = make_scheduler(64)
roomy_seqs = run(roomy, burst.make())
print(viz.timeline_text(roomy.trace))

# %%
viz.draw_scheduler_trace(roomy.trace, title="8 requests, 64 KV blocks")

# %% [markdown]
# The same steps as the trace records them, one line each: prefill chunks as
# `seq:tokens`, decodes, preemptions, finishes, the queue length and the KV pool after the step.

# %%
# NBVAL_CHECK_OUTPUT
for line in roomy.trace[:6]:
    print(line.to_text())

# %% [markdown]
# ## A KV squeeze: preemption
#
# The same burst with 24 blocks instead of 64: just enough for one sequence of
# `max_model_len` tokens. Sequences grow a block every 4 tokens; when an older one needs a
# block and none is free, the newest running one is preempted (red), waits, and is
# recomputed from scratch (its prompt and the tokens it had generated, in one prefill).

# %%
# NBVAL_CHECK_OUTPUT
squeezed = make_scheduler(24)
squeezed_seqs = run(squeezed, burst.make())
print(viz.timeline_text(squeezed.trace))

# %%
viz.draw_scheduler_trace(squeezed.trace, title="the same 8 requests, 24 KV blocks")

# %% [markdown]
# Preemption costs steps and recomputed tokens, never output: every request ends with the
# same tokens as in the roomy run.

# %%
# NBVAL_CHECK_OUTPUT
keys = ["steps", "preemptions", "prefill_tokens", "generated_tokens"]
print(viz.stats_table_text({"64 blocks": roomy.stats(), "24 blocks": squeezed.stats()}, keys))
print("same tokens:", [s.token_ids for s in roomy_seqs] == [s.token_ids for s in squeezed_seqs])

# %% [markdown]
# ## A long prompt, chunked
#
# Three short requests are decoding when a 60-token prompt arrives. The step budget is 16
# tokens: the three decodes take 3, and the long prompt gets the remaining 13 per step
# until it is done. Decodes keep their pace meanwhile: no step stalls behind the long
# prompt, and every step is full.

# %%
# NBVAL_CHECK_OUTPUT
config = EngineConfig(max_num_seqs=4, max_num_batched_tokens=16, max_model_len=96,
                      kvcache_block_size=4, num_kvcache_blocks=64)
chunked = Scheduler(config, trace=True)
short = Workload(num_requests=3, prompt_len=(4, 8), output_len=(10, 12), seed=2).make()
for seq in short:
    chunked.add(seq)
for _ in range(2):
    step(chunked)
long_prompt = Sequence(list(range(1, 61)), short[0].params)
chunked.add(long_prompt)
while chunked.has_unfinished():
    step(chunked)
print(viz.timeline_text(chunked.trace))
chunks = [t.prefill[long_prompt.seq_id] for t in chunked.trace
          if long_prompt.seq_id in t.prefill]
print("chunks of the long prompt:", chunks, "sum:", sum(chunks))
print("tokens per step:", [len(t.decode) + sum(t.prefill.values()) for t in chunked.trace])

# %%
viz.draw_scheduler_trace(chunked.trace, title="a 60-token prompt, 16-token steps")

# %% [markdown]
# ## Step it yourself
#
# In JupyterLab, `SchedulerStepper` runs one `schedule()` / made-up tokens / `postprocess()`
# per click of **step**, and redraws the block pool and the timeline; **run to end** finishes
# the workload. (In the rendered docs the buttons are inert; the figure below is what they
# draw after three steps.)

# %%
live = make_scheduler(24)
for seq in burst.make():
    live.add(seq)
stepper = viz.SchedulerStepper(live)
display(stepper)

# %%
for _ in range(3):
    stepper.step()  # what one click on "step" does
stepper.figures[0]

# %% [markdown]
# Next: the model itself (`05_layers`), which will replace the made-up tokens.
