"""The `minillm` command. Each subcommand is registered only once it works."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

from minillm import __version__
from minillm.config import LOAD_FORMATS


def _simulate(args: argparse.Namespace) -> int:
    from minillm.config import EngineConfig
    from minillm.scheduler import Scheduler
    from minillm.simulate import Workload, run

    config = EngineConfig(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        kvcache_block_size=args.block_size,
        num_kvcache_blocks=args.num_blocks,
        enable_prefix_caching=args.prefix_cache != "off",
        prefix_cache="radix" if args.prefix_cache == "off" else args.prefix_cache,
    )
    workload = Workload(num_requests=args.requests, prompt_len=(args.min_prompt, args.max_prompt),
                        output_len=(args.min_output, args.max_output),
                        shared_prefix_len=args.shared_prefix, seed=args.seed)
    scheduler = Scheduler(config, trace=True)
    run(scheduler, workload.make())
    for step in scheduler.trace or []:
        print(step.to_text())
    print(json.dumps(scheduler.stats(), indent=2))
    return 0


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    """Flags that mirror `LLM(...)`'s arguments (defaults: EngineConfig's)."""
    g = p.add_argument_group("engine")
    g.add_argument("--model", default=None, help="local directory or hub id (default: demo)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    g.add_argument("--tensor-parallel-size", type=int, default=1)
    g.add_argument("--max-model-len", type=int, default=4096)
    g.add_argument("--max-num-seqs", type=int, default=256)
    g.add_argument("--max-num-batched-tokens", type=int, default=16384)
    g.add_argument("--kvcache-block-size", type=int, default=16)
    g.add_argument("--num-kvcache-blocks", type=int, default=None)
    g.add_argument("--no-prefix-caching", action="store_true")
    g.add_argument("--prefix-cache", default="radix", choices=("radix", "hash"))
    g.add_argument("--attention-backend", default="auto")
    g.add_argument("--enforce-eager", action="store_true")
    g.add_argument("--load-format", default="auto", choices=LOAD_FORMATS,
                   help="dummy: random weights (the directory needs config and tokenizer only)")
    g.add_argument("--no-overlap-schedule", action="store_true",
                   help="read each step's tokens back before launching the next (GPU)")
    g.add_argument("--seed", type=int, default=0)


def _engine_kwargs(args: argparse.Namespace) -> dict:
    return dict(device=args.device, dtype=args.dtype,
                tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
                max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                kvcache_block_size=args.kvcache_block_size,
                num_kvcache_blocks=args.num_kvcache_blocks,
                enable_prefix_caching=not args.no_prefix_caching, prefix_cache=args.prefix_cache,
                attention_backend=args.attention_backend, enforce_eager=args.enforce_eager,
                load_format=args.load_format,
                overlap_schedule=False if args.no_overlap_schedule else None, seed=args.seed)


def _add_sampling_args(p: argparse.ArgumentParser, temperature: float) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=temperature)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=-1)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--stop", action="append", default=None, help="a stop string (repeatable)")


def _sampling_params(args: argparse.Namespace):
    from minillm.config import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          min_p=args.min_p, max_tokens=args.max_tokens,
                          repetition_penalty=args.repetition_penalty, stop=args.stop)


def _generate(args: argparse.Namespace) -> int:
    from minillm.llm import LLM

    params = _sampling_params(args)  # bad flags fail before the model loads
    with LLM(args.model, **_engine_kwargs(args)) as llm:
        prompt = args.prompt
        if args.chat:
            prompt = llm.chat_template([{"role": "user", "content": args.prompt}])
        for chunk in llm.stream(prompt, params):
            print(chunk.text, end="", flush=True)
        print()
    return 0


def _chat(args: argparse.Namespace) -> int:
    if args.url:
        return _chat_remote(args)
    from minillm.llm import LLM

    params = _sampling_params(args)
    with LLM(args.model, **_engine_kwargs(args)) as llm:
        return chat_shell(llm, params, input_fn=input)


def _chat_remote(args: argparse.Namespace) -> int:
    """`minillm chat --url URL`: the same shell, the replies streamed from a server."""
    from minillm.client import Client

    params = _sampling_params(args)  # the same checks as in-process, before any request
    request = dict(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                   min_p=params.min_p, max_tokens=params.max_tokens,
                   repetition_penalty=params.repetition_penalty, stop=params.stop or None)
    request = {k: v for k, v in request.items() if v is not None}
    with Client(args.url) as client:
        return chat_shell(None, params, input_fn=input,
                          reply_fn=lambda history: client.chat_stream(history, **request))


def chat_shell(llm, params, input_fn=input, print_fn=print, reply_fn=None) -> int:
    """An interactive multi-turn chat: streamed replies, `/reset` clears history, `/exit` ends.

    Replies come from `llm` (in-process) unless `reply_fn(history)` is given: then it yields
    the reply's pieces (`minillm chat --url` streams them from a server).
    """
    if reply_fn is None:
        def reply_fn(history):
            return (chunk.text for chunk in llm.stream(llm.chat_template(history), params))

    print_fn("minillm chat: /reset clears the conversation, /exit (or Ctrl-D) quits.")
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input_fn(">>> ").strip()
        except (EOFError, KeyboardInterrupt):
            print_fn()
            return 0
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history.clear()
            print_fn("(conversation cleared)")
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        reply = []
        for piece in reply_fn(history):
            reply.append(piece)
            print_fn(piece, end="", flush=True)
        print_fn()
        history.append({"role": "assistant", "content": "".join(reply)})


def _serve(args: argparse.Namespace) -> int:
    try:
        from minillm.server.api import run_server
    except ImportError as e:
        raise SystemExit(f"minillm serve needs the server extra: pip install 'minillm[server]' "
                         f"({e})") from None
    return run_server(args.model, host=args.host, port=args.port,
                      served_model_name=args.served_model_name, log_level=args.log_level,
                      access_log=args.access_log, **_engine_kwargs(args))


def _download(args: argparse.Namespace) -> int:
    from minillm.hub import resolve_model

    print(resolve_model(args.model))
    return 0


def _is_torchrun_worker(args: argparse.Namespace) -> bool:
    from minillm.distributed import launched_by_torchrun

    return (hasattr(args, "tensor_parallel_size") and launched_by_torchrun()
            and int(os.environ["RANK"]) > 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minillm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"minillm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser(
        "simulate",
        help="run the scheduler and KV block manager on a synthetic workload (made-up tokens)",
        description="Drive the real scheduler and block manager with made-up tokens and print "
        "the per-step trace and counters. Shows batching, chunked prefill, preemption and "
        "prefix caching without a model.",
    )
    sim.add_argument("--requests", type=int, default=12)
    sim.add_argument("--min-prompt", type=int, default=16)
    sim.add_argument("--max-prompt", type=int, default=96)
    sim.add_argument("--min-output", type=int, default=4)
    sim.add_argument("--max-output", type=int, default=32)
    sim.add_argument("--shared-prefix", type=int, default=32, help="tokens all prompts share")
    sim.add_argument("--block-size", type=int, default=16)
    sim.add_argument("--num-blocks", type=int, default=24)
    sim.add_argument("--max-num-seqs", type=int, default=8)
    sim.add_argument("--max-num-batched-tokens", type=int, default=128)
    sim.add_argument("--max-model-len", type=int, default=256)
    sim.add_argument("--prefix-cache", choices=("radix", "hash", "off"), default="radix")
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=_simulate)

    gen = sub.add_parser("generate", help="complete one prompt, streaming the text")
    gen.add_argument("prompt")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt as a user message")
    _add_engine_args(gen)
    _add_sampling_args(gen, temperature=0.0)
    gen.set_defaults(func=_generate)

    chat = sub.add_parser("chat", help="an interactive chat shell")
    chat.add_argument("--url", default=None,
                      help="chat with a running `minillm serve` at this URL instead of loading "
                      "a model (e.g. http://127.0.0.1:8000)")
    _add_engine_args(chat)
    _add_sampling_args(chat, temperature=0.7)
    chat.set_defaults(func=_chat)

    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server",
                           description="Serve the model over the OpenAI API (/v1/chat/completions,"
                           " /v1/completions, /v1/models, /health, /metrics).")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", default=None,
                       help="the name clients use (default: the model directory's name)")
    serve.add_argument("--log-level", default="info",
                       choices=("critical", "error", "warning", "info", "debug"))
    serve.add_argument("--access-log", action="store_true", help="log every HTTP request")
    _add_engine_args(serve)
    serve.set_defaults(func=_serve)

    dl = sub.add_parser("download", help="fetch (and convert) a model; prints its directory")
    dl.add_argument("--model", default=None, help="hub id (default: the demo model)")
    dl.set_defaults(func=_download)

    from minillm.bench import add_parser as add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if _is_torchrun_worker(args):
        # torchrun started this process as rank > 0: serve forward passes for rank 0, which
        # runs the command itself and sends the engine config.
        from minillm.runner import resolve_device
        from minillm.worker import run_worker

        run_worker(device_type=resolve_device(args.device).type)
        return 0
    try:
        return args.func(args)
    except ValueError as e:  # bad arguments: say which, no traceback
        print(f"minillm {args.command}: error: {e}")
        return 2
