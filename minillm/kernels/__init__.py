"""Triton kernels, each in its own file beside a plain PyTorch `*_reference` computing the same.

- `store_kv`: write a step's new keys and values into the paged cache by slot.
- `decode_attention`: one query token per sequence over its paged KV (split-KV, GQA-grouped).
- `prefill_attention`: varlen causal attention over paged KV with cached prefixes (prefill,
  chunked prefill, and mixed batches with decodes).
- `rms_norm`: residual add + RMSNorm in one pass (what `layers.norm.RMSNorm` computes).
- `qk_norm_rope`: Qwen3's per-head query/key RMSNorm and the rotary embedding in one kernel.
- `silu_and_mul`: SwiGLU's `silu(gate) * up` in one kernel.
- `top_p_threshold`: each row's top-p cut as a logit threshold, found by search, not by sort
  (the sampler uses it on CUDA).

The layers call the last three on CUDA (see `minillm.layers.fusion`); elsewhere they run the
PyTorch references' arithmetic.

Importing this package imports Triton (the `gpu` extra, Linux only); `import minillm` never does.
Tests run the kernels on the CPU under `TRITON_INTERPRET=1` and natively on a GPU.
"""

from minillm.kernels.decode_attention import decode_attention, decode_attention_reference
from minillm.kernels.prefill_attention import prefill_attention, prefill_attention_reference
from minillm.kernels.qk_norm_rope import qk_norm_rope, qk_norm_rope_reference
from minillm.kernels.rms_norm import rms_norm, rms_norm_reference
from minillm.kernels.silu_and_mul import silu_and_mul, silu_and_mul_reference
from minillm.kernels.store_kv import store_kv, store_kv_reference
from minillm.kernels.top_p import top_p_threshold, top_p_threshold_reference

__all__ = [
    "decode_attention",
    "decode_attention_reference",
    "prefill_attention",
    "prefill_attention_reference",
    "qk_norm_rope",
    "qk_norm_rope_reference",
    "rms_norm",
    "rms_norm_reference",
    "silu_and_mul",
    "silu_and_mul_reference",
    "store_kv",
    "store_kv_reference",
    "top_p_threshold",
    "top_p_threshold_reference",
]
