"""When the layers run minillm's fused Triton kernels instead of their PyTorch arithmetic.

On CUDA with Triton installed, RMSNorm (with its residual add), Qwen3's QK-norm with the
rotary embedding, and SiLU-and-mul each run as one kernel (`minillm.kernels`): at decode these
ops move a few kilobytes per token and eager PyTorch spends most of their time launching
kernels (about sixty per layer in all; CUDA graphs remove the launch cost but not each kernel's
minimum run time). Elsewhere (the CPU, or `MINILLM_FUSED_KERNELS=0` for an A/B measurement)
the layers compute the same thing with PyTorch ops, which is also the reference the kernels
are tested against.
"""

from __future__ import annotations

import functools
import os

import torch

from minillm.attention import triton_importable


@functools.cache
def fused_kernels_enabled() -> bool:
    """Triton importable and not turned off by `MINILLM_FUSED_KERNELS=0` (read once)."""
    return os.environ.get("MINILLM_FUSED_KERNELS", "1") != "0" and triton_importable()


def use_fused(x: torch.Tensor) -> bool:
    """Whether the op on `x` runs as a fused Triton kernel: `x` on CUDA, kernels enabled."""
    return x.is_cuda and fused_kernels_enabled()
