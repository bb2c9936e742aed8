"""The all-reduces of one tensor-parallel decode step, timed alone on 2 GPUs (NCCL).

A TP=2 decoder layer all-reduces twice (after o_proj and after down_proj) a [batch, hidden]
activation, so a decode step of Qwen3-8B does 2 x 36 all-reduces of [batch, 4096] bf16. This
script times exactly that sequence, replayed as one CUDA graph as the engine's decode graphs
do, for several batch sizes; dividing by the measured TP=2 step time gives the all-reduce share
of a decode step.

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \\
        python benchmarks/allreduce_share.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1",
                  NVSHMEM_DISABLE_NVLS="1")


def _rank(rank: int, world: int, port: int, hidden: int, layers: int, batches: list[int],
          out: str) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, device_id=torch.device("cuda", rank))
    results = {}
    for batch in batches:
        x = torch.randn(batch, hidden, dtype=torch.bfloat16, device="cuda")
        for _ in range(3):
            dist.all_reduce(x)  # warm-up: NCCL sets up its channels
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(2 * layers):
                dist.all_reduce(x)
        graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        reps = 50
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / reps
        results[batch] = {"all_reduces_per_step": 2 * layers,
                          "ms_per_step": round(ms, 4),
                          "us_per_all_reduce": round(1000 * ms / (2 * layers), 2)}
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"device": f"{world}x {torch.cuda.get_device_name(0)}",
                       "hidden": hidden, "layers": layers, "by_batch": results}, f, indent=2)
        print(json.dumps(results, indent=2))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--batches", default="1,16,64,128,256")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    path = os.path.join(args.out, "allreduce_share.json")
    mp.spawn(_rank, args=(2, 29533, args.hidden, args.layers, batches, path), nprocs=2)


if __name__ == "__main__":
    main()
