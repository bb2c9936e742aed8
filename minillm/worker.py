"""Tensor-parallel workers: ranks 1..N-1 run the same forward pass as rank 0, step by step.

Process model. Rank 0 lives in the user's process: it owns the scheduler, samples, and talks
to the user. Ranks 1..N-1 are worker processes that each hold a shard of the model and of the
KV cache and only ever run forward passes. They are started by `WorkerGroup` (spawned, so it
works from Jupyter: the workers import everything from `minillm`) or by `torchrun`.

Control channel: one pickled message per step (`StepMessage`: the step's `StepInput`s),
broadcast from rank 0 over a gloo group on the CPU. We chose a broadcast over shared memory or
ZMQ because it needs nothing beyond torch.distributed, works unchanged when `torchrun` starts
the ranks on other hosts, and fails loudly instead of hanging when a peer dies (its socket
closes). The message is small: a decode step sends one token id and a block table per
sequence. Tensors (all-reduces, the logits gather) go through NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from minillm import distributed
from minillm.config import EngineConfig
from minillm.sequence import StepInput


@dataclass(frozen=True)
class StepMessage:
    """Run one forward pass over these inputs (logits are needed only on rank 0)."""

    inputs: list[StepInput]
    sampled: list[bool]


@dataclass(frozen=True)
class ExitMessage:
    """Leave the loop, release the model, and end the process."""


def run_worker(rank: int | None = None, world_size: int | None = None,
               init_method: str = "env://", device_type: str | None = None) -> None:
    """The loop of ranks 1..N-1: join the group, get the config, load a shard, then run every
    step rank 0 broadcasts until it says exit. Under torchrun call it with no arguments."""
    from minillm.runner import ModelRunner

    rank = int(os.environ["RANK"]) if rank is None else rank
    world_size = int(os.environ["WORLD_SIZE"]) if world_size is None else world_size
    device_type = device_type or os.environ.get("MINILLM_TP_DEVICE", "cpu")
    distributed.init_process_group(rank, world_size, device_type, init_method)
    if device_type == "cpu":
        share_cpu_threads(world_size)
    runner, clean = None, False
    try:
        config: EngineConfig = distributed.broadcast_object()
        runner = ModelRunner(config)
        while True:
            msg = distributed.broadcast_object()
            if isinstance(msg, ExitMessage):
                clean = True
                break
            runner.forward(msg.inputs, msg.sampled)
    finally:
        if runner is not None:  # graphs that captured NCCL calls go before the group
            runner.release_graphs(sync=clean)
        distributed.destroy_process_group()


def share_cpu_threads(world_size: int) -> int:
    """Give each CPU rank its share of the cores (unless OMP_NUM_THREADS says otherwise): N
    ranks with all cores each would spin and steal each other's time. Returns the old count."""
    old = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    return old


def _spawned_worker(rank: int, world_size: int, init_method: str, device_type: str,
                    started) -> None:
    started.set()  # bootstrapped: imports done, about to join the group
    run_worker(rank, world_size, init_method, device_type)


# How long rank 0 waits for a spawned worker to start (import minillm, torch) before giving up.
WORKER_START_TIMEOUT_S = 300.0


def _wait_started(processes: list, events: list) -> None:
    """Wait until every worker has started, or raise if one died first.

    Joining the process group would otherwise wait for a dead worker for days: a worker can die
    while bootstrapping, e.g. when a script without `if __name__ == "__main__":` makes each
    spawned process run the script again.
    """
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    for rank, (p, started) in enumerate(zip(processes, events, strict=True), start=1):
        while not started.wait(0.1):
            if not p.is_alive():
                raise RuntimeError(
                    f"tensor-parallel worker rank {rank} died while starting (exit code "
                    f"{p.exitcode}); its error is printed above. In a script, create the LLM "
                    "under `if __name__ == \"__main__\":` (workers are spawned, and a spawned "
                    "process imports the main script)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tensor-parallel worker rank {rank} did not start within "
                                   f"{WORKER_START_TIMEOUT_S:.0f} s")


class WorkerGroup:
    """Rank 0's handle on ranks 1..N-1: starts them, sends each step, ends them.

    `close()` (also run at interpreter exit) ends every worker: cleanly with an exit message
    when the last step finished, by terminating them when rank 0 was interrupted mid-step.
    """

    def __init__(self, config: EngineConfig, device_type: str) -> None:
        if distributed.tp_size() > 1 or torch.distributed.is_initialized():
            raise ValueError("another tensor-parallel LLM is open in this process: close() it "
                             "before starting a new one")
        self.world_size = config.tensor_parallel_size
        self.processes: list[mp.Process] = []
        self._in_step = False
        self._closed = False
        # Called first by close(), with whether the shutdown is clean: rank 0's engine sets it
        # to free its CUDA graphs, which must be gone before the NCCL group is (also at exit).
        self.before_close: Callable[[bool], None] | None = None
        self._old_threads = share_cpu_threads(self.world_size) if device_type == "cpu" else None
        if distributed.launched_by_torchrun():
            distributed.init_process_group(int(os.environ["RANK"]), self.world_size,
                                           device_type, "env://")
        else:
            init_method = f"tcp://127.0.0.1:{distributed.free_port()}"
            ctx = mp.get_context("spawn")
            events = [ctx.Event() for _ in range(1, self.world_size)]
            for rank, started in enumerate(events, start=1):
                p = ctx.Process(target=_spawned_worker, daemon=True, name=f"minillm-tp{rank}",
                                args=(rank, self.world_size, init_method, device_type, started))
                p.start()
                self.processes.append(p)
            try:
                _wait_started(self.processes, events)
            except BaseException:  # no group was joined: just end what was started
                for p in self.processes:
                    p.kill()
                    p.join()
                if self._old_threads is not None:
                    torch.set_num_threads(self._old_threads)
                raise
            distributed.init_process_group(0, self.world_size, device_type, init_method)
        distributed.broadcast_object(config)
        atexit.register(_close_ref, weakref.ref(self))

    def step(self, inputs: list[StepInput], sampled: list[bool]) -> None:
        """Tell every worker to run this step; rank 0 then runs it too."""
        self.check_alive()
        self._in_step = True
        distributed.broadcast_object(StepMessage(inputs, sampled))

    def step_done(self) -> None:
        self._in_step = False

    def check_alive(self) -> None:
        """Raise a clear error if a worker process has died."""
        for rank, p in enumerate(self.processes, start=1):
            if not p.is_alive():
                raise RuntimeError(f"tensor-parallel worker rank {rank} died (exit code "
                                   f"{p.exitcode}); close this LLM and start a new one")

    def abort(self) -> None:
        """End the workers without the exit message (they may be inside a collective)."""
        self._in_step = True
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._old_threads is not None:
            torch.set_num_threads(self._old_threads)
        clean = not self._in_step and all(p.is_alive() for p in self.processes)
        if self.before_close is not None:
            self.before_close(clean)
        if clean:
            try:
                distributed.broadcast_object(ExitMessage())
            except RuntimeError:
                clean = False
        for p in self.processes:
            p.join(timeout=10 if clean else 0.5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        distributed.destroy_process_group()


def _close_ref(ref: weakref.ref) -> None:
    group = ref()
    if group is not None:
        group.close()
