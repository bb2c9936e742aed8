"""What sampling costs per step: `Sampler` on a full batch of logits, one row per sequence.

256 rows over Qwen3's 151,936-token vocabulary (the offline benchmark's batch), for each mix of
`SamplingParams` a user would send: greedy, temperature, top-k, top-p, both, min-p, seeded
rows, a repetition penalty. For top-k and top-p the full-vocabulary sort is timed beside what
`apply_top_k_top_p` does now: a partial ranking (`torch.topk` up to the batch's largest top_k),
and for top-p alone a threshold search (`minillm.kernels.top_p`, on CUDA).

    python benchmarks/sampler_bench.py --out DIR            (a GPU; CPU works with --vocab)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch

from minillm.config import SamplingParams
from minillm.sampling import Sampler, SamplingBatch
from minillm.sequence import Sequence

MIXES = {
    "greedy": dict(temperature=0.0),
    "temperature 0.8": dict(temperature=0.8),
    "top_k 50": dict(temperature=0.8, top_k=50),
    "top_p 0.95": dict(temperature=0.8, top_p=0.95),
    "top_k 50 + top_p 0.95": dict(temperature=0.8, top_k=50, top_p=0.95),
    "min_p 0.05": dict(temperature=0.8, min_p=0.05),
    "seeded rows": dict(temperature=0.8, seed=1),
    "repetition_penalty 1.1": dict(temperature=0.8, repetition_penalty=1.1),
}


def timed_ms(fn, device: torch.device, reps: int = 20) -> float:
    """Median wall milliseconds of `fn()`, the device synchronized around each run."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(args.rows, args.vocab, generator=gen) * 3).to(torch.bfloat16)
    logits = logits.to(device)
    sampler = Sampler()
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "rows": args.rows, "vocab": args.vocab, "mixes": {}}
    for name, kw in MIXES.items():
        seqs = []
        for i in range(args.rows):
            seq = Sequence(torch.randint(0, args.vocab, (100,), generator=gen).tolist(),
                           SamplingParams(max_tokens=64, **kw))
            seq.append_token(i % args.vocab)
            seqs.append(seq)
        t0 = time.perf_counter()
        batch = SamplingBatch.from_sequences(seqs, args.vocab, device=device)
        build_ms = 1000 * (time.perf_counter() - t0)
        row = {"build_batch_ms": round(build_ms, 3),
               "sampler_ms": round(timed_ms(lambda b=batch: sampler(logits, b), device), 3)}
        if batch.do_top_k or batch.do_top_p:  # the same batch through the full sort
            # (top_k = the whole vocabulary filters nothing but takes the sorting path)
            full = dataclasses.replace(batch, do_top_k=True, max_top_k=args.vocab)
            row["sampler_full_sort_ms"] = round(timed_ms(lambda b=full: sampler(logits, b),
                                                         device), 3)
            same = torch.equal(sampler(logits, batch).token_ids,
                               sampler(logits, full).token_ids)
            row["same_tokens_as_full_sort"] = bool(same)
        results["mixes"][name] = row
        print(f"{name:<24} {row}", flush=True)
    path = os.path.join(args.out, "sampler_bench.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print("written to", path)


if __name__ == "__main__":
    main()
