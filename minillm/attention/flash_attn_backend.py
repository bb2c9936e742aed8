"""The `flash_attn` attention backend: FlashAttention over minillm's paged KV cache.

Written against the flash-attn-4 package (`flash_attn.cute`, CuTe DSL kernels for Hopper and
Blackwell, installable from wheels), whose `flash_attn_varlen_func` reads a paged cache
directly: the cache of one layer, `[num_blocks, block_size, num_kv_heads, head_dim]`, is
exactly its `(num_pages, page_size, nheads_k, d)` with `page_table` = the block tables and
`seqused_k` = the sequence lengths. One call serves prefills, chunks over a cached prefix
(causal masking is aligned bottom-right, the last query row sees every key) and decodes.
Storing the step's keys and values stays minillm's own `store_kv` kernel.

Imported only when asked for, so `import minillm` never needs flash-attn.
"""

from __future__ import annotations

import torch

from minillm.attention.metadata import AttentionMetadata
from minillm.attention.torch_backend import TorchBackend
from minillm.kernels import store_kv


def flash_attn_importable() -> bool:
    """Whether flash-attn-4's `flash_attn.cute` imports here."""
    try:
        from flash_attn.cute import flash_attn_varlen_func  # noqa: F401
    except ImportError:
        return False
    return True


class FlashAttnBackend:
    """Paged attention through flash-attn-4; the same `forward` contract as `TorchBackend`."""

    name = "flash_attn"
    # Its launch shapes come from tensor shapes and the host ints of the metadata; the graphs
    # pass `max_seq_len` = max_model_len, which bounds every replay as flash-attn asks.
    supports_cuda_graphs = True

    def __init__(self) -> None:
        from flash_attn.cute import flash_attn_varlen_func

        self._attend = flash_attn_varlen_func

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """Store this step's K/V, then attend. q: [num_tokens, num_heads, head_dim]; k, v:
        [num_tokens, num_kv_heads, head_dim]; returns [num_tokens, num_heads, head_dim]."""
        if not k_cache.numel():  # the runner's profiling pass, before the cache exists
            return TorchBackend().prefill(q, k, v, k_cache, v_cache, meta, scale)
        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        out, _ = self._attend(
            q, k_cache, v_cache, cu_seqlens_q=meta.cu_seqlens_q, seqused_k=meta.seq_lens,
            max_seqlen_q=meta.max_query_len, max_seqlen_k=meta.max_seq_len,
            page_table=meta.block_tables, softmax_scale=scale, causal=True)
        return out
