"""Write a step's new keys and values into the paged KV cache, by slot.

Slot `s` is token `s % block_size` of block `s // block_size`; the runner's `slot_mapping` gives
one slot per new token. One program per token writes all of that token's KV heads at once: a
token's `num_kv_heads * head_dim` values are one contiguous run in the cache, so each program
does one coalesced read of `k` and `v` and one coalesced write per cache, and the launch is a
single kernel for the whole step instead of two scatter ops.

A negative slot means "no slot" (a padded row, as CUDA-graph padding will produce): that token
is skipped.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def store_kv_reference(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """What `store_kv` computes, in PyTorch.

    k, v: [num_tokens, num_kv_heads, head_dim]; k_cache, v_cache: [num_blocks, block_size,
    num_kv_heads, head_dim]; slot_mapping: [num_tokens] int64 (negative: skip the token).
    """
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    k_cache.view(-1, num_kv_heads, head_dim)[slots] = k[keep]  # [num_slots, kv_heads, dim]
    v_cache.view(-1, num_kv_heads, head_dim)[slots] = v[keep]


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,  # k, v: token and head strides (dim stride 1)
    stride_cb, stride_cs, stride_ch,  # caches: block, slot-in-block and head strides
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    HEADS_PAD: tl.constexpr, DIM_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:  # a padded row: nothing to store
        return
    heads = tl.arange(0, HEADS_PAD)
    dims = tl.arange(0, DIM_PAD)
    mask = (heads[:, None] < NUM_KV_HEADS) & (dims[None, :] < HEAD_DIM)
    # [HEADS_PAD, DIM_PAD] tiles: every head of this token
    k = tl.load(k_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :], mask=mask)
    v = tl.load(v_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=mask)
    dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs
    offsets = dst + heads[:, None] * stride_ch + dims[None, :]
    tl.store(k_cache_ptr + offsets, k, mask=mask)
    tl.store(v_cache_ptr + offsets, v, mask=mask)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write k, v [num_tokens, num_kv_heads, head_dim] into the caches [num_blocks, block_size,
    num_kv_heads, head_dim] at `slot_mapping` [num_tokens] (int64, negative: skip)."""
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    assert k.stride(-1) == 1 and v.stride(-1) == 1, "the head_dim of k and v must be contiguous"
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    _store_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        HEADS_PAD=max(2, triton.next_power_of_2(num_kv_heads)),  # no 1-wide blocks
        DIM_PAD=triton.next_power_of_2(head_dim), BLOCK_SIZE=k_cache.shape[1],
    )
