# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Layers: a decoder block, checked against transformers
#
# A decoder-only transformer is short to write down: token embedding, then N identical
# blocks (RMSNorm → attention → add the residual → RMSNorm → SwiGLU MLP → add the residual),
# a final RMSNorm and the LM head. Llama, Qwen2 and Qwen3 share that skeleton; Qwen3 adds a
# per-head RMSNorm on queries and keys (QK-norm).
#
# `minillm.layers` computes the same functions as transformers' modeling files, laid out for
# serving rather than training:
#
# - the tokens of all sequences in a step are **packed** into one flat `[num_tokens, hidden]`
#   tensor: no batch dimension, no padding;
# - projections are **fused**: q, k and v in one matmul (`qkv_proj`), gate and up in another
#   (`gate_up_proj`), filled from the checkpoint's separate tensors by the loader;
# - the residual add is **fused** into the next RMSNorm;
# - attention goes through a **backend** over the paged KV cache (notebook 06).
#
# Here a tiny random Qwen3 made by transformers and the same weights loaded into minillm
# are checked layer by layer, then whole, and a Llama with Llama-3's RoPE scaling after it.
#
# **What you will see:** each layer (RMSNorm, RoPE, the SwiGLU MLP, grouped-query attention,
# a whole decoder block, the whole model) run on the same inputs by minillm and by
# transformers, with an assertion that they agree to float32 round-off; RoPE's rotation angles
# and Llama 3.1's scaling of them drawn; which query heads share a kv head.
#
# **Open `minillm/models/decoder.py` beside this notebook** (140 lines: the decoder block and
# the model, read top to bottom), and the layers it is built from in `minillm/layers/`
# (`norm.py`, `rotary.py`, `activation.py`, `linear.py`, `attention.py`, each under 130 lines).
# Three exercises at the end.

# %%
from minillm.notebook import need, require

require("matplotlib")  # for the figures; if missing, it says what to pip install
# %matplotlib inline
import math
import tempfile

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb
from transformers.utils import logging as hf_logging

from minillm import viz
from minillm.attention import AttentionMetadata, TorchBackend
from minillm.config import ModelConfig
from minillm.layers import RMSNorm, RotaryEmbedding
from minillm.loader import load_weights
from minillm.models import build_model

torch.manual_seed(0)
hf_logging.disable_progress_bar()

# %% [markdown]
# ## One set of weights, two models
#
# transformers makes a tiny Qwen3 (2 layers, hidden size 64, 4 query heads and 2 key/value
# heads of 16 dimensions) with seeded random weights, and saves it as any checkpoint is saved.
# Its RMSNorm weights start at exactly 1.0, which would hide a wrong norm weight, so they get
# random scales first. minillm reads the same directory: `ModelConfig` from `config.json`,
# `build_model` for the architecture it names, `load_weights` for the `*.safetensors`.

# %%
# NBVAL_CHECK_OUTPUT
def load_into_minillm(hf_model):
    """Save a transformers model as a checkpoint and load that checkpoint into minillm."""
    checkpoint = tempfile.mkdtemp()
    hf_model.save_pretrained(checkpoint)
    model = build_model(ModelConfig.from_pretrained(checkpoint), max_positions=256,
                        backend=TorchBackend())
    load_weights(model, checkpoint)
    return model.eval()


config = Qwen3Config(vocab_size=384, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=16, max_position_embeddings=256, initializer_range=0.1)
hf = Qwen3ForCausalLM(config).eval()
with torch.no_grad():
    for name, param in hf.named_parameters():
        if "norm" in name:
            param.uniform_(0.5, 1.5)
model = load_into_minillm(hf)
print(model)

# %% [markdown]
# The module names are transformers' (`input_layernorm`, `self_attn`, `o_proj`, `mlp`,
# `down_proj`), so checkpoints load without renaming; only the fused projections differ.
# `qkv_proj`'s weight is q's rows, then k's, then v's:

# %%
# NBVAL_CHECK_OUTPUT
layer, hf_layer = model.model.layers[0], hf.model.layers[0]
for name in ("q_proj", "k_proj", "v_proj"):
    print(f"transformers {name:<8}", tuple(getattr(hf_layer.self_attn, name).weight.shape))
qkv = layer.self_attn.qkv_proj.weight
print("minillm      qkv_proj", tuple(qkv.shape), "= 64 + 32 + 32 rows")
q_rows, k_rows, v_rows = qkv.split([64, 32, 32])
print("same weights:", all(torch.equal(a, getattr(hf_layer.self_attn, n).weight) for a, n in
                           ((q_rows, "q_proj"), (k_rows, "k_proj"), (v_rows, "v_proj"))))

# %% [markdown]
# Each check below runs both implementations on the same inputs and asserts that the largest
# difference is within float32 round-off. A seven-token prompt's hidden states are the input:
# one sequence, so minillm's `[num_tokens, hidden]` is transformers' `[1, seq_len, hidden]`
# without the 1.

# %%
def check(name: str, ours: torch.Tensor, theirs: torch.Tensor, atol: float = 1e-5) -> None:
    """Assert two tensors agree within `atol`; print a line that float noise cannot change."""
    diff = (ours - theirs).abs().max().item()
    assert diff < atol, f"{name}: max |diff| = {diff:.2e}"
    print(f"{name}: match (max |diff| < {atol:g})")


T = 7
positions = torch.arange(T)  # one sequence: positions 0..6
x = torch.randn(T, 64)  # hidden states [num_tokens, hidden_size]

# %% [markdown]
# ## RMSNorm
#
# `x / sqrt(mean(x²) + eps) * weight`, in float32. Called with a residual, minillm's RMSNorm
# first adds it and returns the sum as the next residual, which saves a pass over the
# activations: transformers writes `residual + h` in the block, then normalises.

# %%
# NBVAL_CHECK_OUTPUT
residual = torch.randn(T, 64)
norm, hf_norm = layer.input_layernorm, hf_layer.input_layernorm
print(type(norm).__name__, "vs", type(hf_norm).__name__)
with torch.no_grad():
    check("RMSNorm", norm(x), hf_norm(x))
    normed, new_residual = norm(x, residual)
    check("RMSNorm(x, residual)", normed, hf_norm(x + residual))
    check("  and the residual it returns", new_residual, x + residual)

# %% [markdown]
# ## Rotary position embedding (RoPE)
#
# RoPE gives attention the tokens' positions by rotating queries and keys. Each head vector is
# cut into pairs of dimensions (`x_i`, `x_{i+d/2}`) and pair `i` is turned by the angle
# `position × θ_i`, with `θ_i = theta^(-2i/d)`: pair 0 turns one radian per position, the last
# pairs barely move over thousands. A query at position m and a key at position n then meet at
# the angle `(m − n) θ_i`: their dot product depends only on how far apart they are.
#
# minillm tabulates cos and sin once per position (`RotaryEmbedding.cos`, `.sin`) and indexes
# them with each token's position; transformers computes them per call.

# %%
# NBVAL_CHECK_OUTPUT
rotary = layer.self_attn.rotary_emb
q = torch.randn(T, 4, 16)  # [num_tokens, num_heads, head_dim]
k = torch.randn(T, 2, 16)  # [num_tokens, num_kv_heads, head_dim]
q_ours, k_ours = rotary(positions, q, k)
cos, sin = hf.model.rotary_emb(x, positions[None])  # [1, T, head_dim] each
q_hf, k_hf = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
check("RoPE on q", q_ours, q_hf[0].transpose(0, 1))  # back to [num_tokens, heads, head_dim]
check("RoPE on k", k_ours, k_hf[0].transpose(0, 1))
check("a rotation keeps lengths", q_ours.norm(dim=-1), q.norm(dim=-1))


def score(m: int, n: int) -> torch.Tensor:
    """Attention score of the query at position m with the key at position n."""
    q_m, _ = rotary(torch.tensor([m]), q[:1], k[:1])
    _, k_n = rotary(torch.tensor([n]), q[:1], k[:1])
    return (q_m[0, 0] * k_n[0, 0]).sum()


check("score(5, 2) = score(105, 102)", score(5, 2), score(105, 102))

# %% [markdown]
# The angles themselves, for a head of 64 dimensions (32 pairs) over 64 positions. Left: every
# pair at every position; fast pairs cycle many times, slow pairs hardly change, so together
# they tell near and far positions apart. Right: four pairs turning; each dot is a position.

# %%
viz.draw_rope(RotaryEmbedding(head_dim=64, max_positions=64, theta=10000.0), range(64))

# %% [markdown]
# The same, as numbers, for the tiny model's rotary (16 dimensions, 8 pairs):

# %%
# NBVAL_CHECK_OUTPUT
print(viz.rope_text(rotary, range(8)))

# %% [markdown]
# ### Llama-3's `llama3` scaling
#
# Llama 3.1 stretches a model trained on 8,192 positions to 131,072 by slowing the slow pairs
# down: pairs whose wavelength (positions per full turn) is longer than the original context
# turn 8× slower, pairs with wavelengths under a quarter of it are left alone, and the pairs in
# between are blended. minillm's `RotaryEmbedding(scaling=...)` against transformers'
# `LlamaRotaryEmbedding` for the same settings:

# %%
# NBVAL_CHECK_OUTPUT
llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
scaled = RotaryEmbedding(head_dim=64, max_positions=64, theta=500000.0, scaling=llama3)
hf_rope = LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=1, head_dim=64,
                                           max_position_embeddings=131072,
                                           rope_parameters={"rope_theta": 500000.0, **llama3}))
hf_cos, hf_sin = hf_rope(torch.zeros(1), torch.arange(64)[None])  # [1, 64, head_dim]
check("llama3 cos", scaled.cos, hf_cos[0, :, :32])  # transformers repeats the 32 pairs twice
check("llama3 sin", scaled.sin, hf_sin[0, :, :32])
plain = RotaryEmbedding(head_dim=64, max_positions=64, theta=500000.0)
slowdown = viz.rope_frequencies(plain) / viz.rope_frequencies(scaled)
print("θ_i slowed down by:", [round(s, 1) for s in slowdown.tolist()])

# %%
viz.draw_rope_wavelengths({"θ = 500,000": plain, "with llama3 scaling (factor 8)": scaled},
                          context=8192, title="RoPE wavelengths, Llama 3.1 style")

# %% [markdown]
# ## SwiGLU MLP
#
# `down(silu(gate(x)) * up(x))`. minillm computes gate and up in one matmul whose output is
# `[gate | up]`, and `SiluAndMul` splits it in half.

# %%
# NBVAL_CHECK_OUTPUT
mlp, hf_mlp = layer.mlp, hf_layer.mlp
print("gate_up_proj", tuple(mlp.gate_up_proj.weight.shape), "= gate's 128 rows, then up's 128")
with torch.no_grad():
    gate_up = mlp.gate_up_proj(x)  # [num_tokens, 2 * intermediate_size]
    check("SiluAndMul", mlp.act_fn(gate_up), F.silu(hf_mlp.gate_proj(x)) * hf_mlp.up_proj(x))
    check("MLP", mlp(x), hf_mlp(x))

# %% [markdown]
# ## Attention, with grouped-query heads
#
# In **grouped-query attention** (GQA) several query heads share one key/value head, so the KV
# cache (what the engine stores for every token of every sequence) shrinks by the group size.
# Query head `h` reads kv head `h // group`. The demo model, SmolLM2-135M, has 9 query heads
# and 3 kv heads:

# %%
viz.draw_gqa(9, 3, title="SmolLM2-135M: 9 query heads, 3 k/v heads (groups of 3)")

# %%
# NBVAL_CHECK_OUTPUT
print(viz.gqa_text(4, 2))  # the tiny model here

# %% [markdown]
# The attention layer hands q, k and v to the backend together with an `AttentionMetadata`:
# where each sequence's rows start in the packed batch (`cu_seqlens_q`), how many keys each
# attends to (`seq_lens`), and where its keys live in the paged KV cache (`slot_mapping`,
# `block_tables`; notebook 06 takes these apart). For one sequence of 7 tokens and no cache
# yet, it is short. The layer's cache is still empty (the runner fills it in when it sizes
# the KV pool), so the backend attends over the step's own keys, causally.

# %%
# NBVAL_CHECK_OUTPUT
meta = AttentionMetadata(
    slot_mapping=torch.arange(T),  # where each new token's K and V would be stored
    cu_seqlens_q=torch.tensor([0, T], dtype=torch.int32),  # one sequence: rows 0..T
    seq_lens=torch.tensor([T], dtype=torch.int32),  # it attends to T keys
    block_tables=torch.zeros(1, 1, dtype=torch.int32),
    max_query_len=T, max_seq_len=T, block_size=16, seq_lens_cpu=[T], query_lens_cpu=[T])
print("KV cache of this layer:", tuple(layer.self_attn.attn.k_cache.shape))
causal = torch.full((T, T), float("-inf")).triu(1)[None, None]  # transformers' additive mask
with torch.no_grad():
    hf_out, _ = hf_layer.self_attn(x[None], (cos, sin), causal)
    check("attention (QK-norm, RoPE, GQA, o_proj)", layer.self_attn(positions, x, meta),
          hf_out[0])

# %% [markdown]
# GQA is exactly multi-head attention with each kv head copied to the query heads of its
# group. `TorchBackend.prefill` with the 2 kv heads, and with them repeated to 4:

# %%
# NBVAL_CHECK_OUTPUT
backend, empty = TorchBackend(), torch.empty(0)
q, k, v = torch.randn(T, 4, 16), torch.randn(T, 2, 16), torch.randn(T, 2, 16)
grouped = backend.prefill(q, k, v, empty, empty, meta, scale=16**-0.5)
copied = backend.prefill(q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1),
                         empty, empty, meta, scale=16**-0.5)
check("GQA = MHA with kv head h // 2 for query head h", grouped, copied)

# %% [markdown]
# ## One decoder layer
#
# A whole block. minillm's layer returns the MLP output and the residual separately: the add
# happens in the next layer's fused RMSNorm (or the final norm), so here we add them to
# compare with transformers' `Qwen3DecoderLayer`.

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    mlp_out, residual = layer(positions, x, None, meta)
    hf_out = hf_layer(x[None], attention_mask=causal, position_embeddings=(cos, sin))
    check(f"{type(hf_layer).__name__}", mlp_out + residual, hf_out[0])

# %% [markdown]
# ## The whole model
#
# Token ids in, logits out, against `Qwen3ForCausalLM`. In the engine the LM head runs on the
# sampled rows only (a sequence's last token), so a 1,000-token prompt makes one row of
# logits, not 1,000; here we ask for every row to compare them all.

# %%
# NBVAL_CHECK_OUTPUT
input_ids = torch.randint(0, 384, (T,))
with torch.no_grad():
    hidden = model(input_ids, positions, meta)  # [num_tokens, hidden_size]
    logits = model.compute_logits(hidden)  # [num_tokens, vocab_size]
    hf_logits = hf(input_ids[None]).logits[0]
check("Qwen3 logits", logits, hf_logits, atol=1e-4)
print("same greedy next token at every position:",
      torch.equal(logits.argmax(-1), hf_logits.argmax(-1)))
print("what the runner asks for, the last row:", tuple(model.compute_logits(hidden[-1:]).shape))

# %% [markdown]
# The Llama family through the same code: no QK-norm, tied input and output embeddings (as in
# SmolLM2), one kv head for four query heads (multi-query), and the `llama3` RoPE scaling.

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(1)
llama_config = LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                           head_dim=16, max_position_embeddings=131072, initializer_range=0.1,
                           tie_word_embeddings=True,
                           rope_parameters={"rope_theta": 500000.0, **llama3})
hf_llama = LlamaForCausalLM(llama_config).eval()
llama = load_into_minillm(hf_llama)
print(llama.config.architecture, "| tied:", llama.lm_head.weight is llama.model.embed_tokens.weight,
      "| qk_norm:", llama.model.layers[0].self_attn.qk_norm)
with torch.no_grad():
    logits = llama.compute_logits(llama(input_ids, positions, meta))
    hf_logits = hf_llama(input_ids[None]).logits[0]
check("Llama logits", logits, hf_logits, atol=1e-4)
print("same greedy next token at every position:",
      torch.equal(logits.argmax(-1), hf_logits.argmax(-1)))

# %% [markdown]
# ## Exercises
#
# Work each one out by hand first; the solution cells check the answer against minillm's
# real layers.
#
# ### 1 · RMSNorm by hand
#
# An `RMSNorm(4)` with weight `[1, 1, 2, 0.5]` gets the hidden state `x = [1, 2, 3, 4]`. What
# does it return (to 4 decimals)? And for `x + 10`: is the result the same, as it would be
# for LayerNorm?
#
# <details><summary>Solution</summary>
#
# mean(x²) = (1 + 4 + 9 + 16) / 4 = 7.5, rms = √7.5 ≈ 2.7386, so x / rms ≈ [0.3651, 0.7303,
# 1.0954, 1.4606], and times the weight ≈ [0.3651, 0.7303, 2.1909, 0.7303] (eps = 1e-6 hardly
# matters here). RMSNorm only rescales: unlike LayerNorm it does not subtract the mean, so
# adding 10 to every entry changes the result (every entry comes out close to its weight).
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
rms_norm = RMSNorm(4, eps=1e-6)
with torch.no_grad():
    rms_norm.weight.copy_(torch.tensor([1.0, 1.0, 2.0, 0.5]))
    x4 = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # [num_tokens, hidden_size]
    by_hand = torch.tensor([[1.0, 2.0, 3.0, 4.0]]) / math.sqrt(7.5) * rms_norm.weight
    check("RMSNorm([1, 2, 3, 4])", rms_norm(x4), by_hand)
    print([round(v, 4) for v in rms_norm(x4)[0].tolist()])
    shifted = rms_norm(x4 + 10)
    print("x + 10:", [round(v, 4) for v in shifted[0].tolist()])
    assert not torch.allclose(shifted, rms_norm(x4))
    check("LayerNorm would not change", F.layer_norm(x4 + 10, (4,)), F.layer_norm(x4, (4,)))

# %% [markdown]
# ### 2 · Which kv head does query head 11 read?
#
# Qwen3-0.6B has 16 query heads and 8 kv heads. Which kv head does query head 11 attend with?
# Check it with the real `TorchBackend`: give kv head `j` the value vectors all equal to `j`;
# what must each query head's output be, whatever the queries and keys?
#
# <details><summary>Solution</summary>
#
# The group size is 16 / 8 = 2, and query head `h` reads kv head `h // 2`: query head 11 reads
# kv head 5. Attention outputs a weighted average of value vectors with weights summing to 1,
# so if every value of kv head `j` is the constant `j`, query head `h`'s output is exactly
# `h // 2`, whatever the scores are.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "meta", "T")
q16 = torch.randn(T, 16, 8)  # [num_tokens, num_heads, head_dim]
k8 = torch.randn(T, 8, 8)  # [num_tokens, num_kv_heads, head_dim]
v8 = torch.arange(8.0)[None, :, None].expand(T, 8, 8)  # kv head j: all values j
out = TorchBackend().prefill(q16, k8, v8, torch.empty(0), torch.empty(0), meta, scale=8**-0.5)
read = out[0, :, 0].round().int().tolist()  # which kv head each query head read
print("query head -> kv head:", dict(enumerate(read)))
assert read[11] == 5 and read == [h // 2 for h in range(16)]
assert torch.allclose(out, torch.tensor(read, dtype=torch.float)[None, :, None].expand_as(out))
assert viz.gqa_groups(16, 8)[5] == [10, 11]

# %% [markdown]
# ### 3 · Parameters of one decoder layer
#
# Count the parameters of one layer of the tiny Qwen3 above by hand: hidden size 64, 4 query
# heads and 2 kv heads of 16 dimensions, intermediate size 128, no biases, QK-norm. Which
# projection is the largest?
#
# <details><summary>Solution</summary>
#
# `qkv_proj`: 64 inputs × (64 + 32 + 32) outputs = 8,192; `o_proj`: 64 × 64 = 4,096;
# `gate_up_proj`: 64 × 256 = 16,384; `down_proj`: 128 × 64 = 8,192; two RMSNorms of 64 and
# the q and k norms of 16 each: 160. In all 37,024, the same as transformers' layer (fusing
# projections changes the layout, not the count). The MLP holds two thirds of it, as in most
# LLMs; GQA makes k and v half the size of q.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "model", "hf")
count_by_hand = 64 * (64 + 32 + 32) + 64 * 64 + 64 * 2 * 128 + 128 * 64 + 2 * 64 + 2 * 16
layer0 = model.model.layers[0]
counts = {name: p.numel() for name, p in layer0.named_parameters()}
for name, n in counts.items():
    print(f"{name:32s} {n:6,d}")
print(f"{'total':32s} {sum(counts.values()):6,d}")
assert sum(counts.values()) == count_by_hand == 37024
assert count_by_hand == sum(p.numel() for p in hf.model.layers[0].parameters())
assert max(counts, key=counts.get) == "mlp.gate_up_proj.weight"

# %% [markdown]
# Every layer computes what transformers computes. What changes in an engine is around the
# layers: which tokens go in together, and where their keys and values are kept. Next:
# [06 · Model runner](06_runner.ipynb), one prefill and one decode step over the paged KV cache.
