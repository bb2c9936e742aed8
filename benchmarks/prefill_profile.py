"""What a prefill step costs on the host and on the device (torch.profiler).

Decode steps replay CUDA graphs; prefill steps run eagerly, so their time can be the host's
(Python, kernel launches) rather than the GPU's. For each `--batch` size this adds that many
fresh prompts of `--prompt-len` random tokens (prefix caching off: nothing is reused), runs the
one engine step that prefills them all, and reports its wall time (launch to tokens ready)
beside the device time of its kernels. The last batch size is also profiled on the host: the
operators with the most self CPU time (torch.profiler) and the Python functions with the most
own time (cProfile), as JSON.

    python benchmarks/prefill_profile.py --model DIR --out DIR    # a checkpoint's shape
    python benchmarks/prefill_profile.py --random-weights qwen3-0.6b --out DIR
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

from minillm import LLM, SamplingParams
from minillm.bench import device_name, write_preset


def prefill_once(engine, batch: int, prompt_len: int, gen: torch.Generator,
                 around=None) -> float:
    """Seconds for one step that prefills `batch` new prompts, tokens read back; `around` is
    entered for that step alone (a profiler)."""
    sync = torch.cuda.synchronize if engine.runner.device.type == "cuda" else lambda: None
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    for _ in range(batch):
        engine.add_request(torch.randint(0, 1000, (prompt_len,), generator=gen).tolist(), params)
    sync()
    with around or contextlib.nullcontext():
        start = time.perf_counter()
        engine.step()
        sync()
        elapsed = time.perf_counter() - start
    while engine.has_unfinished():
        engine.step()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="a directory with config.json")
    parser.add_argument("--random-weights", default="qwen3-0.6b")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    model = args.model or write_preset(args.random_weights)
    llm = LLM(model, load_format="dummy", skip_tokenizer_init=True, enable_prefix_caching=False,
              max_num_batched_tokens=max(16384, max(args.batch) * args.prompt_len),
              max_num_seqs=max(256, max(args.batch)))
    engine = llm.engine
    gen = torch.Generator().manual_seed(0)
    cuda = engine.runner.device.type == "cuda"
    rows = []
    for batch in args.batch:
        prefill_once(engine, batch, args.prompt_len, gen)  # compile, warm
        times = sorted(prefill_once(engine, batch, args.prompt_len, gen)
                       for _ in range(args.repeats))
        prof = profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU])
        prefill_once(engine, batch, args.prompt_len, gen, around=prof)
        device_ms = sum(e.self_device_time_total for e in prof.key_averages()) / 1000
        rows.append({"batch": batch, "tokens": batch * args.prompt_len,
                     "wall_ms_median": round(times[len(times) // 2] * 1000, 3),
                     "device_ms": round(device_ms, 3)})
        print(rows[-1])
    prof = profile(activities=[ProfilerActivity.CPU])
    prefill_once(engine, args.batch[-1], args.prompt_len, gen, around=prof)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:30]
    host = [{"op": e.key[:100], "calls": e.count,
             "self_cpu_ms": round(e.self_cpu_time_total / 1000, 3)} for e in ops]
    for h in host[:20]:
        print(f"  {h['self_cpu_ms']:8.3f} ms  x{h['calls']:<5} {h['op']}")
    profiler = cProfile.Profile()  # the Python side: which functions the host's time goes to
    prefill_once(engine, args.batch[-1], args.prompt_len, gen, around=profiler)
    stats = pstats.Stats(profiler)
    python = sorted(({"function": f"{os.path.basename(file)}:{line}({name})", "calls": calls,
                      "tottime_ms": round(tottime * 1000, 3), "cumtime_ms": round(cum * 1000, 3)}
                     for (file, line, name), (_, calls, tottime, cum, _) in stats.stats.items()),
                    key=lambda r: -r["tottime_ms"])[:30]
    for r in python[:20]:
        print(f"  {r['tottime_ms']:8.3f} ms  x{r['calls']:<5} {r['function']}")
    result = {"device": device_name(engine.runner.device),
              "model": args.model or f"{args.random_weights} (random weights)",
              "prompt_len": args.prompt_len, "overlap": engine.overlap,
              "attention_backend": type(engine.runner.backend).__name__,
              "steps": rows, "host_ops_last_batch": host,
              "python_functions_last_batch": python}
    with open(os.path.join(args.out, "prefill_profile.json"), "w") as f:
        json.dump(result, f, indent=2)
    llm.close()


if __name__ == "__main__":
    main()
