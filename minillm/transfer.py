"""Copies between host and device that never make the host wait for the device.

`torch.tensor(data, device="cuda")` copies from pageable memory and then synchronizes the
stream: the host stops until every kernel queued before the copy has run. Once per step that
is harmless; with overlap scheduling it is fatal, because step N+1's inputs are built while
step N runs, and the first such copy would wait for step N to finish. So every per-step
upload goes through `to_device` (a pinned staging tensor and a non-blocking copy, ordered on
the stream after step N like any kernel), and the sampled tokens come back through
`HostTokens`, whose `get()` waits for their own step alone.
"""

from __future__ import annotations

import torch


def host_tensor(data, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`data` as a host tensor that can be copied to `device` without a sync (pinned when
    `device` is a GPU)."""
    t = torch.tensor(data, dtype=dtype)
    return t.pin_memory() if device.type == "cuda" else t


def to_device(data, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`torch.tensor(data, dtype=dtype, device=device)` without waiting for the device."""
    if device.type == "cpu":
        return torch.tensor(data, dtype=dtype)
    return host_tensor(data, dtype, device).to(device, non_blocking=True)


class HostTokens:
    """A step's sampled token ids on their way to the host: the copy is queued behind the
    step, and `get()` waits for that step only, not for the steps launched after it."""

    def __init__(self, token_ids: torch.Tensor) -> None:
        self.event = None
        if token_ids.is_cuda:
            self.host = torch.empty(token_ids.shape, dtype=token_ids.dtype, pin_memory=True)
            self.host.copy_(token_ids, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = token_ids

    def get(self) -> list[int]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()
