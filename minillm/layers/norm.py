"""RMSNorm, with the fused residual-add form the decoder layers use."""

from __future__ import annotations

import torch
from torch import nn

from minillm.layers.fusion import use_fused


class RMSNorm(nn.Module):
    """`x / rms(x) * weight`, computed in float32 like transformers.

    Called with a residual, it first adds it (`x + residual`), normalises the sum and returns
    the sum as the next residual: one pass over the activations instead of two.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if (use_fused(x) and x.dim() == 2 and x.stride(-1) == 1
                and (residual is None or residual.stride(-1) == 1)):
            from minillm.kernels.rms_norm import rms_norm

            return rms_norm(x, self.weight, self.eps, residual)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x
