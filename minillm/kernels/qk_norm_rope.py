"""Per-head RMSNorm of queries and keys (Qwen3's QK-norm) and rotary embedding, in one kernel.

In eager PyTorch a layer spends about thirty small kernels here: two RMSNorms of about seven
kernels each (Qwen3 only), then, for queries and keys, a gather and cast of cos and sin, the
split, four multiplies, an add, a subtract and a concatenation. At decode each moves a few
kilobytes per token, so the cost is the launches, not the bytes. One program per token loads
every query and key head of that token once, normalises each head (when weights are given),
rotates the pairs `(x_i, x_{i + d/2})` by `position * inv_freq_i` (neox style, as
`minillm.layers.rotary`), and writes contiguous outputs.

Rounding follows the layers: the normalised head is rounded to the activation dtype and then
multiplied by the weight (rounded again), and cos and sin are rounded to the activation dtype;
the rotation itself is computed in fp32 and rounded once (PyTorch rounds after each multiply),
so in bf16 the two differ now and then by one unit in the last place.

Shapes: q [num_tokens, num_heads, head_dim], k [num_tokens, num_kv_heads, head_dim] (any
token and head strides, unit stride along head_dim); positions [num_tokens] int; cos and sin
[max_positions, head_dim // 2] fp32; weights [head_dim] or None.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minillm.kernels.rms_norm import rms_norm_reference


def qk_norm_rope_reference(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                           cos: torch.Tensor, sin: torch.Tensor,
                           q_weight: torch.Tensor | None, k_weight: torch.Tensor | None,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """What `qk_norm_rope` computes, in PyTorch: `RMSNorm` per head (`rms_norm_reference`),
    then `layers.rotary.RotaryEmbedding`'s neox rotation (written out here: kernels never
    import layers, which import kernels)."""
    if q_weight is not None:
        q, k = rms_norm_reference(q, q_weight, eps), rms_norm_reference(k, k_weight, eps)
    c = cos[positions].unsqueeze(1).to(q.dtype)  # [num_tokens, 1, head_dim // 2]
    s = sin[positions].unsqueeze(1).to(q.dtype)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

    return rotate(q), rotate(k)


@triton.jit
def _norm_rope_heads(x_ptr, out_ptr, w_ptr, stride_xh, stride_oh, c, s, eps,
                     NUM_HEADS: tl.constexpr, HALF: tl.constexpr, HEADS_PAD: tl.constexpr,
                     HALF_PAD: tl.constexpr, NORM: tl.constexpr):
    """All heads of one token: [HEADS_PAD, HALF_PAD] tiles of each half of head_dim."""
    heads = tl.arange(0, HEADS_PAD)
    j = tl.arange(0, HALF_PAD)
    mask = (heads[:, None] < NUM_HEADS) & (j[None, :] < HALF)
    offs = heads[:, None] * stride_xh + j[None, :]
    x1 = tl.load(x_ptr + offs, mask=mask, other=0.0)
    x2 = tl.load(x_ptr + offs + HALF, mask=mask, other=0.0)
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    if NORM:
        ms = (tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / (2 * HALF)
        rstd = tl.rsqrt(ms + eps)[:, None]
        w1 = tl.load(w_ptr + j, mask=j < HALF, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(w_ptr + HALF + j, mask=j < HALF, other=0.0).to(tl.float32)[None, :]
        x1 = (w1 * (x1 * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
        x2 = (w2 * (x2 * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    o1 = x1 * c - x2 * s
    o2 = x2 * c + x1 * s
    out = heads[:, None] * stride_oh + j[None, :]
    tl.store(out_ptr + out, o1.to(dtype), mask=mask)
    tl.store(out_ptr + out + HALF, o2.to(dtype), mask=mask)


@triton.jit
def _qk_norm_rope_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, q_w_ptr, k_w_ptr, cos_ptr, sin_ptr, pos_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_oqt, stride_oqh, stride_okt, stride_okh,
    stride_cos, eps,
    NUM_Q: tl.constexpr, NUM_KV: tl.constexpr, HALF: tl.constexpr, Q_PAD: tl.constexpr,
    KV_PAD: tl.constexpr, HALF_PAD: tl.constexpr, NORM: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    j = tl.arange(0, HALF_PAD)
    ok = j < HALF
    dtype = q_out_ptr.dtype.element_ty
    # cos and sin rounded to the activation dtype, as the layer does
    c = tl.load(cos_ptr + pos * stride_cos + j, mask=ok, other=0.0).to(dtype).to(tl.float32)
    s = tl.load(sin_ptr + pos * stride_cos + j, mask=ok, other=0.0).to(dtype).to(tl.float32)
    c = c[None, :]
    s = s[None, :]
    _norm_rope_heads(q_ptr + t * stride_qt, q_out_ptr + t * stride_oqt, q_w_ptr, stride_qh,
                     stride_oqh, c, s, eps, NUM_Q, HALF, Q_PAD, HALF_PAD, NORM)
    _norm_rope_heads(k_ptr + t * stride_kt, k_out_ptr + t * stride_okt, k_w_ptr, stride_kh,
                     stride_okh, c, s, eps, NUM_KV, HALF, KV_PAD, HALF_PAD, NORM)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor, q_weight: torch.Tensor | None = None,
                 k_weight: torch.Tensor | None = None, eps: float = 1e-6,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (when weights are given) and rotated q and k, contiguous; see above."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert head_dim % 2 == 0 and q.stride(-1) == 1 and k.stride(-1) == 1
    assert cos.stride(-1) == 1 and cos.stride() == sin.stride()
    assert (q_weight is None) == (k_weight is None)
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if num_tokens:
        half = head_dim // 2
        norm = q_weight is not None
        _qk_norm_rope_kernel[(num_tokens,)](
            q, k, q_out, k_out, q_weight if norm else q, k_weight if norm else k, cos, sin,
            positions,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), q_out.stride(0),
            q_out.stride(1), k_out.stride(0), k_out.stride(1), cos.stride(0), eps,
            NUM_Q=num_heads, NUM_KV=num_kv_heads, HALF=half,
            Q_PAD=max(2, triton.next_power_of_2(num_heads)),
            KV_PAD=max(2, triton.next_power_of_2(num_kv_heads)),
            HALF_PAD=max(2, triton.next_power_of_2(half)), NORM=norm,
            # many heads per token: more threads, so the fp32 tiles stay in registers
            num_warps=8 if triton.next_power_of_2(num_heads) * half >= 4096 else 4,
        )
    return q_out, k_out
