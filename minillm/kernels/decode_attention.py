"""Paged decode attention: one new query token per sequence against its whole cached KV.

Decode is memory-bound: each step reads every cached key and value of every sequence once and
does little arithmetic on them, so the kernel is shaped to read the cache once, in big
coalesced runs, with enough programs in flight to keep HBM busy.

- **All query heads of a KV group in one program** (GQA). The `group = num_heads //
  num_kv_heads` query heads `h` with `h // group == kv_head` share one KV head; loading that
  head's keys once and scoring all of them with one `tl.dot` cuts cache reads by `group`. The
  group is padded to at least 16 rows (the smallest `tl.dot` tile) and the padding masked.
- **Split-KV (flash-decoding).** At small batch `batch * num_kv_heads` programs cannot fill the
  GPU, so each sequence's keys are cut into `num_splits` ranges handled by separate programs
  (grid `(batch, num_kv_heads, num_splits)`). Each writes its partial output, normalised, and
  its log-sum-exp; `_merge_splits_kernel` combines them, weighting each by `exp(lse - max)`.
- **Online softmax in fp32.** Inside a split, keys arrive in tiles of `BLOCK_N` tokens; a
  running max `m_i` and sum `l_i` rescale the accumulator as each tile arrives, so scores are never
  stored. Exponentials are base 2 (`exp2`, with `log2(e)` folded into the scale); the stored
  log-sum-exp is base 2 as well.
- **Any block size.** Each key's address is looked up per token (`block_tables[seq, t //
  block_size]`), so a tile may span several small blocks or sit inside one large one; the tile
  size is independent of the page size.

Shapes: q [batch, num_heads, head_dim]; k_cache, v_cache [num_blocks, block_size, num_kv_heads,
head_dim]; block_tables [batch, max_blocks] int32 (padded); seq_lens [batch] int32; output
[batch, num_heads, head_dim] in q's dtype.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

# Tuning defaults (a starting point, checked by scripts/kernel_bench.py on an H100).
BLOCK_N = 64  # keys per tile: a [64, head_dim] bf16 tile is 16 KiB, one coalesced load
NUM_WARPS = 4
MIN_KEYS_PER_SPLIT = 256  # below this, a split's fixed cost (q load, partial write) dominates
MAX_SPLITS = 64


def decode_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, seq_lens: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """What `decode_attention` computes, in PyTorch: softmax(q k^T * scale) v in fp32, per
    sequence over its first `seq_lens[i]` cached tokens. Returns [batch, num_heads, head_dim]."""
    num_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
    block_size = k_cache.shape[1]
    out = torch.empty_like(q)
    for i, length in enumerate(seq_lens.tolist()):
        blocks = block_tables[i, :-(-length // block_size)].long()
        keys = k_cache[blocks].flatten(0, 1)[:length].float()  # [length, num_kv_heads, dim]
        values = v_cache[blocks].flatten(0, 1)[:length].float()
        keys = keys.repeat_interleave(num_heads // num_kv_heads, dim=1)  # [length, heads, dim]
        values = values.repeat_interleave(num_heads // num_kv_heads, dim=1)
        scores = torch.einsum("hd,thd->ht", q[i].float(), keys) * scale  # [heads, length]
        out[i] = torch.einsum("ht,thd->hd", scores.softmax(-1), values).to(q.dtype)
    return out


@functools.lru_cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter on the CPU: pretend to be an H100 so splits match
    return torch.cuda.get_device_properties(device).multi_processor_count


def choose_num_splits(batch: int, num_kv_heads: int, max_seq_len: int, num_sms: int) -> int:
    """How many ranges to cut each sequence's keys into.

    Aim for about two programs per SM (one running, one waiting to hide its loads): with
    `batch * num_kv_heads` programs already that many (batch 256 x 8 KV heads = 2,048 on an
    H100's 132 SMs) there is nothing to gain and splits are 1. Never split so finely that a
    split reads fewer than `MIN_KEYS_PER_SPLIT` keys of the longest sequence.
    """
    programs = batch * num_kv_heads
    wanted = -(-2 * num_sms // programs)
    useful = -(-max_seq_len // MIN_KEYS_PER_SPLIT)
    return max(1, min(wanted, useful, MAX_SPLITS))


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
    out_ptr, lse_ptr,  # partials: [batch, num_heads, num_splits, head_dim], [.., num_splits]
    scale_log2,  # softmax scale * log2(e)
    stride_qb, stride_qh,
    stride_cb, stride_cs, stride_ch,  # caches: block, slot-in-block and head strides
    stride_bt,
    stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)

    # This program's key range [start, end): the sequence's tiles dealt out evenly to splits.
    seq_len = tl.load(seq_lens_ptr + seq)
    tiles_per_split = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), num_splits)
    start = split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, seq_len)

    rows = tl.arange(0, GROUP_PAD)  # query heads of this KV group (padded)
    dims = tl.arange(0, DIM_PAD)
    heads = kv_head * GROUP + rows
    row_ok = rows < GROUP
    dim_ok = dims < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)  # [GROUP_PAD, DIM_PAD]

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)  # running max of scores (base 2)
    l_i = tl.zeros([GROUP_PAD], tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)  # running sum of exp2(score - m_i) * v
    table = block_tables_ptr + seq * stride_bt
    for tile in range(start, end, BLOCK_N):
        keys = tile + tl.arange(0, BLOCK_N)  # token positions in the sequence
        key_ok = keys < end
        block = tl.load(table + keys // BLOCK_SIZE, mask=key_ok, other=0).to(tl.int64)
        addr = block * stride_cb + (keys % BLOCK_SIZE) * stride_cs + kv_head * stride_ch
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_cache_ptr + addr[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale_log2  # [GROUP_PAD, BLOCK_N]
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)  # rescales what was summed under the old max
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + addr[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    # An empty split (a short sequence among long ones) has l_i == 0: it writes lse = -inf,
    # which gives it weight 0 in the merge.
    nonempty = l_i > 0
    out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))
    out_offs = seq * stride_ob + heads[:, None] * stride_oh + split * stride_os + dims[None, :]
    tl.store(out_ptr + out_offs, out, mask=row_ok[:, None] & dim_ok[None, :])
    tl.store(lse_ptr + seq * stride_lb + heads * stride_lh + split, lse, mask=row_ok)


@triton.jit
def _merge_splits_kernel(
    part_ptr, lse_ptr, out_ptr,
    num_splits,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, DIM_PAD)
    split_ok = splits < num_splits
    lse = tl.load(lse_ptr + seq * stride_lb + head * stride_lh + splits, mask=split_ok,
                  other=float("-inf"))  # [SPLITS_PAD], base 2
    top = tl.max(lse, 0)
    top = tl.where(top == float("-inf"), 0.0, top)  # an empty sequence: all weights 0
    weight = tl.exp2(lse - top)  # each split's share of the softmax denominator
    total = tl.sum(weight, 0)
    part = tl.load(part_ptr + seq * stride_pb + head * stride_ph + splits[:, None] * stride_ps
                   + dims[None, :], mask=split_ok[:, None] & (dims[None, :] < HEAD_DIM),
                   other=0.0)  # [SPLITS_PAD, DIM_PAD]
    out = tl.sum(part * weight[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + dims,
             out.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                     max_seq_len: int, num_splits: int | None = None,
                     block_n: int = BLOCK_N, num_warps: int = NUM_WARPS,
                     num_stages: int | None = None) -> torch.Tensor:
    """Attention of one query token per sequence over its paged KV; see the module docstring.

    `max_seq_len` (a host int the runner already has) picks `num_splits` without reading
    `seq_lens` back from the GPU. Pass `num_splits` to fix it (CUDA graphs want a split count
    that does not change with the lengths; empty splits cost a little and are merged away).
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = num_heads // num_kv_heads
    assert num_heads == group * num_kv_heads and q.stride(-1) == 1
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    assert block_n >= 16, "tl.dot needs tiles of at least 16"
    if num_splits is None:
        num_splits = choose_num_splits(batch, num_kv_heads, max_seq_len, _num_sms(q.device))
    dim_pad = max(16, triton.next_power_of_2(head_dim))
    # [batch, num_heads, num_splits, head_dim] and [batch, num_heads, num_splits], fp32
    part = torch.empty(batch, num_heads, num_splits, head_dim, dtype=torch.float32,
                       device=q.device)
    lse = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=q.device)
    extra = {} if num_stages is None else {"num_stages": num_stages}
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, part, lse,
        scale * math.log2(math.e),
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim, DIM_PAD=dim_pad, BLOCK_SIZE=block_size, BLOCK_N=block_n,
        num_warps=num_warps, **extra,
    )
    out = torch.empty_like(q)
    _merge_splits_kernel[(batch, num_heads)](
        part, lse, out, num_splits,
        part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, DIM_PAD=dim_pad,
        SPLITS_PAD=max(2, triton.next_power_of_2(num_splits)),  # no 1-wide blocks
    )
    return out
