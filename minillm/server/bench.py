"""`minillm bench serve`: an online benchmark against a running server, as vLLM's
`benchmark_serving`.

Workload: a fixed-seed synthetic dataset of `--num-requests` prompts of random common words
(lengths uniform in [--min-prompt, --max-prompt] words, about one token each) and output
lengths uniform in [--min-output, --max-output], sent to `/v1/completions` with
`ignore_eos` and `max_tokens`, so every request generates exactly its output length. Requests
arrive as a Poisson process at `--request-rate` per second (`inf`: all at once), and at most
`--max-concurrency` are in flight when that is given.

Measured per request on the client, from the SSE stream: TTFT (time to the first text),
ITL (the gaps between text chunks, one token each), TPOT ((latency - TTFT) / (output tokens
- 1)) and the end-to-end latency; prompt and output tokens come from the server's `usage`.
Reported: mean, median, p90 and p99 of each, request throughput, output and total token
throughput. Printed, and written as JSON to `benchmarks/results/`.

Without `--url` it starts `python -m minillm serve` with the given engine flags on a free
port, waits for `/health`, runs, and ends the server.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

from minillm.config import LOAD_FORMATS

# Short, common words: most are one token in any English BPE vocabulary, so a prompt of n
# words is about n tokens (the exact count comes back in `usage`).
WORDS = ("the of and to in is was for on are with as his they at be this from have or by one "
         "had not but what all were when we there can an your which their said if do will each "
         "about how up out them then she many some so these would other into has more her two "
         "like him see time could no make than first been its who now people my made over did "
         "down only way find use may water long little very after words called just where most "
         "know get through back much before go good new write our used me man too any day same "
         "right look think also around another came come work three word must because does part"
         ).split()


@dataclass
class RequestSpec:
    prompt: str
    output_len: int


@dataclass
class RequestResult:
    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0  # seconds
    latency: float = 0.0  # seconds, arrival to last chunk
    itl: list[float] = field(default_factory=list)  # seconds between chunks
    error: str = ""
    sent: float = 0.0  # perf_counter() when sent; with `chunks`, for --save-detailed timelines
    chunks: list[float] = field(default_factory=list)  # perf_counter() of each text chunk


def make_dataset(num_requests: int, prompt_len: tuple[int, int], output_len: tuple[int, int],
                 seed: int) -> list[RequestSpec]:
    rng = random.Random(seed)
    return [RequestSpec(" ".join(rng.choice(WORDS) for _ in range(rng.randint(*prompt_len))),
                        rng.randint(*output_len)) for _ in range(num_requests)]


def arrival_gaps(n: int, rate: float, seed: int) -> list[float]:
    """Seconds to wait before each request: exponential gaps (a Poisson process), or none."""
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed + 1)
    return [rng.expovariate(rate) for _ in range(n)]


async def _one(client, url: str, model: str, spec: RequestSpec) -> RequestResult:
    body = {"model": model, "prompt": spec.prompt, "max_tokens": spec.output_len,
            "temperature": 0.0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    start = last = time.perf_counter()
    result = RequestResult(ok=False, sent=start)
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                result.error = f"HTTP {r.status_code}: {(await r.aread()).decode()[:200]}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                now = time.perf_counter()
                if chunk.get("usage"):
                    result.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0]["text"]:
                    if result.ttft == 0.0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                    result.chunks.append(now)
        result.latency = last - start
        result.ok = result.output_tokens > 0
    except Exception as e:  # a benchmark reports failures; it does not stop at the first
        cause = e.__cause__ or e.__context__  # httpx's errors often say nothing themselves
        result.error = (f"{type(e).__name__}: {e or repr(cause)} "
                        f"(after {len(result.chunks)} chunks)")
    return result


async def run_benchmark(url: str, model: str, specs: list[RequestSpec], request_rate: float,
                        max_concurrency: int | None, seed: int
                        ) -> tuple[list[RequestResult], float]:
    import httpx

    limit = max_concurrency or len(specs)
    semaphore = asyncio.Semaphore(limit)
    # No keep-alive: a request sent on a pooled connection just as the server closes it
    # (uvicorn's keep-alive timeout) fails with a ReadError that is no fault of the server's.
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        async def limited(spec: RequestSpec) -> RequestResult:
            async with semaphore:
                return await _one(client, url, model, spec)

        tasks = []
        start = time.perf_counter()
        for spec, gap in zip(specs, arrival_gaps(len(specs), request_rate, seed)):
            if gap > 0:  # rate inf: all at once; even a sleep(0) per request would let
                await asyncio.sleep(gap)  # the streams already running delay the rest
            tasks.append(asyncio.create_task(limited(spec)))
        results = await asyncio.gather(*tasks)
        return results, time.perf_counter() - start


def _stats(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """Mean, median, p90 and p99 (in ms by default) of `values`."""
    if not values:
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "p99": 0.0}
    xs = sorted(values)

    def pct(p: float) -> float:  # linear interpolation, as numpy.percentile
        k = (len(xs) - 1) * p / 100
        lo, hi = math.floor(k), math.ceil(k)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

    return {"mean": round(sum(xs) / len(xs) * scale, 3), "median": round(pct(50) * scale, 3),
            "p90": round(pct(90) * scale, 3), "p99": round(pct(99) * scale, 3)}


def summarize(results: list[RequestResult], duration: float) -> dict:
    ok = [r for r in results if r.ok]
    input_tokens = sum(r.prompt_tokens for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    metrics = {
        "completed": len(ok), "failed": len(results) - len(ok),
        "duration_s": round(duration, 3),
        "total_input_tokens": input_tokens, "total_output_tokens": output_tokens,
        "request_throughput": round(len(ok) / duration, 3),
        "output_throughput": round(output_tokens / duration, 2),
        "total_token_throughput": round((input_tokens + output_tokens) / duration, 2),
    }
    for name, values in (("ttft_ms", [r.ttft for r in ok]), ("tpot_ms", tpot),
                         ("itl_ms", [x for r in ok for x in r.itl]),
                         ("e2el_ms", [r.latency for r in ok])):
        metrics.update({f"{k}_{name}": v for k, v in _stats(values).items()})
    errors = sorted({r.error for r in results if not r.ok})[:5]
    if errors:
        metrics["errors"] = errors
    return metrics


def timelines(results: list[RequestResult], t0: float) -> list[dict]:
    """Per request: when it was sent and when each text chunk came, in seconds from `t0` (the
    first send); bursts of chunks with no gap show where a stream was held up on the way."""
    return [{"sent_s": round(r.sent - t0, 6), "chunks_s": [round(t - t0, 6) for t in r.chunks],
             "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens,
             "error": r.error} for r in results]


# ---- a server of our own ----


def start_server(args: argparse.Namespace):
    """`minillm serve` with the benchmark's engine flags, on a free port, once healthy."""
    from minillm.server.launcher import ServerProcess

    flags = ["--log-level", "warning", "--device", args.device, "--dtype", args.dtype,
             "--tensor-parallel-size", str(args.tensor_parallel_size),
             "--max-model-len", str(args.max_model_len), "--max-num-seqs", str(args.max_num_seqs),
             "--attention-backend", args.attention_backend, "--load-format", args.load_format]
    if args.num_kvcache_blocks:
        flags += ["--num-kvcache-blocks", str(args.num_kvcache_blocks)]
    if args.enforce_eager:
        flags.append("--enforce-eager")
    return ServerProcess(args.model, *flags).start(timeout=args.server_timeout)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None,
                   help="a running server (default: start one with the engine flags below)")
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="requests per second, Poisson arrivals (default: inf, all at once)")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--min-prompt", type=int, default=16)
    p.add_argument("--max-prompt", type=int, default=128)
    p.add_argument("--min-output", type=int, default=16)
    p.add_argument("--max-output", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/...)")
    p.add_argument("--save-detailed", action="store_true",
                   help="also write each request's send and text-chunk times (a timeline)")
    g = p.add_argument_group("server started without --url")
    g.add_argument("--model", default=None, help="local directory or hub id (default: demo)")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto")
    g.add_argument("--tensor-parallel-size", type=int, default=1)
    g.add_argument("--max-model-len", type=int, default=4096)
    g.add_argument("--max-num-seqs", type=int, default=256)
    g.add_argument("--num-kvcache-blocks", type=int, default=None)
    g.add_argument("--enforce-eager", action="store_true")
    g.add_argument("--attention-backend", default="auto")
    g.add_argument("--load-format", default="auto", choices=LOAD_FORMATS,
                   help="dummy: random weights in the model's shape (config and tokenizer only)")
    g.add_argument("--server-timeout", type=float, default=600.0,
                   help="seconds to wait for the server to load the model")


def main(args: argparse.Namespace) -> int:
    import httpx

    from minillm.bench import git_commit

    for lo, hi in (("min_prompt", "max_prompt"), ("min_output", "max_output")):
        if not 1 <= getattr(args, lo) <= getattr(args, hi):
            raise ValueError(f"--{lo.replace('_', '-')}={getattr(args, lo)} is invalid: must be "
                             f"in [1, --{hi.replace('_', '-')}={getattr(args, hi)}]")
    if not args.request_rate > 0:
        raise ValueError(f"--request-rate={args.request_rate} is invalid: must be > 0 (or inf)")
    server = None if args.url else start_server(args)
    url = args.url.rstrip("/") if args.url else server.url
    try:
        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        engine = httpx.get(url + "/health").json().get("engine", {})
        specs = make_dataset(args.num_requests, (args.min_prompt, args.max_prompt),
                             (args.min_output, args.max_output), args.seed)
        asyncio.run(run_benchmark(url, model, specs[:2], float("inf"), None, args.seed))  # warm
        load = os.getloadavg()[0]  # on a shared CPU host, other work weighs on the numbers
        results, duration = asyncio.run(run_benchmark(
            url, model, specs, args.request_rate, args.max_concurrency, args.seed))
    finally:
        if server is not None:
            server.stop()
    result = {
        "engine": "minillm", "device": engine.get("device", "unknown"),
        "model": model + (" (random weights)" if args.load_format == "dummy" else ""),
        "dtype": engine.get("dtype"), "command": "minillm " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "num_requests": args.num_requests,
        "request_rate": "inf" if math.isinf(args.request_rate) else args.request_rate,
        "max_concurrency": args.max_concurrency,
        "prompt_words": [args.min_prompt, args.max_prompt],
        "output_tokens_range": [args.min_output, args.max_output], "seed": args.seed,
        "tensor_parallel_size": engine.get("tensor_parallel_size"),
        "load_average_1m_at_start": round(load, 2),
        **summarize(results, duration),
    }
    if args.save_detailed:  # t0: the first send, on the host's monotonic clock (as servers' logs)
        result["t0_perf_counter"] = t0 = min(r.sent for r in results)
        result["requests"] = timelines(results, t0)
    print(json.dumps(result, indent=2))
    path = args.output or os.path.join(
        "benchmarks", "results",
        f"serve_{model}_{result['device'].split()[0].lower()}_{result['commit']}.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"written to {path}")
    return 0 if result["failed"] == 0 else 1
