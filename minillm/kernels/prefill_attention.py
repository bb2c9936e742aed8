"""Prefill / extend attention over the paged KV cache: varlen batches with cached prefixes.

Sequence `i` brings `q_len = cu_seqlens_q[i+1] - cu_seqlens_q[i]` new tokens and has
`seq_len = seq_lens[i]` tokens of KV after this step, so its new tokens sit at positions
`seq_len - q_len + j` and each sees keys `0..pos` (causal). The prefix before them may be
cached (prefix cache hit, or earlier chunks of a chunked prefill) or empty (a fresh prompt).
The step's new keys are already in the cache (`store_kv` ran first), so one code path reads
every key from the cache through the block table, whatever its origin. `q_len = 1` is a
decode, so a mixed batch of decodes and prefill chunks runs through this one kernel.

Shape of the work: grid `(query tiles, num_kv_heads, batch)`. A program takes `BLOCK_Q`
consecutive query tokens of one sequence and *all* query heads of one KV group, packed as
`BLOCK_M = BLOCK_Q * GROUP_PAD` rows (row `r` is token `r // GROUP_PAD`, head `r % GROUP_PAD`
of the group). Every key tile it loads serves the whole group (GQA reads K/V once per group,
not once per query head), and a decode row in a mixed batch costs one tile of the group rather
than a whole program per head. Keys come in tiles of `BLOCK_N` with an online softmax in fp32
(running max and sum, base-2 exponentials); a program stops at its last query's position, so
the causal upper triangle is never loaded. Each key's address is looked up per token, so any
power-of-two block size works.

Shapes: q [num_tokens, num_heads, head_dim]; k_cache, v_cache [num_blocks, block_size,
num_kv_heads, head_dim]; cu_seqlens_q [batch + 1] int32; seq_lens [batch] int32; block_tables
[batch, max_blocks] int32 (padded); output [num_tokens, num_heads, head_dim] in q's dtype.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# Tuning defaults (a starting point, checked by scripts/kernel_bench.py on an H100).
BLOCK_M = 64  # query rows (tokens x heads of a group) per program
BLOCK_N = 64  # keys per tile
NUM_WARPS = 4


def prefill_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                                block_tables: torch.Tensor, scale: float) -> torch.Tensor:
    """What `prefill_attention` computes, in PyTorch (fp32 softmax), one sequence at a time.
    Returns [num_tokens, num_heads, head_dim] in q's dtype."""
    num_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
    block_size = k_cache.shape[1]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        start, end = cu[i], cu[i + 1]
        q_len = end - start
        blocks = block_tables[i, :-(-seq_len // block_size)].long()
        keys = k_cache[blocks].flatten(0, 1)[:seq_len].float()  # [seq_len, num_kv_heads, dim]
        values = v_cache[blocks].flatten(0, 1)[:seq_len].float()
        keys = keys.repeat_interleave(group, dim=1)  # [seq_len, num_heads, dim]
        values = values.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[start:end].float(), keys) * scale
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)  # [q_len]
        visible = torch.arange(seq_len, device=q.device)[None, :] <= q_pos[:, None]
        scores = scores.masked_fill(~visible, float("-inf"))  # [heads, q_len, seq_len]
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), values).to(q.dtype)
    return out


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, cu_seqlens_q_ptr, seq_lens_ptr, block_tables_ptr, out_ptr,
    scale_log2,  # softmax scale * log2(e)
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_cb, stride_cs, stride_ch,  # caches: block, slot-in-block and head strides
    stride_bt,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
):
    q_tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    if q_tile * BLOCK_Q >= q_len:  # the grid is sized for the longest sequence
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    prefix = seq_len - q_len  # tokens before this step's (cached prefix, earlier chunks)

    rows = tl.arange(0, BLOCK_Q * GROUP_PAD)
    token = q_tile * BLOCK_Q + rows // GROUP_PAD  # query index within the sequence
    g = rows % GROUP_PAD
    head = kv_head * GROUP + g
    row_ok = (token < q_len) & (g < GROUP)
    dims = tl.arange(0, DIM_PAD)
    dim_ok = dims < HEAD_DIM
    q_offs = (q_start + token)[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :]
    q = tl.load(q_ptr + q_offs, mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    pos = prefix + token  # [BLOCK_M] position of each query row; it sees keys 0..pos

    m_i = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_Q * GROUP_PAD], tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_PAD, DIM_PAD], tl.float32)
    # Keys past this tile's last query are masked for every row: stop before them.
    kv_end = tl.minimum(prefix + (q_tile + 1) * BLOCK_Q, seq_len)
    table = block_tables_ptr + seq * stride_bt
    for tile in range(0, kv_end, BLOCK_N):
        keys = tile + tl.arange(0, BLOCK_N)
        key_ok = keys < kv_end
        block = tl.load(table + keys // BLOCK_SIZE, mask=key_ok, other=0).to(tl.int64)
        addr = block * stride_cb + (keys % BLOCK_SIZE) * stride_cs + kv_head * stride_ch
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_cache_ptr + addr[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale_log2  # [BLOCK_M, BLOCK_N]
        # Causal: key t is visible to the row at `pos` when t <= pos. Key 0 is visible to
        # every row (pos >= 0), so after the first tile each row's max is finite.
        s = tl.where(key_ok[None, :] & (keys[None, :] <= pos[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + addr[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    out = acc / l_i[:, None]
    o_offs = (q_start + token)[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :]
    tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                      block_tables: torch.Tensor, scale: float, max_query_len: int,
                      block_m: int = BLOCK_M, block_n: int = BLOCK_N,
                      num_warps: int = NUM_WARPS, num_stages: int | None = None,
                      ) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its paged KV; see the module
    docstring. `max_query_len` (a host int) sizes the grid without a device sync."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = num_heads // num_kv_heads
    assert num_heads == group * num_kv_heads and q.stride(-1) == 1
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    assert block_m >= 16 and block_n >= 16, "tl.dot needs tiles of at least 16"
    out = torch.empty_like(q)
    if num_tokens == 0:
        return out
    group_pad = triton.next_power_of_2(group)
    block_q = max(1, block_m // group_pad)  # rows = block_q tokens x group_pad heads >= 16
    batch = seq_lens.shape[0]
    extra = {} if num_stages is None else {"num_stages": num_stages}
    _prefill_kernel[(triton.cdiv(max_query_len, block_q), num_kv_heads, batch)](
        q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_tables, out,
        scale * math.log2(math.e),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        GROUP=group, GROUP_PAD=group_pad,
        HEAD_DIM=head_dim, DIM_PAD=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_SIZE=block_size, BLOCK_Q=block_q, BLOCK_N=block_n,
        num_warps=num_warps, **extra,
    )
    return out
