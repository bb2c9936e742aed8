"""SiLU-and-mul: the gate of a SwiGLU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minillm.layers.fusion import use_fused


class SiluAndMul(nn.Module):
    """`silu(gate) * up` for `x = [gate | up]` packed along the last dimension."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_fused(x) and x.dim() == 2 and x.stride(-1) == 1:
            from minillm.kernels.silu_and_mul import silu_and_mul

            return silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
