"""Where a decode step's device time goes, kernel by kernel (torch.profiler).

256 sequences decoding at a context of about 600 tokens (the offline benchmark's middle), on
the `--random-weights` preset, with CUDA graphs and overlap as the engine runs by default;
profiles `--steps` engine steps and writes the kernel table (device time per kernel name,
summed over the steps) as JSON.

    python benchmarks/decode_profile.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from torch.profiler import ProfilerActivity, profile

from minillm import LLM, SamplingParams
from minillm.bench import device_name, write_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--random-weights", default="qwen3-0.6b")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--context", type=int, default=600)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    llm = LLM(write_preset(args.random_weights), load_format="dummy", skip_tokenizer_init=True)
    engine = llm.engine
    gen = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=0.0, max_tokens=10_000, ignore_eos=True)
    for _ in range(args.batch):
        engine.add_request(torch.randint(0, 1000, (args.context,), generator=gen).tolist(),
                           params)
    while engine.scheduler.waiting or any(s.in_prefill for s in engine.scheduler.running):
        engine.step()  # prefill everyone
    for _ in range(5):
        engine.step()  # warm decode steps
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            engine.step()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        device_us = event.device_time_total
        if device_us > 0:
            rows.append({"kernel": event.key[:120], "calls": event.count,
                         "us_per_step": round(device_us / args.steps, 1)})
    rows.sort(key=lambda r: -r["us_per_step"])
    total = sum(r["us_per_step"] for r in rows)
    for r in rows:
        r["share"] = round(r["us_per_step"] / total, 4)
    result = {"device": device_name(engine.runner.device), "model": args.random_weights,
              "batch": args.batch, "context": args.context, "steps": args.steps,
              "cuda_graphs": engine.runner.graphs is not None, "overlap": engine.overlap,
              "device_us_per_step": round(total, 1), "kernels": rows[:40]}
    print(f"device time per step: {total / 1000:.2f} ms")
    for r in rows[:25]:
        print(f"  {r['us_per_step']:8.1f} us {r['share']:6.1%}  x{r['calls'] // args.steps:<4} "
              f"{r['kernel']}")
    with open(os.path.join(args.out, "decode_profile.json"), "w") as f:
        json.dump(result, f, indent=2)
    llm.close()


if __name__ == "__main__":
    main()
