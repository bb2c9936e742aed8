"""Model architectures, chosen from `config.json`'s `architectures`."""

from __future__ import annotations

from minillm.config import ModelConfig
from minillm.models.decoder import DecoderForCausalLM

# architecture name -> options of the shared decoder that make it that model
ARCHITECTURES: dict[str, dict] = {
    "LlamaForCausalLM": {},
    "Qwen2ForCausalLM": {},  # attention_bias comes from ModelConfig
    "Qwen3ForCausalLM": {"qk_norm": True},
}


def build_model(mc: ModelConfig, max_positions: int, backend) -> DecoderForCausalLM:
    """An uninitialised model for `mc`; the loader fills its weights."""
    if mc.architecture not in ARCHITECTURES:
        raise ValueError(f"architecture {mc.architecture!r} is not supported: supported are "
                         f"{', '.join(sorted(ARCHITECTURES))}")
    return DecoderForCausalLM(mc, max_positions, backend, **ARCHITECTURES[mc.architecture])


__all__ = ["ARCHITECTURES", "DecoderForCausalLM", "build_model"]
