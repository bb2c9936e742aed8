"""When the layers switch to the fused Triton kernels: CUDA only, and never when turned off."""

from __future__ import annotations

import torch

from minillm.layers import fusion


def test_cpu_tensors_never_use_the_kernels():
    assert not fusion.use_fused(torch.zeros(2, 4))


def test_the_environment_turns_them_off(monkeypatch):
    fusion.fused_kernels_enabled.cache_clear()
    try:
        monkeypatch.setenv("MINILLM_FUSED_KERNELS", "0")
        assert not fusion.fused_kernels_enabled()
        fusion.fused_kernels_enabled.cache_clear()
        monkeypatch.setenv("MINILLM_FUSED_KERNELS", "1")
        try:
            import triton  # noqa: F401
        except ImportError:
            assert not fusion.fused_kernels_enabled()
        else:
            assert fusion.fused_kernels_enabled()
    finally:
        fusion.fused_kernels_enabled.cache_clear()
