"""Attention backends behind one interface, and the per-step metadata they read.

A backend has one method the model calls, `forward(q, k, v, k_cache, v_cache, meta, scale)`:
store this step's keys and values into the paged cache, then attend. Nothing outside this
package knows which backend runs.
"""

from __future__ import annotations

from minillm.attention.metadata import AttentionMetadata
from minillm.attention.torch_backend import TorchBackend

__all__ = ["AttentionMetadata", "TorchBackend", "get_backend"]


def get_backend(name: str, device: str):
    """The backend named by `EngineConfig.attention_backend` for `device` ("auto" resolved).

    "auto" is `triton` on CUDA when Triton imports, else `torch`. The Triton backend is
    imported here, on demand, so that `import minillm` never imports Triton.
    """
    if name == "auto":
        name = "triton" if device == "cuda" and triton_importable() else "torch"
    if name == "torch":
        return TorchBackend()
    if name == "triton":
        if device != "cuda":
            raise ValueError(
                f"attention_backend='triton' is invalid on device {device!r}: its kernels run "
                "on CUDA GPUs only (use 'torch' or 'auto')")
        if not triton_importable():
            raise ValueError(
                "attention_backend='triton' needs Triton, which is not installed: "
                "pip install 'minillm[gpu]'")
        from minillm.attention.triton_backend import TritonBackend

        return TritonBackend()
    if name == "flash_attn":
        if device != "cuda":
            raise ValueError(
                f"attention_backend='flash_attn' is invalid on device {device!r}: flash-attn "
                "runs on CUDA GPUs only (use 'torch' or 'auto')")
        if not triton_importable():  # its KV store is minillm's Triton kernel
            raise ValueError("attention_backend='flash_attn' needs Triton, which is not "
                             "installed: pip install 'minillm[gpu]'")
        from minillm.attention.flash_attn_backend import FlashAttnBackend, flash_attn_importable

        if not flash_attn_importable():
            raise ValueError(
                "attention_backend='flash_attn' needs flash-attn-4 (flash_attn.cute), which "
                "does not import here: pip install 'minillm[flash]'")
        return FlashAttnBackend()
    raise ValueError(
        f"attention_backend={name!r} is invalid here: only 'torch', 'triton' (CUDA), "
        f"'flash_attn' (CUDA, with flash-attn-4) or 'auto' are available in this version on "
        f"device {device!r}")


def triton_importable() -> bool:
    """Whether Triton (the `gpu` extra) imports here; the layers' fused kernels ask too."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
