"""What watching a run costs: generation with and without the dashboard, same workload, CPU.

The demo model (SmolLM2-135M-Instruct, float32) generates the same greedy, `ignore_eos`
workload several times in each of four modes, interleaved round by round so that drift in the
machine's load hits every mode alike:

- `plain`: `llm.generate` with nothing attached (the baseline);
- `trace`: a `minillm.trace.TraceRecorder` attached (every step recorded, pool included);
- `dashboard`: a live `minillm.viz.Dashboard` with its default throttle (what
  `generate(..., show=True)` uses);
- `dashboard_every_step`: the dashboard with the throttle off, one frame per step (what the
  throttle saves).

Two measures per mode. `overhead_pct` compares median wall times with `plain`: the honest
end-to-end figure, but on a shared CPU its noise is a few percent. `observer_pct` is the time
spent inside the engine's step observers (recording and drawing, timed around each call) as a
share of the run: the cost itself, with little noise. Outside Jupyter the widget has no
frontend, so sending a frame to the browser is not included; building it is.

    python benchmarks/dashboard_overhead.py            # writes the JSON below
    python benchmarks/dashboard_overhead.py --rounds 3 --out /tmp/overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from minillm import LLM, SamplingParams
from minillm.bench import device_name, git_commit
from minillm.trace import TraceRecorder
from minillm.viz import Dashboard

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                   "dashboard_overhead_cpu.json")
MODES = ("plain", "trace", "dashboard", "dashboard_every_step")
QUESTIONS = [
    "What is the capital of France?", "Name three primary colours.", "What is 12 times 7?",
    "Write a haiku about the sea.", "Why is the sky blue?", "Say hello in Spanish.",
    "What does a CPU do?", "Name a large mammal.", "How many days are in a leap year?",
    "What is photosynthesis?", "Give me a synonym for happy.", "What is the boiling point of "
    "water?", "Who wrote Hamlet?", "What is a prime number?", "Name a planet.",
    "What is the opposite of cold?",
]


class TimedObservers:
    """Wraps every step observer the engine has, summing the seconds spent in them."""

    def __init__(self, engine) -> None:
        self.seconds = 0.0
        self.engine, self.original = engine, list(engine.step_observers)
        engine.step_observers[:] = [self._wrap(f) for f in self.original]

    def restore(self) -> None:
        self.engine.step_observers[:] = self.original

    def _wrap(self, observe):
        def timed(*args):
            t0 = time.perf_counter()
            observe(*args)
            self.seconds += time.perf_counter() - t0
        return timed


def run_once(llm: LLM, mode: str, prompts, params) -> dict:
    engine = llm.engine
    watcher = None
    if mode == "trace":
        watcher = TraceRecorder(llm).attach()
    elif mode == "dashboard":
        watcher = Dashboard(llm)
    elif mode == "dashboard_every_step":
        watcher = Dashboard(llm, max_fps=1e9, max_overhead=1.0)
    timer = TimedObservers(engine)
    steps0 = engine.scheduler.num_steps
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    timer.restore()
    if watcher is not None:
        watcher.detach()
    assert engine.step_observers == [] and engine.scheduler.trace is None
    return {
        "seconds": seconds,
        "observer_seconds": timer.seconds,
        "steps": engine.scheduler.num_steps - steps0,
        "tokens": sum(len(o.token_ids) for o in outs),
        "frames": watcher.num_redraws if isinstance(watcher, Dashboard) else 0,
        "token_ids": [o.token_ids for o in outs],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="runs of each mode, interleaved")
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 keeps timings steady on a shared machine)")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    llm = LLM(device="cpu", max_model_len=512, seed=0)  # default blocks of 16, pool from 1 GiB
    tok = llm.engine.tokenizer
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}])
               for q in (QUESTIONS * 4)[: args.num_prompts]]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    load = [os.getloadavg()[0]]
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode in MODES if r % 2 == 0 else reversed(MODES):
            runs[mode].append(run_once(llm, mode, prompts, params))
            print(f"round {r} {mode:<21} {runs[mode][-1]['seconds']:.2f} s", file=sys.stderr)
    load.append(os.getloadavg()[0])

    reference = runs["plain"][0]["token_ids"]
    base = statistics.median(x["seconds"] for x in runs["plain"])
    results = {}
    for mode, xs in runs.items():
        assert all(x["token_ids"] == reference for x in xs), f"{mode} changed the tokens"
        med = statistics.median(x["seconds"] for x in xs)
        paired = [100 * (x["seconds"] / p["seconds"] - 1) for x, p in zip(xs, runs["plain"])]
        results[mode] = {
            "seconds": [round(x["seconds"], 3) for x in xs],
            "median_seconds": round(med, 3),
            "overhead_pct": round(100 * (med / base - 1), 2),
            "paired_overhead_pct": {"median": round(statistics.median(paired), 2),
                                    "min": round(min(paired), 2), "max": round(max(paired), 2)},
            "observer_pct": round(100 * statistics.median(
                x["observer_seconds"] / x["seconds"] for x in xs), 3),
            "observer_ms_per_step": round(1e3 * statistics.median(
                x["observer_seconds"] / x["steps"] for x in xs), 4),
            "frames_per_run": statistics.median(x["frames"] for x in xs),
            "tokens_per_second": round(xs[0]["tokens"] / med, 1),
        }
    steps = runs["plain"][0]["steps"]
    out = {
        "command": "python " + " ".join(["benchmarks/dashboard_overhead.py", *sys.argv[1:]]),
        "device": device_name(torch.device("cpu")),
        "commit": git_commit(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": [round(x, 2) for x in load],
        "model": "SmolLM2-135M-Instruct (demo), float32",
        "workload": {"prompts": args.num_prompts, "max_tokens": args.max_tokens,
                     "greedy": True, "ignore_eos": True, "steps_per_run": steps,
                     "kv_blocks": llm.config.num_kvcache_blocks,
                     "block_size": llm.config.kvcache_block_size, "rounds": args.rounds},
        "note": "overhead_pct: median wall time against plain's median; paired_overhead_pct: "
                "each round's run against the same round's plain run (min and max show the "
                "machine's noise). Both are end to end and noisy on a shared CPU. "
                "observer_pct: time inside the engine's step observers (recording and "
                "drawing) as a share of the run. The dashboard's frame is HTML built in the "
                "engine's thread; with no Jupyter frontend attached, sending it is not timed. "
                "Tokens were checked identical across all modes.",
        "modes": results,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(json.dumps({m: {k: v for k, v in r.items() if k != "seconds"}
                      for m, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
