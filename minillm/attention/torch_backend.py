"""The `torch` attention backend: plain PyTorch over the paged KV cache.

It is the readable reference every other backend is tested against, and the CPU path. Keys
and values are gathered from their blocks into contiguous tensors and handed to
`scaled_dot_product_attention`; the kernels of faster backends avoid exactly that gather.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minillm.attention.metadata import AttentionMetadata


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write the step's new keys and values into their slots.

    k, v: [num_tokens, num_kv_heads, head_dim]; caches: [num_blocks, block_size, kv_heads, dim].
    """
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v)


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` tokens of one sequence's K or V: [length, num_kv_heads, head_dim]."""
    block_size = cache.shape[1]
    num_blocks = -(-length // block_size)
    # index_select copies whole blocks; on the CPU it is several times faster than cache[idx]
    blocks = cache.index_select(0, block_table[:num_blocks])  # [blocks, block_size, heads, dim]
    return blocks.flatten(0, 1)[:length]


class TorchBackend:
    """Reference attention: varlen prefill (with cached prefixes) and batched paged decode."""

    name = "torch"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """Store this step's K/V, then attend. q: [num_tokens, num_heads, head_dim]."""
        if k_cache.numel():  # an empty cache: a profiling or reference pass without paging
            store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.is_decode_only and k_cache.numel():
            return self.decode(q, k_cache, v_cache, meta, scale)
        return self.prefill(q, k, v, k_cache, v_cache, meta, scale)

    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """Each sequence's new tokens attend causally to its whole KV (cached prefix + new)."""
        out = torch.empty_like(q)
        start = 0
        for i, (q_len, kv_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
            end = start + q_len
            qi = q[start:end].transpose(0, 1)  # [num_heads, q_len, head_dim]
            if kv_len == q_len:  # no prefix: the new keys are all there is
                ki, vi = k[start:end], v[start:end]
                mask, causal = None, True
            else:
                ki = gather_kv(k_cache, meta.block_tables[i], kv_len)
                vi = gather_kv(v_cache, meta.block_tables[i], kv_len)
                # query j sits at position kv_len - q_len + j and sees keys up to it
                q_pos = torch.arange(kv_len - q_len, kv_len, device=q.device)
                mask = torch.arange(kv_len, device=q.device)[None, :] <= q_pos[:, None]
                causal = False
            oi = F.scaled_dot_product_attention(
                qi, ki.transpose(0, 1), vi.transpose(0, 1), attn_mask=mask, is_causal=causal,
                scale=scale, enable_gqa=True)  # [num_heads, q_len, head_dim]
            out[start:end] = oi.transpose(0, 1)
            start = end
        return out

    def decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """One new token per sequence, all sequences at once over their padded block tables."""
        block_size = k_cache.shape[1]
        num_blocks = -(-meta.max_seq_len // block_size)
        tables = meta.block_tables[:, :num_blocks].flatten()  # [B * num_blocks]
        batch, kv_heads, dim = q.shape[0], k_cache.shape[2], k_cache.shape[3]
        # [B, num_blocks * block_size, kv_heads, dim]
        keys = k_cache.index_select(0, tables).view(batch, -1, kv_heads, dim)
        values = v_cache.index_select(0, tables).view(batch, -1, kv_heads, dim)
        length = keys.shape[1]
        mask = torch.arange(length, device=q.device)[None, :] < meta.seq_lens[:, None].long()
        out = F.scaled_dot_product_attention(
            q.unsqueeze(2),  # [B, num_heads, 1, dim]
            keys.transpose(1, 2), values.transpose(1, 2),  # [B, kv_heads, L, dim]
            attn_mask=mask[:, None, None, :], scale=scale, enable_gqa=True)
        return out.squeeze(2)  # [B, num_heads, dim]
