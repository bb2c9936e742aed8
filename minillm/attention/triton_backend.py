"""The `triton` attention backend: minillm's own Triton kernels over the paged KV cache.

The default on CUDA. Per layer and step: `store_kv` writes the new keys and values into their
slots, then either `decode_attention` (every sequence adds one token: split-KV over the cache)
or `prefill_attention` (prefills, chunks with cached prefixes, and mixed batches). Both read all
keys from the cache through the block tables, so no gathered copy of the KV is ever made. Grid
sizes come from host ints the metadata already holds (`max_seq_len`, `max_query_len`): no
device-to-host sync per step.

Triton is imported here, not in `minillm.attention`, so `import minillm` stays light.
"""

from __future__ import annotations

import torch

from minillm.attention.metadata import AttentionMetadata
from minillm.attention.torch_backend import TorchBackend
from minillm.kernels import decode_attention, prefill_attention, store_kv


class TritonBackend:
    """Paged attention with Triton kernels; the same `forward` contract as `TorchBackend`."""

    name = "triton"
    # Launch shapes depend only on tensor shapes and the metadata's host ints, which the CUDA
    # graphs fix; the torch backend loops over `seq_lens_cpu` and cannot be captured.
    supports_cuda_graphs = True

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """Store this step's K/V, then attend. q: [num_tokens, num_heads, head_dim]; k, v:
        [num_tokens, num_kv_heads, head_dim]; returns [num_tokens, num_heads, head_dim]."""
        if not k_cache.numel():
            # No paged cache yet (the runner's profiling pass, before the cache is sized):
            # nothing to store or read, so attend over the step's own keys the reference way.
            return TorchBackend().prefill(q, k, v, k_cache, v_cache, meta, scale)
        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.is_decode_only:
            return decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale,
                                    max_seq_len=meta.max_seq_len)
        return prefill_attention(q, k_cache, v_cache, meta.cu_seqlens_q, meta.seq_lens,
                                 meta.block_tables, scale, max_query_len=meta.max_query_len)
