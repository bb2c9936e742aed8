"""Tensor-parallel process group, rank and world size, and the collectives the layers use.

With no process group (the single-device case) every helper degrades to one rank and the
collectives do nothing, so the same layers serve one rank and many. With a group, tensors move
through NCCL on GPUs and gloo on CPUs; the per-step control message (what to compute) always
goes through a gloo group on the CPU, where pickled Python objects live.
"""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist

# Workers sit inside a control broadcast while rank 0 is idle (a user thinking in a notebook),
# so that group must not time out; a dead peer still fails it at once (its socket closes).
CONTROL_TIMEOUT = datetime.timedelta(days=7)
DATA_TIMEOUT = datetime.timedelta(minutes=10)  # one forward pass never takes this long

_control_group = None  # the gloo group for control messages (the default group on CPU)


def tp_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def tp_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def launched_by_torchrun() -> bool:
    """True when torchrun (or any env:// launcher) started this process as one rank of many."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(rank: int, world_size: int, device_type: str,
                       init_method: str = "env://") -> None:
    """Join the tensor-parallel group: NCCL for tensors on CUDA, gloo on CPU; gloo for control."""
    global _control_group
    if device_type == "cuda":
        torch.cuda.set_device(local_rank(rank))
        dist.init_process_group("nccl", init_method=init_method, rank=rank,
                                world_size=world_size, timeout=DATA_TIMEOUT)
        _control_group = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    else:
        dist.init_process_group("gloo", init_method=init_method, rank=rank,
                                world_size=world_size, timeout=CONTROL_TIMEOUT)
        _control_group = dist.group.WORLD


def destroy_process_group() -> None:
    global _control_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control_group = None


def local_rank(rank: int | None = None) -> int:
    """The GPU index of this rank on its host (torchrun sets LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", rank if rank is not None else tp_rank()))


def broadcast_object(obj: object = None, src: int = 0) -> object:
    """Rank `src` sends `obj` (pickled) to every rank of the control group; all return it."""
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_control_group)
    return box[0]


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` over the ranks in place (row-parallel outputs, vocab-parallel embeddings)."""
    if tp_size() > 1:
        dist.all_reduce(x)
    return x


def min_over_ranks(value: int) -> int:
    """The smallest of each rank's `value` (e.g. KV blocks that fit on every rank)."""
    if tp_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_control_group)
    return int(t.item())


def gather_to_rank0(x: torch.Tensor) -> torch.Tensor | None:
    """Concatenate each rank's last-dim shard of `x` on rank 0 (logits); None elsewhere."""
    size = tp_size()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)] if tp_rank() == 0 else None
    dist.gather(x.contiguous(), parts, dst=0)
    return torch.cat(parts, dim=-1) if parts is not None else None
