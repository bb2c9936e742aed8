"""Attention backends behind one interface, and the per-step metadata they read.

A backend has one method the model calls, `forward(q, k, v, k_cache, v_cache, meta, scale)`:
store this step's keys and values into the paged cache, then attend. Nothing outside this
package knows which backend runs.
"""

from __future__ import annotations

from minillm.attention.metadata import AttentionMetadata
from minillm.attention.torch_backend import TorchBackend

__all__ = ["AttentionMetadata", "TorchBackend", "get_backend"]


def get_backend(name: str, device: str):
    """The backend named by `EngineConfig.attention_backend` for `device` ("auto" resolved)."""
    if name in ("auto", "torch"):
        return TorchBackend()
    raise ValueError(
        f"attention_backend={name!r} is invalid here: only 'torch' (or 'auto') is available in "
        f"this version on device {device!r}")
