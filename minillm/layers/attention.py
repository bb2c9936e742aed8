"""The attention layer: holds its slice of the paged KV cache and calls the backend."""

from __future__ import annotations

import torch
from torch import nn

from minillm.attention import AttentionMetadata


class Attention(nn.Module):
    """Multi-head attention over the paged KV cache, with grouped-query heads.

    `k_cache`/`v_cache` ([num_blocks, block_size, num_kv_heads, head_dim]) are views into the
    runner's one KV tensor, set after the cache is sized; until then they are empty and the
    layer attends over the step's own keys only (a profiling pass).
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, backend) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5
        self.backend = backend
        self.k_cache = self.v_cache = torch.empty(0)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim]."""
        return self.backend.forward(q, k, v, self.k_cache, self.v_cache, meta, self.scale)
