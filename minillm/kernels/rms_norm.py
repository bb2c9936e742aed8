"""Fused residual add + RMSNorm: `h = x + residual; y = h / rms(h) * weight`, in one pass.

In eager PyTorch this is about six kernels (add, cast, square, mean, rsqrt-multiply, cast,
multiply), each reading and writing the whole activation; at decode the activations are tiny
and the cost is the launches. One program per token row does it all: it reads `x` and
`residual` once, writes the new residual `h` and the normalised `y`, and keeps the sum of
squares in fp32 registers. It rounds where `minillm.layers.norm.RMSNorm` rounds (the sum to
the activation dtype, the normalised row to it before the weight), so the two differ only by
the order of the fp32 sum: now and then one unit in the last place of the output dtype.

Shapes: x, residual [num_tokens, hidden_size]; weight [hidden_size]; outputs the same as x.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float,
                       residual: torch.Tensor | None = None):
    """What `rms_norm` computes, in PyTorch (the same arithmetic as `layers.norm.RMSNorm`).
    Returns `y`, or `(y, x + residual)` when a residual is given."""
    h = x if residual is None else x + residual
    hf = h.float()
    y = weight * (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)
    return y if residual is None else (y, h)


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, y_ptr, h_ptr,
    stride_x, stride_r, stride_y, stride_h,
    eps,
    HIDDEN: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < HIDDEN
    h = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + cols, mask=ok, other=0.0)
        h = (h.to(tl.float32) + r.to(tl.float32)).to(h.dtype)  # rounded like `x + residual`
        tl.store(h_ptr + row * stride_h + cols, h, mask=ok)
    hf = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(hf * hf, 0) / HIDDEN + eps)
    w = tl.load(weight_ptr + cols, mask=ok, other=0.0)
    y = w.to(tl.float32) * (hf * rstd).to(h.dtype).to(tl.float32)
    tl.store(y_ptr + row * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=ok)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None):
    """`y`, or `(y, x + residual)` when a residual is given; see the module docstring."""
    num_tokens, hidden = x.shape
    assert x.stride(-1) == 1 and (residual is None or residual.stride(-1) == 1)
    y = torch.empty(num_tokens, hidden, dtype=torch.result_type(weight, x), device=x.device)
    h = torch.empty_like(x) if residual is not None else x
    if num_tokens:
        block = triton.next_power_of_2(hidden)
        _rms_norm_kernel[(num_tokens,)](
            x, residual if residual is not None else x, weight, y, h,
            x.stride(0), (residual if residual is not None else x).stride(0), y.stride(0),
            h.stride(0), eps,
            HIDDEN=hidden, BLOCK=block, HAS_RESIDUAL=residual is not None,
            num_warps=min(max(block // 256, 1), 16),
        )
    return y if residual is None else (y, h)
