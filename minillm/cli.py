"""The `minillm` command. Each subcommand is registered only once it works."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from minillm import __version__


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # bad arguments: say which, no traceback
        print(f"minillm {args.command}: error: {e}")
        return 2
