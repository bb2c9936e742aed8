"""A decoder-only transformer: the Llama family and its close relatives, in one file.

Llama (SmolLM2, TinyLlama, Llama-3), Qwen2 and Qwen3 share this skeleton and differ in two
small, named options: `qk_norm` (Qwen3 normalises each query and key head before RoPE) and
`attention_bias` (Qwen2 has biases on q/k/v). Module and parameter names follow transformers,
so checkpoints load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from minillm.attention import AttentionMetadata
from minillm.config import ModelConfig
from minillm.distributed import tp_size
from minillm.layers import (
    Attention,
    MergedColumnParallelLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RMSNorm,
    RotaryEmbedding,
    RowParallelLinear,
    SiluAndMul,
    VocabParallelEmbedding,
)
from minillm.layers.fusion import use_fused


class DecoderAttention(nn.Module):
    def __init__(self, mc: ModelConfig, qk_norm: bool, max_positions: int, backend) -> None:
        super().__init__()
        self.head_dim = mc.head_dim
        self.qkv_proj = QKVParallelLinear(mc.hidden_size, mc.head_dim, mc.num_attention_heads,
                                          mc.num_key_value_heads, bias=mc.attention_bias)
        self.num_heads = self.qkv_proj.num_heads  # per rank
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.o_proj = RowParallelLinear(mc.num_attention_heads * mc.head_dim, mc.hidden_size)
        if qk_norm:
            self.q_norm = RMSNorm(mc.head_dim, mc.rms_norm_eps)
            self.k_norm = RMSNorm(mc.head_dim, mc.rms_norm_eps)
        self.qk_norm = qk_norm
        self.rotary_emb = RotaryEmbedding(mc.head_dim, max_positions, mc.rope_theta,
                                          mc.rope_scaling)
        self.attn = Attention(self.num_heads, self.num_kv_heads, mc.head_dim, backend)

    def forward(self, positions: torch.Tensor, x: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)  # [num_tokens, num_heads, head_dim]
        k = k.view(-1, self.num_kv_heads, self.head_dim)  # [num_tokens, num_kv_heads, head_dim]
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if use_fused(q):  # QK-norm and rotary as one kernel (minillm.kernels.qk_norm_rope)
            from minillm.kernels.qk_norm_rope import qk_norm_rope

            rope = self.rotary_emb
            qw, kw = (self.q_norm.weight, self.k_norm.weight) if self.qk_norm else (None, None)
            eps = self.q_norm.eps if self.qk_norm else 0.0
            q, k = qk_norm_rope(q, k, positions, rope.cos, rope.sin, qw, kw, eps)
        else:
            if self.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = self.rotary_emb(positions, q, k)
        out = self.attn(q, k, v, meta)  # [num_tokens, num_heads, head_dim]
        return self.o_proj(out.flatten(1))


class DecoderMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up in one matmul."""

    def __init__(self, mc: ModelConfig) -> None:
        super().__init__()
        size = mc.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(mc.hidden_size, [size, size])
        self.act_fn = SiluAndMul()
        self.down_proj = RowParallelLinear(size, mc.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, mc: ModelConfig, qk_norm: bool, max_positions: int, backend) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(mc.hidden_size, mc.rms_norm_eps)
        self.self_attn = DecoderAttention(mc, qk_norm, max_positions, backend)
        self.post_attention_layernorm = RMSNorm(mc.hidden_size, mc.rms_norm_eps)
        self.mlp = DecoderMLP(mc)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class DecoderModel(nn.Module):
    def __init__(self, mc: ModelConfig, qk_norm: bool, max_positions: int, backend) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(mc.vocab_size, mc.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(mc, qk_norm, max_positions, backend)
                                    for _ in range(mc.num_hidden_layers))
        self.norm = RMSNorm(mc.hidden_size, mc.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None  # [num_tokens, hidden_size]
        for layer in self.layers:
            x, residual = layer(positions, x, residual, meta)
        x, _ = self.norm(x, residual)
        return x


class DecoderForCausalLM(nn.Module):
    """The model the runner drives: hidden states for a packed step, logits for chosen rows."""

    # checkpoint name -> (parameter it is packed into, shard id for that parameter's loader)
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, mc: ModelConfig, max_positions: int, backend, qk_norm: bool = False):
        super().__init__()
        if mc.num_attention_heads % tp_size():
            raise ValueError(f"num_attention_heads={mc.num_attention_heads} must divide by "
                             f"{tp_size()} ranks")
        self.config = mc
        self.model = DecoderModel(mc, qk_norm, max_positions, backend)
        self.lm_head = ParallelLMHead(mc.vocab_size, mc.hidden_size)
        if mc.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Logits [num_rows, vocab] on rank 0 (None on other ranks)."""
        return self.lm_head(hidden)
