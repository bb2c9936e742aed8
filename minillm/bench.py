"""`minillm bench offline`: offline throughput on a synthetic workload, with an optional peer.

(`minillm bench serve`, the online benchmark, lives in `minillm.server.bench`.)

The workload is nano-vllm's: random token-id prompts and output lengths drawn uniformly from
given ranges with a fixed seed, `ignore_eos`, greedy. minillm runs it through `LLM.generate`;
`--random-weights qwen3-0.6b` builds that architecture with random weights (no hub needed).
`--peer transformers` runs the same prompts through transformers' continuous batching (what
`generate_batch` drives, attention `paged|sdpa`) in the same process, so both numbers come from
the same machine and run; `--peer transformers-padded` uses `generate` in padded batches. The
result is printed and written as JSON to `benchmarks/results/`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import time

from minillm.config import LOAD_FORMATS

# Architectures for `--random-weights`: the shapes of real checkpoints, without their weights
# (no model hub here). Field names are transformers' Qwen3Config's.
PRESETS = {
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, tie_word_embeddings=True),
    "qwen3-8b": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                     num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, tie_word_embeddings=False),
}
PRESET_COMMON = dict(max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
                     bos_token_id=151643, eos_token_id=151645)


def write_preset(name: str, directory: str | None = None) -> str:
    """A checkpoint directory holding only the `config.json` of preset `name`: the engine
    builds the architecture from it and, with `load_format="dummy"`, fills random weights."""
    import tempfile

    from transformers import Qwen3Config

    if name not in PRESETS:
        raise ValueError(f"--random-weights={name!r} is invalid: choose one of {sorted(PRESETS)}")
    directory = directory or tempfile.mkdtemp(prefix=f"minillm-{name}-")
    config = Qwen3Config(**PRESETS[name], **PRESET_COMMON)
    config.architectures = ["Qwen3ForCausalLM"]
    config.save_pretrained(directory)
    return directory


def workload(num_requests: int, prompt_len: tuple[int, int], output_len: tuple[int, int],
             vocab_size: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Random prompts (token ids) and output lengths, uniform in the given inclusive ranges."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(vocab_size) for _ in range(rng.randint(*prompt_len))]
               for _ in range(num_requests)]
    outputs = [rng.randint(*output_len) for _ in range(num_requests)]
    return prompts, outputs


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def short_device(name: str) -> str:
    """'NVIDIA H200' -> 'h200', 'cpu (x86_64, 4 cores)' -> 'cpu': for file names."""
    return "cpu" if name.startswith("cpu") else name.split()[-1].lower()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=os.path.dirname(__file__))
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=os.path.dirname(__file__))
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_minillm(llm, prompts, outputs):
    from minillm.config import SamplingParams

    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in outputs]
    llm.generate(prompts[:2], [SamplingParams(max_tokens=2)] * 2, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return [o.token_ids for o in outs], elapsed


def _peer_model(model_dir: str, device, dtype, random_weights: bool, **kwargs):
    """The peer's model: `model_dir`'s weights, or its architecture with transformers' own
    random init (built on the device, so an 8B model needs no host copy)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if random_weights:
        with torch.device(device):
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir),
                                                    dtype=dtype, **kwargs).eval()
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                **kwargs).to(device).eval()


def cb_attention() -> str:
    """The attention transformers' continuous batching wants: spelled "paged|sdpa" before
    transformers 5.22; later versions page on their own and warn about the prefix."""
    import transformers

    version = tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit())
    return "paged|sdpa" if version < (5, 22) else "sdpa"


def run_transformers_cb(model_dir: str, prompts, outputs, device, dtype,
                        random_weights: bool = False):
    """transformers' continuous batching (the engine behind `generate_batch`, attention
    `paged|sdpa`), each request with its own `max_new_tokens` and EOS disabled. Returns the
    tokens, the seconds, and the output tokens it really produced."""
    from transformers import GenerationConfig

    model = _peer_model(model_dir, device, dtype, random_weights,
                        attn_implementation=cb_attention())
    config = GenerationConfig(do_sample=False, max_new_tokens=max(outputs), eos_token_id=None,
                              pad_token_id=0)
    manager = model.init_continuous_batching(generation_config=config)
    manager.start()
    start = time.perf_counter()
    ids = [manager.add_request(p, max_new_tokens=n) for p, n in zip(prompts, outputs)]
    results = {}
    while len(results) < len(ids):
        r = manager.get_result(timeout=1)
        if r is not None and r.is_finished():
            results[r.request_id] = r.generated_tokens
    elapsed = time.perf_counter() - start
    manager.stop(block=True)
    tokens = [list(results[i]) for i in ids]
    return tokens, elapsed, sum(len(t) for t in tokens)


def run_transformers(model_dir: str, prompts, outputs, device, dtype, batch_size: int,
                     random_weights: bool = False):
    """transformers' `generate` with left-padded batches; each batch runs to its longest
    requested output, and only the requested tokens count. `random_weights`: the
    architecture of `model_dir`'s config.json with transformers' own random init."""
    import torch

    model = _peer_model(model_dir, device, dtype, random_weights)
    tokens: list[list[int]] = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        chunk, lens = prompts[i : i + batch_size], outputs[i : i + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk],
                            device=device)
        with torch.inference_mode():
            # eos_token_id=None: like ignore_eos, EOS may be sampled but does not stop (a
            # min_new_tokens bound would instead forbid EOS and change the greedy tokens)
            out = model.generate(ids, attention_mask=mask, max_new_tokens=max(lens),
                                 eos_token_id=None, do_sample=False, pad_token_id=0)
        tokens += [out[j, width : width + n].tolist() for j, n in enumerate(lens)]
    return tokens, time.perf_counter() - start


def offline(args: argparse.Namespace) -> dict:
    from minillm.llm import LLM

    for lo, hi in (("min_prompt", "max_prompt"), ("min_output", "max_output")):
        if not 1 <= getattr(args, lo) <= getattr(args, hi):
            raise ValueError(f"--{lo.replace('_', '-')}={getattr(args, lo)} is invalid: must be "
                             f"in [1, --{hi.replace('_', '-')}={getattr(args, hi)}]")

    model, extra = args.model, {}
    if args.random_weights:
        if args.model is not None:
            raise ValueError("--model and --random-weights are exclusive: give one")
        model = write_preset(args.random_weights)
        extra = dict(load_format="dummy", skip_tokenizer_init=True)
    else:
        extra = dict(load_format=args.load_format, skip_tokenizer_init=args.skip_tokenizer_init)
    llm = LLM(model, device=args.device, dtype=args.dtype,
              tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
              max_num_seqs=args.max_num_seqs, enforce_eager=args.enforce_eager,
              attention_backend=args.attention_backend,
              overlap_schedule=False if args.no_overlap else None, **extra)
    mc = llm.config.model_config
    prompts, outputs = workload(args.num_requests, (args.min_prompt, args.max_prompt),
                                (args.min_output, args.max_output), mc.vocab_size, args.seed)
    tokens, elapsed = run_minillm(llm, prompts, outputs)
    out_tokens, in_tokens = sum(outputs), sum(len(p) for p in prompts)
    runner = llm.engine.runner
    result = {
        "engine": "minillm",
        "device": device_name(runner.device),
        "model": (f"{args.random_weights} (random weights)" if args.random_weights
                  else os.path.basename(os.path.normpath(llm.config.model))
                  + (" (random weights)" if args.load_format == "dummy" else "")),
        "detokenized": llm.engine.tokenizer is not None,
        "dtype": runner.dtype_name,
        "command": "minillm " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "num_requests": args.num_requests,
        "prompt_tokens": in_tokens,
        "output_tokens": out_tokens,
        "elapsed_s": round(elapsed, 3),
        "output_tokens_per_s": round(out_tokens / elapsed, 2),
        "total_tokens_per_s": round((in_tokens + out_tokens) / elapsed, 2),
        "tensor_parallel_size": args.tensor_parallel_size,
        "cuda_graphs": runner.graphs is not None,
        "overlap_schedule": llm.engine.overlap,
        "attention_backend": runner.backend.name,
        "stats": llm.stats(),
    }
    if args.peer == "none":
        llm.close()
    else:
        import torch

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}[runner.dtype_name]
        model_dir = llm.config.model
        llm.close()
        # The peer may run the first --peer-num-requests only (transformers is slow): its
        # throughput is then that of this subset, and says so.
        n = min(args.peer_num_requests or len(prompts), len(prompts))
        rw = bool(args.random_weights) or args.load_format == "dummy"
        if args.peer == "transformers":
            peer_tokens, peer_s, peer_out = run_transformers_cb(
                model_dir, prompts[:n], outputs[:n], runner.device, dtype, random_weights=rw)
            peer_name = f"transformers continuous batching (generate_batch, {cb_attention()})"
        else:
            peer_tokens, peer_s = run_transformers(model_dir, prompts[:n], outputs[:n],
                                                   runner.device, dtype, args.peer_batch_size,
                                                   random_weights=rw)
            peer_out = sum(outputs[:n])
            peer_name = f"transformers.generate (padded batches of {args.peer_batch_size})"
        import transformers

        result.update({
            "peer_engine": f"{peer_name}, transformers {transformers.__version__}",
            "peer_num_requests": n,
            "peer_elapsed_s": round(peer_s, 3),
            "peer_output_tokens_per_s": round(peer_out / peer_s, 2),
            "speedup_vs_peer": round((out_tokens / elapsed) / (peer_out / peer_s), 2),
        })
        if not rw:  # two random initialisations share no tokens
            result["greedy_requests_equal_to_peer"] = sum(
                a == b for a, b in zip(tokens, peer_tokens))
    return result


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks (results go to benchmarks/results/)")
    kinds = bench.add_subparsers(dest="bench_kind", required=True)
    p = kinds.add_parser("offline", help="offline throughput on a synthetic workload")
    p.add_argument("--model", default=None, help="local directory or hub id (default: demo)")
    p.add_argument("--random-weights", choices=sorted(PRESETS), default=None,
                   help="benchmark this architecture with random weights instead of --model")
    p.add_argument("--load-format", default="auto", choices=LOAD_FORMATS,
                   help="with --model: dummy fills random weights (config and tokenizer only)")
    p.add_argument("--skip-tokenizer-init", action="store_true",
                   help="with --model: no tokenizer, so no detokenization in the timed loop")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--no-overlap", action="store_true",
                   help="read each step's tokens back before launching the next")
    p.add_argument("--attention-backend", default="auto")
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--min-prompt", type=int, default=16)
    p.add_argument("--max-prompt", type=int, default=256)
    p.add_argument("--min-output", type=int, default=16)
    p.add_argument("--max-output", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer", choices=("none", "transformers", "transformers-padded"),
                   default="none", help="transformers: its continuous batching "
                   "(generate_batch); transformers-padded: generate() in padded batches")
    p.add_argument("--peer-batch-size", type=int, default=32)
    p.add_argument("--peer-num-requests", type=int, default=None,
                   help="run the peer on the first N requests only (default: all)")
    p.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/...)")
    p.set_defaults(func=main)

    from minillm.server import bench as serve_bench  # stdlib imports only until it runs

    s = kinds.add_parser("serve", help="online serving: TTFT, TPOT, ITL, throughput",
                         description=serve_bench.__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    serve_bench.add_arguments(s)
    s.set_defaults(func=serve_bench.main)


def main(args: argparse.Namespace) -> int:
    result = offline(args)
    print(json.dumps({k: v for k, v in result.items() if k != "stats"}, indent=2))
    path = args.output or os.path.join(
        "benchmarks", "results",
        f"offline_{(args.random_weights or result['model'])}_tp{args.tensor_parallel_size}"
        f"{'_eager' if args.enforce_eager else ''}{'_serial' if args.no_overlap else ''}"
        f"_{short_device(result['device'])}"
        f"_{result['commit']}.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"written to {path}")
    return 0
