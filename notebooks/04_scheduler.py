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
#
# **What you will see:** a burst of eight requests batched continuously (a timeline of who
# ran in which step, and the KV pool over time); the same burst squeezed into fewer KV
# blocks, with preemptions that cost steps but never change the output; a long prompt
# prefilled in chunks beside running decodes; a stepper to drive the scheduler by hand; and
# the squeezed run recorded step by step and replayed in the engine's dashboard (KV pool,
# queues, each step's batch against its token budget).
#
# **Open `minillm/scheduler.py` beside this notebook**: the policy is `schedule()`, the
# bookkeeping after the model ran is `postprocess()`, and `StepTrace` is what each step
# records. The blocks come from `minillm/kvcache/block_manager.py`; the made-up tokens from
# `minillm/simulate.py`; the recording and replay from `minillm/trace.py` and
# `minillm/viz/dashboard.py`. Three exercises at the end.

# %%
from minillm.notebook import need, require

require("matplotlib", "ipywidgets")  # figures and widgets; if missing, says what to install
# %matplotlib inline
import tempfile
from pathlib import Path

from IPython.display import display

from minillm import viz
from minillm.config import EngineConfig
from minillm.scheduler import Scheduler
from minillm.sequence import Sequence
from minillm.simulate import Workload, run, step
from minillm.trace import Trace, TraceRecorder

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
# ## Replay a run in the dashboard
#
# A `TraceRecorder` records every step of a scheduler: the batch, the queues, every block
# table and the state of every KV block. On a live engine (`LLM`, as in `00_quickstart`) it
# records by itself; here, with made-up tokens, `capture()` after each step does it. This is
# the squeezed burst again, recorded.

# %%
recorded = make_scheduler(24)
recorder = TraceRecorder(recorded).attach()
for seq in burst.make():
    recorded.add(seq)
while recorded.has_unfinished():
    step(recorded)
    recorder.capture()
trace = recorder.detach()
path = Path(tempfile.mkdtemp()) / "squeezed.json"
trace.save(path)  # JSON: replayable anywhere, no engine needed
assert Trace.load(path) == trace
print(trace)

# %% [markdown]
# `viz.Dashboard.replay(trace)` puts a slider and a play button over the steps (in
# JupyterLab; in the rendered docs, see the figures below). Each frame shows the KV pool
# after the step (one colour per sequence, cached blocks with a black corner), the queues
# (each sequence's tokens: light the prompt, dark the completion), the batch of every step
# against the token budget, and the rates.

# %%
replay = viz.Dashboard.replay(trace)
display(replay)

# %% [markdown]
# The step of the first preemption, as a figure and as text: the sequence that needed a
# block got it, the newest running one lost all of its blocks and went back to the head of
# the waiting queue.

# %%
first_preemption = next(i for i, t in enumerate(trace) if t.preempted)
replay.show_step(first_preemption)  # what dragging the slider there does
replay.figure()

# %%
# NBVAL_CHECK_OUTPUT
print(viz.dashboard_text(trace, first_preemption, timings=False))

# %% [markdown]
# ## Exercises
#
# Predict each answer first; the solution cells check it on the real scheduler.
#
# ### 1 · Chunks of a long prompt
#
# Run the long-prompt example again with a step budget of 20 tokens instead of 16: three
# short requests decoding, then the 60-token prompt. What chunks is the prompt prefilled in?
#
# <details><summary>Solution</summary>
#
# The three decodes take 3 tokens of each step, the prompt gets the other 17: chunks of 17,
# 17 and 17, then the last 9 (17 × 3 + 9 = 60). One of the short requests may finish
# meanwhile, which would free one more token per step; with 10 to 12 new tokens each, none
# does before the prompt is done.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "config", "short")
wider = Scheduler(EngineConfig(max_num_seqs=4, max_num_batched_tokens=20, max_model_len=96,
                               kvcache_block_size=4, num_kvcache_blocks=64), trace=True)
for seq in Workload(num_requests=3, prompt_len=(4, 8), output_len=(10, 12), seed=2).make():
    wider.add(seq)
for _ in range(2):
    step(wider)
prompt60 = Sequence(list(range(1, 61)), short[0].params)
wider.add(prompt60)
while wider.has_unfinished():
    step(wider)
chunks20 = [t.prefill[prompt60.seq_id] for t in wider.trace if prompt60.seq_id in t.prefill]
print("chunks:", chunks20)
assert chunks20 == [17, 17, 17, 9]

# %% [markdown]
# ### 2 · Who is preempted?
#
# In the recorded squeezed run, the first preemption takes one sequence's blocks. Which of
# the sequences that were running just before is it?
#
# <details><summary>Solution</summary>
#
# The newest: the scheduler serves running sequences oldest first and, when one cannot get
# a block, preempts from the back of the running list (`self.running.pop()`). The newest has
# the least work done, so recomputing it later wastes the least.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "trace", "first_preemption")
before, at = trace[first_preemption - 1], trace[first_preemption]
print("running before:", before.running, "| preempted:", at.preempted,
      "| waiting after:", at.waiting)
assert at.preempted == [before.running[-1]]
assert at.waiting[0] == at.preempted[0]  # back at the head of the queue

# %% [markdown]
# ### 3 · Continuous batching, and what preemption does to it
#
# In the roomy run (64 blocks), the fifth request starts in the step right after the first
# request finishes: continuous batching. In the recorded squeezed run (24 blocks), the step
# after the first finish admits someone else, and the fifth request keeps waiting. Who takes
# the room, and why first?
#
# <details><summary>Solution</summary>
#
# The sequence preempted earlier. Preemption put it back at the *head* of the waiting queue,
# and admission is strict FIFO, so it is readmitted first: one prefill chunk recomputes its
# prompt and the tokens it had generated. That takes the blocks the finished sequence freed,
# too few are left for the fifth request's prompt, and the fifth starts only after the next
# sequence finishes.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "roomy", "roomy_seqs", "trace", "first_preemption")


def starts(steps, seq_id):
    return next(t.step for t in steps if seq_id in t.prefill)


def first_finish(steps):
    return next(t.step for t in steps if t.finished)


fifth = roomy_seqs[4].seq_id
print(f"roomy: first finish in step {first_finish(roomy.trace)}, the fifth request "
      f"(seq {fifth}) starts in step {starts(roomy.trace, fifth)}")
assert starts(roomy.trace, fifth) == first_finish(roomy.trace) + 1

preempted = trace[first_preemption].preempted[0]
squeezed_fifth = sorted(trace[0].running + trace[0].waiting)[4]
after = trace[first_finish(trace) + 1]  # this scheduler's steps count from 0: index = step
print(f"squeezed: first finish in step {first_finish(trace)}; step {after.step} prefills "
      f"{after.prefill} (seq {preempted} was preempted); the fifth request (seq "
      f"{squeezed_fifth}) starts in step {starts(trace, squeezed_fifth)}")
assert preempted in after.prefill and squeezed_fifth not in after.prefill
assert starts(trace, squeezed_fifth) > first_finish(trace) + 1

# %% [markdown]
# Next: the model itself (`05_layers`), which will replace the made-up tokens.
