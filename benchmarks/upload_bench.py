"""Host cost of staging a step's inputs in pinned memory, three ways (CUDA only).

A step uploads 5-9 small tensors built from Python lists (token ids, positions, slots, block
tables). torch.profiler put `aten::is_pinned` (the check `Tensor.pin_memory()` makes before
pinning) at ~2 ms for 9 calls of a prefill step; this asks whether another way is cheaper,
timing per upload of `n` int64 values:

- `pin_memory`: `torch.tensor(data).pin_memory()` (is_pinned, then a pinned copy);
- `empty_pinned`: `torch.empty(n, pin_memory=True).copy_(torch.tensor(data))` (no check);
- `tensor_pinned`: `torch.tensor(data, pin_memory=True)`;

each followed by the non-blocking copy to the GPU, as `minillm.transfer.to_device` does.

    python benchmarks/upload_bench.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def pin_memory(data):
    return torch.tensor(data, dtype=torch.long).pin_memory()


def empty_pinned(data):
    src = torch.tensor(data, dtype=torch.long)
    return torch.empty(src.shape, dtype=torch.long, pin_memory=True).copy_(src)


def tensor_pinned(data):
    return torch.tensor(data, dtype=torch.long, pin_memory=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 256, 4096])
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    device = torch.device("cuda")
    rows = []
    for n in args.sizes:
        data = list(range(n))
        for name, stage in (("pin_memory", pin_memory), ("empty_pinned", empty_pinned),
                            ("tensor_pinned", tensor_pinned)):
            for _ in range(50):  # warm the caching host allocator
                stage(data).to(device, non_blocking=True)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.iters):
                stage(data).to(device, non_blocking=True)
            host_us = (time.perf_counter() - start) / args.iters * 1e6
            torch.cuda.synchronize()
            rows.append({"n": n, "way": name, "host_us_per_upload": round(host_us, 2)})
            print(rows[-1])
    result = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "iters": args.iters, "uploads": rows}
    with open(os.path.join(args.out, "upload_bench.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
