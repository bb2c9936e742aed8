"""SwiGLU's activation, `silu(gate) * up` for `x = [gate | up]`, in one kernel.

PyTorch runs it as a split, a SiLU and a multiply, writing the SiLU's output in between. One
program per (token, column tile) reads gate and up once and writes the product. It rounds where
`minillm.layers.activation.SiluAndMul` rounds: the SiLU to the activation dtype, then the
product.

Shapes: x [num_tokens, 2 * size] (unit stride along the last dimension); out [num_tokens, size].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BLOCK = 1024  # columns per program


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    """What `silu_and_mul` computes, in PyTorch (the layer's arithmetic)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o,
                         SIZE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < SIZE
    gate = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    up = tl.load(x_ptr + row * stride_x + SIZE + cols, mask=ok, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)  # silu, rounded like F.silu's output
    y = act.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, y.to(gate.dtype), mask=ok)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """`silu(x[:, :size]) * x[:, size:]`, [num_tokens, size]; see the module docstring."""
    num_tokens, width = x.shape
    assert width % 2 == 0 and x.stride(-1) == 1
    size = width // 2
    out = torch.empty(num_tokens, size, dtype=x.dtype, device=x.device)
    if num_tokens:
        block = min(BLOCK, triton.next_power_of_2(size))
        _silu_and_mul_kernel[(num_tokens, triton.cdiv(size, block))](
            x, out, x.stride(0), out.stride(0), SIZE=size, BLOCK=block)
    return out
