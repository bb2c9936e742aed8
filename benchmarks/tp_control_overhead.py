"""What the tensor-parallel control channel costs per step, on CPU, next to a forward pass.

Every step, rank 0 broadcasts one `StepMessage` (the step's `StepInput`s) to the workers over
a gloo group (`minillm/worker.py` says why a broadcast). This measures that broadcast
(`minillm.distributed.broadcast_object`) between two spawned gloo ranks for realistic
messages: decode steps of 1, 32 and 256 sequences (one token each, block tables of 64 blocks:
1,024 tokens of context in blocks of 16) and a prefill step of 4 prompts of 512 tokens. Then it
times one decode forward of the demo model (SmolLM2-135M) at batch 32 on one rank, in this
process, so the overhead reads as a share of a step.

Two times per message, medians over `--reps` repetitions, each started with both ranks idle
(a barrier, then 1 ms for the worker to sit in its receive, as it does while rank 0 schedules):

- `sender_ms`: how long `broadcast_object` keeps rank 0 (pickling, sending);
- `delivered_ms`: from rank 0's call until both ranks hold the message (the worker has
  unpickled it), read on the host's monotonic clock, which both processes share. This is
  what a step waits for before the worker can start its forward.

For scale it also times one all-reduce of a decode step's activations (`[32, 576]` float32),
the data-channel collective that each layer runs twice.

    python benchmarks/tp_control_overhead.py            # writes the JSON below
    python benchmarks/tp_control_overhead.py --reps 50 --out /tmp/overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import statistics
import sys
import time

import torch

from minillm import distributed
from minillm.bench import device_name, git_commit
from minillm.sequence import StepInput
from minillm.worker import StepMessage

BLOCK_SIZE = 16
CONTEXT_BLOCKS = 64  # a decode sequence's block table: 1,024 tokens of context
VOCAB = 49152  # the demo model's
HIDDEN = 576  # the demo model's hidden size: one decode activation row
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                   "tp_control_overhead_cpu.json")


def decode_message(num_seqs: int, seed: int = 0) -> StepMessage:
    """A decode step: each sequence computes one new token at position 1,023."""
    rng = random.Random(seed)
    inputs = [StepInput(seq_id=i, token_ids=(rng.randrange(VOCAB),),
                        start_pos=CONTEXT_BLOCKS * BLOCK_SIZE - 1,
                        block_table=tuple(range(i * CONTEXT_BLOCKS, (i + 1) * CONTEXT_BLOCKS)))
              for i in range(num_seqs)]
    return StepMessage(inputs, [True] * num_seqs)


def prefill_message(num_seqs: int = 4, prompt_len: int = 512, seed: int = 0) -> StepMessage:
    """A prefill step: whole prompts from position 0, each with its own blocks."""
    rng = random.Random(seed)
    blocks = -(-prompt_len // BLOCK_SIZE)
    inputs = [StepInput(seq_id=i, token_ids=tuple(rng.randrange(VOCAB) for _ in range(prompt_len)),
                        start_pos=0, block_table=tuple(range(i * blocks, (i + 1) * blocks)))
              for i in range(num_seqs)]
    return StepMessage(inputs, [True] * num_seqs)


MESSAGES = {
    "decode_1": lambda: decode_message(1),
    "decode_32": lambda: decode_message(32),
    "decode_256": lambda: decode_message(256),
    "prefill_4x512": lambda: prefill_message(4, 512),
}


def _rank(rank: int, world_size: int, init_method: str, reps: int, queue) -> None:
    """One gloo rank: time each message's broadcast `reps` times, then an all-reduce."""
    import torch.distributed as dist

    distributed.init_process_group(rank, world_size, "cpu", init_method)
    try:
        ends: dict[str, list[int]] = {}
        starts: dict[str, list[int]] = {}
        for name, make in MESSAGES.items():
            msg = make() if rank == 0 else None
            for _ in range(10):  # warm-up: connections, allocator
                distributed.broadcast_object(msg)
            starts[name], ends[name] = [], []
            for _ in range(reps):
                dist.barrier()
                if rank == 0:
                    time.sleep(0.001)  # the worker is now waiting in its receive
                t0 = time.perf_counter_ns()
                got = distributed.broadcast_object(msg)
                t1 = time.perf_counter_ns()
                starts[name].append(t0)
                ends[name].append(t1)
            assert len(got.inputs) == len(make().inputs)
        x = torch.ones(32, HIDDEN)
        for _ in range(10):
            distributed.all_reduce(x)
        reduce_ns = []
        for _ in range(reps):
            dist.barrier()
            t0 = time.perf_counter_ns()
            distributed.all_reduce(x)
            reduce_ns.append(time.perf_counter_ns() - t0)
        queue.put((rank, starts, ends, reduce_ns))
    finally:
        distributed.destroy_process_group()


def measure_broadcasts(reps: int) -> dict:
    """Spawn two gloo ranks; per message, the median sender and delivery times in ms."""
    import torch.multiprocessing as tmp

    ctx = tmp.get_context("spawn")
    queue = ctx.SimpleQueue()
    init_method = f"tcp://127.0.0.1:{distributed.free_port()}"
    tmp.start_processes(_rank, args=(2, init_method, reps, queue), nprocs=2,
                        start_method="spawn")  # joins; a rank's exception is raised here
    runs = dict((r, rest) for r, *rest in (queue.get() for _ in range(2)))
    (starts, ends0, reduce0), (_, ends1, _) = runs[0], runs[1]
    ms = 1e-6
    out = {}
    for name, make in MESSAGES.items():
        sender = [(e - s) * ms for s, e in zip(starts[name], ends0[name])]
        delivered = [(max(e0, e1) - s) * ms
                     for s, e0, e1 in zip(starts[name], ends0[name], ends1[name])]
        msg = make()
        out[name] = {
            "sequences": len(msg.inputs),
            "tokens": sum(len(i.token_ids) for i in msg.inputs),
            "pickled_bytes": len(pickle.dumps(msg)),
            "sender_ms": round(statistics.median(sender), 4),
            "delivered_ms": round(statistics.median(delivered), 4),
            "delivered_p90_ms": round(statistics.quantiles(delivered, n=10)[-1], 4),
        }
    out["all_reduce_32x576_fp32_ms"] = round(statistics.median(reduce0) * ms, 4)
    return out


def measure_forward(batch: int, reps: int) -> float:
    """Median ms of one decode forward of the demo model over `batch` sequences (one rank)."""
    from minillm.config import EngineConfig
    from minillm.hub import resolve_model
    from minillm.runner import ModelRunner

    max_len = CONTEXT_BLOCKS * BLOCK_SIZE
    config = EngineConfig(model=resolve_model(None), device="cpu", max_model_len=max_len,
                          kvcache_block_size=BLOCK_SIZE, max_num_seqs=batch,
                          num_kvcache_blocks=batch * CONTEXT_BLOCKS)
    runner = ModelRunner(config)
    msg = decode_message(batch)
    for _ in range(3):
        runner.forward(msg.inputs, msg.sampled)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        runner.forward(msg.inputs, msg.sampled)
        times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=200, help="broadcasts timed per message")
    parser.add_argument("--forward-reps", type=int, default=20)
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]  # other work on the host skews CPU timings: say how much
    broadcasts = measure_broadcasts(args.reps)
    forward = {f"decode_{b}": measure_forward(b, args.forward_reps) for b in (1, 32)}
    share = {name: round(broadcasts[name]["delivered_ms"] / ms, 4)
             for name, ms in forward.items()}
    result = {
        "command": " ".join(["python benchmarks/tp_control_overhead.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "device": device_name(torch.device("cpu")),
        "commit": git_commit(),
        "torch": torch.__version__,
        "torch_threads_forward": torch.get_num_threads(),
        "reps": args.reps,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "note": "2 gloo ranks on one host. broadcast: minillm.distributed.broadcast_object("
                "StepMessage); decode messages carry one token and a 64-block table per "
                "sequence. forward: ModelRunner.forward of SmolLM2-135M-Instruct (float32, "
                "torch attention) at 1,024 tokens of context, one rank. share = delivered / "
                "forward. load_average_1min: the host's load before and after the run (other "
                "work on it slows both the broadcast and the forward).",
        "broadcast": broadcasts,
        "forward_ms": forward,
        "overhead_share_of_forward": share,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
