"""`minillm serve`, live on 127.0.0.1: the real `openai` client, streaming, bad inputs, aborts on
disconnect, metrics, and the process model's failure and shutdown paths.

One server (a tiny random checkpoint on the CPU) serves most tests; the tests that kill
processes start their own. `start_server` is shared with tests/test_client.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import httpx
import pytest

from minillm.server.launcher import ServerProcess
from tests.procs import alive
from tests.tiny import make_checkpoint

openai = pytest.importorskip("openai")

# Long enough that a request of max_tokens=LONG outlives any disconnect (the tiny model makes
# a token in about a millisecond); 256 blocks of 16 tokens hold two such sequences.
MAX_MODEL_LEN = 2048
LONG = 2000
ENGINE = ["--device", "cpu", "--max-model-len", str(MAX_MODEL_LEN), "--num-kvcache-blocks", "256"]


class LiveServer(ServerProcess):
    """A server for tests: the same process handle, plus shortcuts for requests."""

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kw)

    def pids(self) -> list[int]:
        """Every process of the server, from /health: API, tokenizer, scheduler, TP workers."""
        p = self.health()["pids"]
        return [p["api"], p["tokenizer"], p["scheduler"], *p["tp_workers"]]

    def metric(self, name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", self.get("/metrics").text, re.M)
        assert match, f"{name} not in /metrics"
        return float(match.group(1))

    def openai(self):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)


def start_server(model: str, log_dir: str, *extra: str, timeout: float = 60.0) -> LiveServer:
    """`python -m minillm serve` on a free port; returns once /health says ok."""
    server = LiveServer(model, "--log-level", "warning", *ENGINE, *extra,
                        log_file=os.path.join(log_dir, "server.log"))
    try:
        return server.start(timeout=timeout)
    except RuntimeError as e:
        pytest.fail(str(e))


def wait_until(condition, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "qwen3"), "qwen3",
                           max_position_embeddings=MAX_MODEL_LEN)


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    s = start_server(checkpoint, str(tmp_path_factory.mktemp("logs")))
    try:
        yield s
    finally:
        s.stop()


# ---- messages between the processes ----


def test_messages_round_trip_through_msgpack():
    from minillm.server.messages import (
        BatchOutput,
        GenerateRequest,
        Output,
        TokenLogprob,
        decode,
        encode,
    )

    top = [TokenLogprob("a", 1, -0.5), TokenLogprob("b", 2, -1.5)]
    batch = BatchOutput([Output(3, "a", [1], True, "stop", 5, 1, 0, [TokenLogprob("a", 1, -0.5,
                                                                               top)])])
    assert decode(encode(batch)) == batch
    # user data shaped like a message stays plain data
    request = GenerateRequest(7, {"max_tokens": 4}, messages=[
        {"role": "user", "content": "hi", "__type__": "AbortRequest"}])
    assert decode(encode(request)) == request
    with pytest.raises(TypeError):
        encode(object())


def test_outputs_that_pile_up_reach_the_caller_as_one(checkpoint):
    """A caller that falls behind the engine gets the backlog joined into one output: the same
    text, tokens and logprobs, the later output's counts and finish; an error behind it still
    comes after."""
    from minillm.config import EngineConfig
    from minillm.server.engine_client import EngineClient, EngineError
    from minillm.server.messages import Output, RequestError, TokenLogprob

    def out(i, text, finished=False):
        return Output(0, text, [i], finished, "length" if finished else None, 5, i, 2,
                      [TokenLogprob(text, i, -0.1 * i)])

    async def run(items):
        client = EngineClient(EngineConfig(model=checkpoint, device="cpu"))
        client._send = lambda message: None  # no engine: the test plays the scheduler
        outputs = client.generate({"max_tokens": 3}, prompt="hi")
        first = asyncio.ensure_future(anext(outputs))
        await asyncio.sleep(0)  # generate() now waits on its queue
        for item in items:
            client._queues[0].put_nowait(item)
        got = [await first]
        try:
            got += [o async for o in outputs]
        except EngineError as e:
            got.append(e)
        return got

    (joined,) = asyncio.run(run([out(1, "a"), out(2, "b"), out(3, "c", finished=True)]))
    assert (joined.text, joined.token_ids, joined.num_output_tokens) == ("abc", [1, 2, 3], 3)
    assert joined.finished and joined.finish_reason == "length"
    assert [lp.token_id for lp in joined.logprobs] == [1, 2, 3]
    gone = RequestError(0, "the engine is gone", status=503)
    partial, error = asyncio.run(run([out(1, "a"), out(2, "b"), gone]))
    assert (partial.text, partial.finished) == ("ab", False)
    assert isinstance(error, EngineError) and error.status == 503


# ---- the OpenAI API through the openai client ----


def test_models_lists_the_served_model(server):
    models = server.openai().models.list().data
    assert [m.id for m in models] == ["qwen3"]  # the checkpoint directory's name


def test_chat_and_completions(server):
    client = server.openai()
    chat = client.chat.completions.create(
        model="qwen3", messages=[{"role": "user", "content": "Hello"}], max_tokens=8,
        temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert 1 <= chat.usage.completion_tokens <= 8 and chat.usage.prompt_tokens > 0
    completion = client.completions.create(model="qwen3", prompt="The capital of France is",
                                           max_tokens=5, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert completion.object == "text_completion"
    assert completion.usage.completion_tokens == 5
    assert completion.choices[0].finish_reason == "length"


def test_same_seed_same_text(server):
    client = server.openai()

    def sample():
        return client.completions.create(model="qwen3", prompt="Hello world", max_tokens=12,
                                         temperature=1.0, seed=7).choices[0].text

    assert sample() == sample()


def test_online_text_equals_offline_text(server, checkpoint):
    """The server's text is `LLM.generate`'s, stop strings included (same detokenizer)."""
    from minillm import LLM, SamplingParams

    llm = LLM(checkpoint, device="cpu", max_model_len=MAX_MODEL_LEN, num_kvcache_blocks=256)
    prompt = "Hello world! How are you"
    offline = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=24,
                                                  ignore_eos=True), use_tqdm=False)[0].text
    stop = offline[len(offline) // 2: len(offline) // 2 + 2]
    cut = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True,
                                              stop=stop), use_tqdm=False)[0]
    llm.close()
    client = server.openai()
    online = client.completions.create(model="qwen3", prompt=prompt, max_tokens=24,
                                       temperature=0, extra_body={"ignore_eos": True})
    assert online.choices[0].text == offline
    online_cut = client.completions.create(model="qwen3", prompt=prompt, max_tokens=24,
                                           temperature=0, stop=stop,
                                           extra_body={"ignore_eos": True})
    assert online_cut.choices[0].text == cut.text
    assert online_cut.choices[0].finish_reason == cut.finish_reason == "stop"


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_stream_joins_to_the_non_stream_text(server, endpoint):
    client = server.openai()
    if endpoint == "chat":
        args = dict(model="qwen3", messages=[{"role": "user", "content": "Tell me a story"}],
                    max_tokens=20, temperature=0)
        whole = client.chat.completions.create(**args).choices[0].message.content
        chunks = list(client.chat.completions.create(**args, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    else:
        args = dict(model="qwen3", prompt="The capital of France is", max_tokens=20,
                    temperature=0)
        whole = client.completions.create(**args).choices[0].text
        chunks = list(client.completions.create(**args, stream=True))
        streamed = "".join(c.choices[0].text for c in chunks)
    assert streamed == whole and whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    # How many chunks depends on timing: outputs that pile up while the API is busy go out
    # joined. That text arrives before the request ends is shown by the disconnect test below.


def test_usage_comes_last_when_asked(server):
    client = server.openai()
    chunks = list(client.chat.completions.create(
        model="qwen3", messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}))
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 6
    plain = list(client.chat.completions.create(
        model="qwen3", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True))
    assert all(c.usage is None for c in plain)


def test_logprobs(server):
    client = server.openai()
    chat = client.chat.completions.create(
        model="qwen3", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
        temperature=0, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content
    assert len(content) == 4 and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.logprob == t.top_logprobs[0].logprob for t in content)  # greedy: the top one
    completion = client.completions.create(model="qwen3", prompt="Hello", max_tokens=4,
                                           temperature=0, logprobs=2,
                                           extra_body={"ignore_eos": True})
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert lp.text_offset[0] == 0


def test_64_concurrent_requests_all_finish_and_bad_ones_do_not_hurt(server):
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

    async def good(i: int):
        if i % 2:
            r = await client.completions.create(model="qwen3", prompt=f"Hello {i}", max_tokens=8,
                                                temperature=0, extra_body={"ignore_eos": True})
            return r.usage.completion_tokens
        r = await client.chat.completions.create(
            model="qwen3", messages=[{"role": "user", "content": f"Request {i}"}],
            max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True})
        return [c async for c in r][-1].usage.completion_tokens

    async def bad():
        with pytest.raises(openai.BadRequestError):
            await client.completions.create(model="qwen3", prompt=[1] * MAX_MODEL_LEN,
                                                max_tokens=8)

    async def main():
        results = await asyncio.gather(*[good(i) for i in range(64)], *[bad() for _ in range(4)])
        await client.close()
        return results[:64]

    assert asyncio.run(main()) == [8] * 64
    assert wait_until(lambda: server.metric("minillm_kv_blocks_used") == 0, 5)


# ---- bad input: OpenAI's error JSON, and the server stays healthy ----

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]
BAD_INPUTS = [  # (path, body or raw text, status, param)
    (CHAT, '{"messages": [', 400, None),
    (CHAT, "", 400, None),
    (CHAT, {}, 400, "messages"),
    (CHAT, {"messages": "Hi"}, 400, "messages"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    (CHAT, {"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    (CHAT, {"messages": []}, 400, "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "Hi"}]}, 400, "messages[0]['role']"),
    (CHAT, {"messages": [{"role": "user", "content": "Hello " * MAX_MODEL_LEN}]}, 400, "messages"),
    (CHAT, {"messages": USER, "temperature": -1}, 400, "temperature"),
    (CHAT, {"messages": USER, "temperature": "hot"}, 400, "temperature"),
    (CHAT, {"messages": USER, "top_p": 0}, 400, "top_p"),
    (CHAT, {"messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    (CHAT, {"messages": USER, "max_completion_tokens": -5}, 400, "max_completion_tokens"),
    (CHAT, {"messages": USER, "n": 2}, 400, "n"),
    (CHAT, {"messages": USER, "top_logprobs": 3}, 400, "top_logprobs"),
    (CHAT, {"messages": USER, "logprobs": True, "top_logprobs": 50}, 400, "top_logprobs"),
    (CHAT, {"messages": USER, "stop": 5}, 400, "stop"),
    (CHAT, {"messages": USER, "stop": [""]}, 400, "stop"),
    (CHAT, {"messages": USER, "presence_penalty": 3}, 400, "presence_penalty"),
    (CHAT, {"messages": USER, "repetition_penalty": 0}, 400, "repetition_penalty"),
    (CHAT, {"messages": USER, "top_k": 0}, 400, "top_k"),
    (CHAT, {"messages": USER, "min_p": 2}, 400, "min_p"),
    (CHAT, {"messages": USER, "seed": "x"}, 400, "seed"),
    (CHAT, {"messages": USER, "seed": 1 << 70}, 400, "seed"),
    (CHAT, {"messages": USER, "max_completion_tokens": 1 << 64}, 400, "max_completion_tokens"),
    (CHAT, {"messages": USER, "stream": "yes"}, 400, "stream"),
    (CHAT, {"messages": USER, "model": "gpt-4"}, 404, "model"),
    (COMPLETIONS, {}, 400, "prompt"),
    (COMPLETIONS, {"prompt": ""}, 400, "prompt"),
    (COMPLETIONS, {"prompt": []}, 400, "prompt"),
    (COMPLETIONS, {"prompt": [10**6]}, 400, "prompt"),
    (COMPLETIONS, {"prompt": [10**30]}, 400, "prompt"),
    (COMPLETIONS, {"prompt": [1] * MAX_MODEL_LEN}, 400, "prompt"),
    (COMPLETIONS, {"prompt": ["a", "b"]}, 400, "prompt"),
    (COMPLETIONS, {"prompt": "Hi", "logprobs": 30}, 400, "logprobs"),
    (COMPLETIONS, {"prompt": "Hi", "max_tokens": True}, 400, "max_tokens"),
    (COMPLETIONS, {"prompt": "Hi", "max_tokens": 1.5}, 400, "max_tokens"),
    (COMPLETIONS, {"prompt": "Hi", "echo": True}, 400, "echo"),
    (COMPLETIONS, {"prompt": "Hi", "stream": True, "max_tokens": 0}, 400, "max_tokens"),
    (COMPLETIONS, {"prompt": [1] * MAX_MODEL_LEN, "stream": True}, 400, "prompt"),
]


def test_every_bad_input_gets_an_openai_error_and_the_server_stays_healthy(server):
    for path, body, status, param in BAD_INPUTS:
        kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(
            body, str) else {"json": body}
        r = server.post(path, **kw)
        assert r.status_code == status, (path, body, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["message"]
        assert error["param"] == param, (body, error)
    missing = server.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    assert server.get("/health").status_code == 200
    ok = server.post(COMPLETIONS, json={"prompt": "Hi", "max_tokens": 3})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 3


def test_openai_client_sees_the_error_fields(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.openai().chat.completions.create(model="qwen3", messages=USER, temperature=-1)
    assert e.value.status_code == 400 and e.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as e:
        server.openai().chat.completions.create(model="gpt-4", messages=USER)
    assert e.value.code == "model_not_found"


# ---- aborts ----


def test_disconnect_mid_stream_frees_the_kv_blocks(server):
    tokens_before = server.metric("minillm_generation_tokens_total")
    body = {"prompt": "Hello", "max_tokens": LONG, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + COMPLETIONS, json=body, timeout=30) as r:
        lines = r.iter_lines()
        for _ in range(3):
            assert next(lines).startswith("data: ")
            next(lines)  # the blank line after each event
        assert wait_until(lambda: server.metric("minillm_kv_blocks_used") > 0, 2)
    # the connection is closed here: the request is aborted and its blocks freed
    assert wait_until(lambda: server.metric("minillm_kv_blocks_used") == 0, 5)
    assert server.metric("minillm_generation_tokens_total") - tokens_before < LONG  # cut short
    assert server.get("/health").status_code == 200


def test_disconnect_while_waiting_for_a_whole_answer_frees_the_kv_blocks(server):
    tokens_before = server.metric("minillm_generation_tokens_total")
    body = {"prompt": "Hello", "max_tokens": LONG, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + COMPLETIONS, json=body, timeout=0.3)
    assert wait_until(lambda: server.metric("minillm_kv_blocks_used") == 0, 5)
    assert server.metric("minillm_generation_tokens_total") - tokens_before < LONG


# ---- metrics ----


def test_metrics_exposition(server):
    server.post(COMPLETIONS, json={"prompt": "Hello", "max_tokens": 4})
    text = server.get("/metrics").text
    for name in ("minillm_num_requests_running", "minillm_num_requests_waiting",
                 "minillm_prompt_tokens_total", "minillm_generation_tokens_total",
                 "minillm_kv_blocks_used", "minillm_kv_blocks_total",
                 "minillm_prefix_cache_hit_rate", "minillm_requests_finished_total"):
        assert f"# TYPE {name} " in text, name
    for name in ("minillm_time_to_first_token_seconds", "minillm_inter_token_latency_seconds"):
        assert f"# TYPE {name} histogram" in text
        assert f'{name}_bucket{{le="+Inf"}}' in text and f"{name}_count" in text
    assert server.metric("minillm_kv_blocks_total") == 256
    assert server.metric("minillm_time_to_first_token_seconds_count") > 0
    assert server.metric("minillm_prompt_tokens_total") > 0


# ---- failure and shutdown: servers of their own ----


def test_dead_scheduler_fails_fast_with_503(checkpoint, tmp_path):
    s = start_server(checkpoint, str(tmp_path))
    try:
        pids = s.get("/health").json()["pids"]
        body = {"prompt": "Hi", "max_tokens": LONG, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", s.url + COMPLETIONS, json=body, timeout=10) as r:
            lines = (line for line in r.iter_lines() if line)
            assert next(lines).startswith("data: {")  # generating
            os.kill(pids["scheduler"], signal.SIGKILL)
            t0 = time.monotonic()
            rest = list(lines)  # the stream ends with an error, then [DONE]
            assert time.monotonic() - t0 < 2
        assert rest[-1] == "data: [DONE]" and '"error"' in rest[-2] and "scheduler" in rest[-2]
        health = s.get("/health")
        assert health.status_code == 503 and "scheduler" in health.json()["error"]
        t0 = time.monotonic()
        r = s.post(CHAT, json={"messages": USER})
        assert r.status_code == 503 and time.monotonic() - t0 < 1
        assert r.json()["error"]["type"] == "server_error"
    finally:
        s.stop()
    assert wait_until(lambda: not any(alive(p) for p in pids.values() if isinstance(p, int)), 5)


def test_dead_tokenizer_worker_turns_health_503_and_requests_fail_fast(checkpoint, tmp_path):
    s = start_server(checkpoint, str(tmp_path))
    try:
        pids = s.get("/health").json()["pids"]
        os.kill(pids["tokenizer"], signal.SIGKILL)
        assert wait_until(lambda: s.get("/health").status_code == 503, 5)
        assert "tokenizer" in s.get("/health").json()["error"]
        t0 = time.monotonic()
        r = s.post(CHAT, json={"messages": USER})
        assert r.status_code == 503 and time.monotonic() - t0 < 1
    finally:
        s.stop()
    assert wait_until(lambda: not any(alive(p) for p in pids.values() if isinstance(p, int)), 5)


def test_sigint_ends_every_process(checkpoint, tmp_path):
    """Ctrl-C in the terminal that runs `minillm serve`."""
    s = start_server(checkpoint, str(tmp_path))
    pids = s.pids()
    assert all(alive(p) for p in pids)
    s.proc.send_signal(signal.SIGINT)
    s.proc.wait(timeout=15)
    assert wait_until(lambda: not any(alive(p) for p in pids), 5), [p for p in pids if alive(p)]


def test_sigterm_ends_every_process(checkpoint, tmp_path):
    """With tensor parallelism, so the scheduler's own worker process must end too."""
    s = start_server(checkpoint, str(tmp_path), "--tensor-parallel-size", "2")
    pids = s.pids()
    assert len(pids) == 4 and all(alive(p) for p in pids)
    assert s.post(COMPLETIONS, json={"prompt": "Hi", "max_tokens": 3}).status_code == 200
    s.proc.send_signal(signal.SIGTERM)  # as stop() does, but here it is what is tested
    s.proc.wait(timeout=15)
    assert wait_until(lambda: not any(alive(p) for p in pids), 5), [
        p for p in pids if alive(p)]


# ---- the online benchmark ----


def test_bench_serve_sends_an_infinite_rate_without_waiting(monkeypatch):
    """Rate inf sends every request at once: not even a sleep(0) between two, which would let
    the streams already running delay the rest (by seconds, with hundreds of them)."""
    from minillm.server import bench

    waits: list[float] = []

    async def no_sleep(seconds):
        waits.append(seconds)

    async def fake_one(client, url, model, spec):
        return bench.RequestResult(ok=True)

    monkeypatch.setattr(bench, "_one", fake_one)
    monkeypatch.setattr(bench.asyncio, "sleep", no_sleep)
    specs = bench.make_dataset(12, (4, 8), (4, 8), seed=1)
    for rate, expected_waits in ((float("inf"), 0), (5.0, 12)):
        waits.clear()
        results, _ = asyncio.run(bench.run_benchmark("http://unused", "m", specs, rate, None, 0))
        assert len(results) == 12 and len(waits) == expected_waits


def test_bench_serve_writes_the_result_format(server, tmp_path):
    from minillm.cli import main

    out = tmp_path / "r.json"
    assert main(["bench", "serve", "--url", server.url, "--num-requests", "6",
                 "--min-prompt", "4", "--max-prompt", "16", "--min-output", "2",
                 "--max-output", "8", "--request-rate", "50", "--max-concurrency", "3",
                 "--save-detailed", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("engine", "device", "model", "command", "commit", "num_requests", "request_rate",
                "max_concurrency", "request_throughput", "output_throughput",
                "total_token_throughput", "mean_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
                "p90_itl_ms", "p99_e2el_ms"):
        assert key in result, key
    assert result["completed"] == 6 and result["failed"] == 0
    assert 6 * 2 <= result["total_output_tokens"] <= 6 * 8
    assert len(result["requests"]) == 6 and min(r["sent_s"] for r in result["requests"]) == 0
    for r in result["requests"]:  # text chunks (if any: a tiny vocabulary) come in order
        assert r["chunks_s"] == sorted(r["chunks_s"])
        assert all(t > r["sent_s"] for t in r["chunks_s"])
