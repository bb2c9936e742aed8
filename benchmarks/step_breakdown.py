"""Where a step's time goes: the host's scheduling and bookkeeping vs the device's forward.

Runs the offline benchmark's workload (nano-vllm's, `--random-weights` preset) and times four
parts of every `LLMEngine.step`: `schedule`, the runner (inputs, forward, sampling, up to the
device finishing: a synchronize is added at its end, which reading the tokens back would do
anyway), `postprocess` (`advance` + `commit`), and the per-request outputs (`_update`). It runs
the serial engine (`overlap_schedule=False`): whatever is not the runner is host time during
which the GPU idles, the time overlap scheduling hides.

    python benchmarks/step_breakdown.py --random-weights qwen3-0.6b --out DIR
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import torch

from minillm import LLM, SamplingParams
from minillm.bench import device_name, workload, write_preset

RUNNER = "runner (inputs, forward, sampling, device)"


def timed(totals: dict, name: str, fn, sync: bool = False):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if sync:
            torch.cuda.synchronize()
        totals[name] += time.perf_counter() - t0
        return out
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--random-weights", default="qwen3-0.6b")
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    llm = LLM(write_preset(args.random_weights), load_format="dummy", skip_tokenizer_init=True,
              enforce_eager=args.enforce_eager, overlap_schedule=False)
    prompts, outputs = workload(args.num_requests, (100, 1024), (100, 1024), 151936, seed=0)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in outputs]
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    engine = llm.engine
    totals = dict.fromkeys(("schedule", RUNNER, "postprocess", "outputs"), 0.0)
    engine.scheduler.schedule = timed(totals, "schedule", engine.scheduler.schedule)
    engine.runner.run = timed(totals, RUNNER, engine.runner.run, sync=True)
    engine.scheduler.advance = timed(totals, "postprocess", engine.scheduler.advance)
    engine.scheduler.commit = timed(totals, "postprocess", engine.scheduler.commit)
    engine._update = timed(totals, "outputs", engine._update)
    steps0 = engine.scheduler.num_steps
    t0 = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    steps = engine.scheduler.num_steps - steps0
    parts = {k: {"s": round(v, 3), "ms_per_step": round(1000 * v / steps, 3),
                 "share": round(v / elapsed, 3)} for k, v in totals.items()}
    other = elapsed - sum(totals.values())
    parts["other (engine loop, LLM.generate)"] = {
        "s": round(other, 3), "ms_per_step": round(1000 * other / steps, 3),
        "share": round(other / elapsed, 3)}
    result = {"device": device_name(engine.runner.device), "model": args.random_weights,
              "cuda_graphs": engine.runner.graphs is not None, "steps": steps,
              "elapsed_s": round(elapsed, 3),
              "output_tokens_per_s": round(sum(outputs) / elapsed, 1), "parts": parts}
    print(json.dumps(result, indent=2))
    name = f"step_breakdown{'_eager' if args.enforce_eager else ''}.json"
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
