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
# # 09 · The server: processes, messages, an OpenAI-compatible API
#
# `minillm serve` puts the engine behind the OpenAI HTTP API, so the `openai` client, `curl`
# or any tool that speaks it can use the model. It is three processes, as in mini-sglang:
#
# - the **API process** (FastAPI + uvicorn) parses HTTP, validates the request and streams the
#   answer back; its `EngineClient` keeps one queue per request in flight;
# - the **tokenizer worker** applies the chat template, encodes and checks the prompt;
# - the **scheduler process** owns the `LLMEngine` and steps it without pause, detokenizes,
#   and sends each step's new text back (with `--tensor-parallel-size N` it also owns the
#   engine's N-1 worker ranks).
#
# Why not one process: Python runs one thread at a time, and HTTP parsing, JSON and
# tokenization in the engine's interpreter would stall its steps. The processes talk through
# ZMQ PUSH/PULL pipes on Unix sockets; every message is one of the small dataclasses of
# `minillm/server/messages.py`, msgpack on the wire. The pictures below take their names
# from those classes.
#
# **What you will see:** the three processes and their sockets, drawn; the messages of a
# streamed request, a refused one and a cancelled one; a real server started on the demo
# model and used through the `openai` client: a chat answer, a completion with a stop
# string, tokens streamed live, 400 errors in OpenAI's JSON, and the Prometheus metrics.
#
# **Open `minillm/server/messages.py` beside this notebook** (176 lines): every message
# between the processes is one of its dataclasses. Then `api.py` (the HTTP routes),
# `engine_client.py` (the API process's side of the pipes), `tokenizer_worker.py` and
# `scheduler_process.py`, and `protocol.py` for the request checks and error JSON. Three
# exercises at the end; they need no running server.

# %%
from minillm.notebook import need, require

require("matplotlib", "fastapi", "uvicorn", "zmq", "msgpack", "httpx", "openai")
# %matplotlib inline
import json
import tempfile
import time

import httpx
import openai
from fastapi.testclient import TestClient

from minillm import hub, viz
from minillm.config import EngineConfig
from minillm.server.api import build_app
from minillm.server.launcher import ServerProcess
from minillm.server.metrics import ServerMetrics

# %% [markdown]
# ## The process model
#
# Each process binds the one socket it receives on (PULL); the others connect to it and
# push. Requests and aborts take the same road (API → tokenizer → scheduler), so an abort
# can never overtake the request it cancels: each pipe keeps order.

# %%
viz.draw_server_processes()

# %%
# NBVAL_CHECK_OUTPUT
print(viz.server_channels_text())

# %% [markdown]
# ## A request's messages
#
# A streamed chat request, as a sequence diagram. The scheduler sends one `BatchOutput`
# per engine step, holding every running request's new text; the API process routes each
# `Output` to the request waiting for it and turns it into a Server-Sent Event. The HTTP
# status goes out only with the first token, so a prompt the tokenizer refuses is still a
# clean 400 rather than an error in the middle of a 200 stream.

# %%
viz.draw_server_sequence("stream")

# %% [markdown]
# The same as text, and the two other paths: a prompt the tokenizer worker refuses, and a
# client that goes away mid-stream (its abort frees the request's KV blocks at once).

# %%
# NBVAL_CHECK_OUTPUT
for scenario in ("stream", "error", "abort"):
    print(f"{scenario}:\n{viz.server_messages_text(scenario)}\n")

# %% [markdown]
# ## Start a server
#
# `ServerProcess` runs `python -m minillm serve ...` as a child process on a free port and
# returns once `/health` answers (the model loaded, the KV cache allocated). The demo model on
# the CPU with a small KV cache (128 blocks of 16 tokens) starts in a few seconds. The
# server's own log goes to a file.

# %%
model = hub.resolve_model(None)  # the demo model, SmolLM2-135M-Instruct, cached
log_dir = tempfile.mkdtemp(prefix="minillm-09-")
server = ServerProcess(model, "--device", "cpu", "--max-model-len", "512",
                       "--num-kvcache-blocks", "128", "--log-level", "warning",
                       log_file=f"{log_dir}/server.log")
t0 = time.perf_counter()
server.start(timeout=300)
print(f"healthy after {time.perf_counter() - t0:.1f} s at {server.url}")
print(json.dumps(server.health(), indent=1))

# %% [markdown]
# ## Requests through the `openai` client
#
# The official client only needs the base URL (the server checks no API key). The server
# serves one model, named after its checkpoint directory.

# %%
# NBVAL_CHECK_OUTPUT
client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
model_name = client.models.list().data[0].id
print(model_name)

# %% [markdown]
# A chat completion, greedy (`temperature=0`), so the answer is the same every run and the
# same as `LLM.chat` gives offline in notebook 00.

# %%
# NBVAL_CHECK_OUTPUT
question = [{"role": "user", "content": "What is the capital of France?"}]
chat = client.chat.completions.create(model=model_name, messages=question, temperature=0,
                                      max_tokens=32)
print(chat.choices[0].message.content)
print(chat.choices[0].finish_reason, chat.usage.prompt_tokens, "prompt tokens,",
      chat.usage.completion_tokens, "completion tokens")

# %% [markdown]
# A plain completion (`/v1/completions`), with a stop string: the text is cut before it.

# %%
# NBVAL_CHECK_OUTPUT
completion = client.completions.create(model=model_name, prompt="The three primary colours are",
                                       temperature=0, max_tokens=24, stop=["."])
print(repr(completion.choices[0].text), completion.choices[0].finish_reason)

# %% [markdown]
# ## Tokens streamed live
#
# With `stream=True` each Server-Sent Event carries the text of one engine step (of several,
# joined, when the API process falls behind the engine); printing the deltas as they arrive
# shows the answer growing. Joined, they are exactly the text of the non-streamed request.
# `include_usage` adds a last chunk with the token counts.

# %%
# NBVAL_CHECK_OUTPUT
stream = client.chat.completions.create(model=model_name, messages=question, temperature=0,
                                        max_tokens=32, stream=True,
                                        stream_options={"include_usage": True})
deltas = []
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
        deltas.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
print("\n\nsame text as the non-streamed request:",
      "".join(deltas) == chat.choices[0].message.content)
print("usage:", usage.prompt_tokens, "prompt,", usage.completion_tokens, "completion")

# %%
print(f"{len(deltas)} deltas: {deltas}")  # how many depends on timing: not checked

# %% [markdown]
# The time between deltas, as the client saw them: the first waits for the prefill, the
# rest for one decode step each (CPU timings; they vary).

# %%
times = []
t0 = time.perf_counter()
for _chunk in client.completions.create(model=model_name, prompt="Once upon a time",
                                        temperature=0, max_tokens=16, stream=True):
    times.append(time.perf_counter() - t0)
gaps = [b - a for a, b in zip(times, times[1:])]
print(f"first chunk after {1000 * times[0]:.0f} ms; then every "
      f"{1000 * sum(gaps) / len(gaps):.0f} ms on average")

# %% [markdown]
# ## A bad request
#
# A prompt longer than `max_model_len` (512 tokens here) passes the API process's checks but
# not the tokenizer worker's: a `RequestError` comes back (the "error" path above) and the
# client gets a 400 with OpenAI's error JSON, which the `openai` client raises as
# `BadRequestError`. A field out of range (`temperature=-1`) is refused by the API process
# itself, before any message is sent.

# %%
# NBVAL_CHECK_OUTPUT
too_long = [{"role": "user", "content": "hello " * 600}]
live_errors = []  # the error JSON the server sent, for the exercises
for kwargs in (dict(messages=too_long), dict(messages=question, temperature=-1)):
    try:
        client.chat.completions.create(model=model_name, max_tokens=8, **kwargs)
    except openai.BadRequestError as e:
        live_errors.append(e.response.json())
        print(e.status_code, json.dumps(live_errors[-1], indent=1))

# %% [markdown]
# ## The metrics
#
# `/metrics` is Prometheus text: the engine's gauges and counters (from the scheduler's
# `SchedulerStats` messages) and the latencies the API process measured. A few lines of it,
# after the requests above (all finished: nothing running or waiting).

# %%
metrics = {}
for line in httpx.get(server.url + "/metrics").text.splitlines():
    if line and not line.startswith("#"):
        name, value = line.rsplit(" ", 1)
        metrics[name] = float(value)
for name in ("minillm_num_requests_running", "minillm_num_requests_waiting",
             "minillm_prompt_tokens_total", "minillm_generation_tokens_total",
             "minillm_kv_blocks_used", "minillm_kv_blocks_total",
             "minillm_prefix_cache_hit_rate",
             'minillm_requests_finished_total{finish_reason="stop"}',
             'minillm_requests_finished_total{finish_reason="length"}',
             "minillm_time_to_first_token_seconds_count",
             "minillm_time_to_first_token_seconds_sum"):
    print(f"{name:<58} {metrics.get(name, 0):g}")

# %% [markdown]
# ## Stop the server
#
# `stop()` sends SIGTERM: uvicorn lets requests in flight finish, then the API process ends
# its two children. Nothing is left running. From a terminal, `minillm serve` starts the same
# server (on port 8000), and `minillm chat --url http://127.0.0.1:8000` chats with it.

# %%
code = server.stop()
print("server exit code:", code, "| still running:", server.proc.poll() is None)

# %% [markdown]
# ## Exercises
#
# None of them needs a running server. `build_app` builds the real FastAPI app of the API
# process; FastAPI's `TestClient` sends it requests in this process, and as long as it is not
# used in a `with` block the app's start-up (which would start the tokenizer worker and the
# scheduler) never runs. Requests refused before they reach the engine get their real answer.
#
# ### 1 · The 400 for a bad temperature
#
# A chat request with `temperature=-1`: which process refuses it, and what JSON comes back,
# field by field (`message`, `type`, `param`, `code`)? Check your answer against the one the
# live server sent above.
#
# <details><summary>Solution</summary>
#
# The API process, before any message is sent: the JSON has the right shape and types, so
# pydantic accepts it, and then `protocol.sampling_params` builds `SamplingParams`, whose
# check fails. The `ValueError`'s text becomes the message, and `param` is the field it
# names: `{"error": {"message": "temperature=-1.0 is invalid: must be >= 0 (0 means
# greedy)", "type": "invalid_request_error", "param": "temperature", "code": null}}` with
# status 400, the same body the `openai` client raised `BadRequestError` for.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "model_name", "live_errors")
api = TestClient(build_app(EngineConfig(max_model_len=512), model_name))  # no engine started
answer = api.post("/v1/chat/completions", json={
    "model": model_name, "messages": question, "max_tokens": 8, "temperature": -1})
print(answer.status_code, json.dumps(answer.json(), indent=1))
assert answer.status_code == 400 and answer.json() == live_errors[1]
assert answer.json()["error"]["param"] == "temperature"

# %% [markdown]
# ### 2 · Who names the field?
#
# Three more refused requests: `"temperature": "0.5"` (a string),
# `"max_completion_tokens": 0`, and `"model": "gpt-4"`. What status does each get, and what
# `param`? Which check refuses each one?
#
# <details><summary>Solution</summary>
#
# - `"0.5"`: pydantic, in strict mode (a string is not a number), before the route runs.
#   FastAPI would answer 422; minillm's handler turns it into OpenAI's 400 with `param`
#   `"temperature"`.
# - `max_completion_tokens: 0`: `SamplingParams` refuses `max_tokens=0` (its own name for the
#   field), but `param` is `"max_completion_tokens"`, the name the client sent.
# - `"gpt-4"`: the server serves one model; any other name is a 404 with
#   `code: "model_not_found"`, as in the OpenAI API.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "api", "question")
refused = {}
for field, value in (("temperature", "0.5"), ("max_completion_tokens", 0), ("model", "gpt-4")):
    r = api.post("/v1/chat/completions", json={"messages": question, field: value})
    refused[field] = (r.status_code, r.json()["error"])
    print(f"{field}={value!r}: {r.status_code} {r.json()['error']}")
assert refused["temperature"] == (400, {"message": "temperature: Input should be a valid number",
                                        "type": "invalid_request_error",
                                        "param": "temperature", "code": None})
assert refused["max_completion_tokens"][1]["param"] == "max_completion_tokens"
assert refused["max_completion_tokens"][1]["message"].startswith("max_tokens=0 is invalid")
assert refused["model"][0] == 404 and refused["model"][1]["code"] == "model_not_found"

# %% [markdown]
# ### 3 · Reading a latency histogram
#
# `/metrics` reports time to first token as a Prometheus histogram. Three requests got their
# first token after 0.05 s, 0.2 s and 1.5 s. What do the lines `le="0.1"`, `le="1.0"` and
# `le="+Inf"` of `minillm_time_to_first_token_seconds_bucket` say, and `_count` and `_sum`?
#
# <details><summary>Solution</summary>
#
# Prometheus buckets are cumulative: each counts the observations *at or below* its bound.
# `le="0.1"` is 1 (0.05 s), `le="1.0"` is 2 (0.05 and 0.2 s), `le="+Inf"` is 3, all of them,
# equal to `_count`; `_sum` is 1.75. A quantile is read from where the cumulative count
# crosses it: the median (the 2nd of 3) lies in the bucket from 0.1 to 0.25 s.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
metrics_of_3 = ServerMetrics()
for seconds in (0.05, 0.2, 1.5):
    metrics_of_3.ttft.observe(seconds)
lines = metrics_of_3.ttft.render()
wanted = [line for line in lines if 'le="0.1"' in line or 'le="1.0"' in line
          or 'le="+Inf"' in line or "_count" in line or "_sum" in line]
print("\n".join(wanted))
name = "minillm_time_to_first_token_seconds"
assert f'{name}_bucket{{le="0.1"}} 1' in lines and f'{name}_bucket{{le="1.0"}} 2' in lines
assert f'{name}_bucket{{le="+Inf"}} 3' in lines and f"{name}_count 3" in lines
assert f"{name}_sum 1.75" in lines
assert f'{name}_bucket{{le="0.25"}} 2' in lines  # where the median (2nd of 3) is crossed
