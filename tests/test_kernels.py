"""The Triton kernels against their PyTorch references (minillm/kernels/).

Without a GPU the kernels run in Triton's interpreter (`TRITON_INTERPRET=1`, set below before
Triton is imported), on small shapes. Every random input is seeded. Cache slots that no
sequence owns are filled with NaN, so a kernel that reads past a sequence's end, through a
padded block-table entry, or into another sequence's block fails loudly.

bfloat16 runs only on a GPU: the interpreter's `tl.dot` multiplies bfloat16's uint16 storage
as integers (Triton 3.9), so on the CPU the attention kernels are checked in float32 and
float16 (store_kv and rms_norm, which have no dot, in bfloat16 too).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is first imported

import pytest  # noqa: E402

pytest.importorskip("triton", reason="Triton is not installed (Linux only): pip install "
                    "'minillm[gpu]' to test the kernels")

from minillm.attention import AttentionMetadata  # noqa: E402
from minillm.kernels import (  # noqa: E402
    decode_attention,
    decode_attention_reference,
    prefill_attention,
    prefill_attention_reference,
    qk_norm_rope,
    qk_norm_rope_reference,
    rms_norm,
    rms_norm_reference,
    silu_and_mul,
    silu_and_mul_reference,
    store_kv,
    store_kv_reference,
    top_p_threshold,
    top_p_threshold_reference,
)
from minillm.kernels.decode_attention import choose_num_splits  # noqa: E402
from minillm.layers.activation import SiluAndMul  # noqa: E402
from minillm.layers.norm import RMSNorm  # noqa: E402
from minillm.layers.rotary import RotaryEmbedding  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
# Attention dtypes: float16 exercises the low-precision path (p cast to v's dtype) on the CPU.
ATTN_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
TOLERANCE = {torch.float32: 2e-4 if not ON_GPU else 2e-2,  # tf32 dots on a GPU
             torch.float16: 2e-3, torch.bfloat16: 2e-2}


def paged_batch(prefix_lens, query_lens, *, block_size, num_heads, num_kv_heads, head_dim,
                dtype, seed=0, fill=float("nan"), pad_blocks=2):
    """A random step laid out as the runner would: each sequence's cached prefix already in
    its (shuffled) blocks, the new tokens' q/k/v and slots, and the metadata.

    Block 0 belongs to no sequence (block tables are padded with it). Slots no sequence owns
    hold `fill`. Returns (q, k, v, k_cache, v_cache, meta).
    """
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [p + n for p, n in zip(prefix_lens, query_lens)]
    needed = [-(-n // block_size) for n in seq_lens]
    num_blocks = 1 + sum(needed) + 3  # block 0, every sequence's blocks, a few spare
    order = (1 + torch.randperm(num_blocks - 1, generator=gen)).tolist()
    tables, at = [], 0
    for n in needed:
        tables.append(order[at:at + n])
        at += n
    width = max(needed) + pad_blocks
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, fill, dtype=dtype)
    v_cache = torch.full(shape, fill, dtype=dtype)
    slots = []
    for table, p, total in zip(tables, prefix_lens, seq_lens):
        seq_slots = [table[t // block_size] * block_size + t % block_size for t in range(total)]
        prefix = torch.tensor(seq_slots[:p], dtype=torch.long)
        k_cache.view(-1, num_kv_heads, head_dim)[prefix] = torch.randn(
            p, num_kv_heads, head_dim, generator=gen).to(dtype)
        v_cache.view(-1, num_kv_heads, head_dim)[prefix] = torch.randn(
            p, num_kv_heads, head_dim, generator=gen).to(dtype)
        slots += seq_slots[p:]
    num_tokens = sum(query_lens)
    q = torch.randn(num_tokens, num_heads, head_dim, generator=gen).to(dtype)
    k = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype)
    cu = [0]
    for n in query_lens:
        cu.append(cu[-1] + n)
    dev = DEVICE
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=dev),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables],
                                  dtype=torch.int32, device=dev),
        max_query_len=max(query_lens), max_seq_len=max(seq_lens), block_size=block_size,
        seq_lens_cpu=seq_lens, query_lens_cpu=list(query_lens))
    return (q.to(dev), k.to(dev), v.to(dev), k_cache.to(dev), v_cache.to(dev), meta)


def assert_close(actual, expected, dtype):
    assert not actual.isnan().any(), "the kernel produced NaN (read a slot it should not)"
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)


# ---- store_kv ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("block_size,num_kv_heads,head_dim", [(16, 2, 64), (256, 1, 32),
                                                              (4, 3, 40)])
def test_store_kv_matches_reference(dtype, block_size, num_kv_heads, head_dim):
    _, k, v, k_cache, v_cache, meta = paged_batch(
        [5, 0, 17], [3, 6, 1], block_size=block_size, num_heads=num_kv_heads,
        num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype, seed=1, fill=0.0)
    # v as the model makes it: a strided view into a wider qkv row
    qkv = torch.randn(k.shape[0], 3, num_kv_heads, head_dim, device=DEVICE).to(dtype)
    v = qkv[:, 2]
    slots = meta.slot_mapping.clone()
    slots[1] = -1  # a padded row: skipped
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    store_kv_reference(k, v, ref_k, ref_v, slots)
    store_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
    assert not torch.equal(ref_k, torch.zeros_like(ref_k))  # the test wrote something


# ---- decode ----

def check_decode(dtype, group, block_size, prefix, num_splits_options):
    q, k, v, k_cache, v_cache, meta = paged_batch(
        prefix, [1] * len(prefix), block_size=block_size, num_heads=2 * group, num_kv_heads=2,
        head_dim=64, dtype=dtype, seed=group * 1000 + block_size)
    store_kv_reference(k, v, k_cache, v_cache, meta.slot_mapping)
    expected = decode_attention_reference(q, k_cache, v_cache, meta.block_tables,
                                          meta.seq_lens, 0.125)
    for num_splits in num_splits_options:
        out = decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, 0.125,
                               max_seq_len=meta.max_seq_len, num_splits=num_splits, block_n=16)
        assert out.dtype == dtype and out.shape == q.shape
        assert_close(out, expected, dtype)


@pytest.mark.parametrize("dtype", ATTN_DTYPES, ids=str)
@pytest.mark.parametrize("group", [1, 2, 4, 8])
@pytest.mark.parametrize("block_size", [16, 256])
def test_decode_matches_reference(dtype, group, block_size):
    # Context lengths ending mid-block, exactly on a block edge, and a lone token. With 16-key
    # tiles, 3 splits give several tiles per split and empty splits for the short sequences.
    check_decode(dtype, group, block_size, [36, 15, 0], num_splits_options=(1, 3))


@pytest.mark.parametrize("block_size", [1, 4])
def test_decode_small_blocks(block_size):
    """A 16-key tile spans 16 or 4 blocks: each key's block is looked up on its own."""
    check_decode(torch.float32, 2, block_size, [23, 6, 0], num_splits_options=(3,))


def test_decode_default_tiles_and_odd_head_dim():
    """Default tile size and split choice; a head_dim that is not a power of two (padded)."""
    q, k, v, k_cache, v_cache, meta = paged_batch(
        [70, 3], [1, 1], block_size=16, num_heads=6, num_kv_heads=2, head_dim=40,
        dtype=torch.float32, seed=5)
    store_kv_reference(k, v, k_cache, v_cache, meta.slot_mapping)
    expected = decode_attention_reference(q, k_cache, v_cache, meta.block_tables,
                                          meta.seq_lens, 0.3)
    out = decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, 0.3,
                           max_seq_len=meta.max_seq_len)
    assert_close(out, expected, torch.float32)


def test_num_splits_fills_the_gpu_at_small_batch_only():
    assert choose_num_splits(256, 8, 1000, num_sms=132) == 1  # 2,048 programs already
    assert choose_num_splits(1, 8, 32_768, num_sms=132) == 33  # 264 programs wanted
    assert choose_num_splits(1, 8, 300, num_sms=132) == 2  # >= 256 keys per split
    assert choose_num_splits(1, 1, 10**6, num_sms=132) == 64  # capped


# ---- prefill ----

@pytest.mark.parametrize("dtype", ATTN_DTYPES, ids=str)
@pytest.mark.parametrize("group", [1, 2, 4, 8])
@pytest.mark.parametrize("block_size", [16, 256])
def test_prefill_matches_reference(dtype, group, block_size):
    # an empty prefix, a prefix ending mid-block with a decode (q_len 1), a prefix ending on a
    # block edge with a chunk that crosses blocks
    prefix, query = [0, 21, 16], [7, 1, 20]
    q, k, v, k_cache, v_cache, meta = paged_batch(
        prefix, query, block_size=block_size, num_heads=2 * group, num_kv_heads=2,
        head_dim=64, dtype=dtype, seed=group * 100 + block_size)
    store_kv_reference(k, v, k_cache, v_cache, meta.slot_mapping)
    expected = prefill_attention_reference(q, k_cache, v_cache, meta.cu_seqlens_q,
                                           meta.seq_lens, meta.block_tables, 0.125)
    out = prefill_attention(q, k_cache, v_cache, meta.cu_seqlens_q, meta.seq_lens,
                            meta.block_tables, 0.125, max_query_len=meta.max_query_len,
                            block_m=max(16, 4 * group), block_n=16)  # 2+ query tiles of the chunk
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("block_size", [1, 4])
def test_prefill_small_blocks_default_tiles_odd_head_dim(block_size):
    """Tiles spanning many tiny blocks, the default tile sizes, head_dim 40 (padded to 64)."""
    q, k, v, k_cache, v_cache, meta = paged_batch(
        [9, 0], [5, 70], block_size=block_size, num_heads=4, num_kv_heads=2, head_dim=40,
        dtype=torch.float32, seed=block_size)
    store_kv_reference(k, v, k_cache, v_cache, meta.slot_mapping)
    expected = prefill_attention_reference(q, k_cache, v_cache, meta.cu_seqlens_q,
                                           meta.seq_lens, meta.block_tables, 0.2)
    out = prefill_attention(q, k_cache, v_cache, meta.cu_seqlens_q, meta.seq_lens,
                            meta.block_tables, 0.2, max_query_len=meta.max_query_len)
    assert_close(out, expected, torch.float32)


def test_prefill_of_decodes_equals_decode():
    """A batch of q_len 1 through the prefill kernel gives what the decode kernel gives."""
    q, k, v, k_cache, v_cache, meta = paged_batch(
        [30, 5, 47], [1, 1, 1], block_size=16, num_heads=8, num_kv_heads=2, head_dim=64,
        dtype=torch.float32, seed=3)
    store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
    decoded = decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, 0.125,
                               max_seq_len=meta.max_seq_len)
    prefilled = prefill_attention(q, k_cache, v_cache, meta.cu_seqlens_q, meta.seq_lens,
                                  meta.block_tables, 0.125, max_query_len=1)
    assert_close(prefilled, decoded, torch.float32)


# ---- fused residual add + RMSNorm ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("hidden", [64, 96])
def test_rms_norm_matches_reference_and_the_layer(dtype, hidden):
    gen = torch.Generator().manual_seed(hidden)
    x, residual = (torch.randn(2, 5, hidden, generator=gen).to(dtype).to(DEVICE)).unbind(0)
    layer = RMSNorm(hidden, eps=1e-6).to(dtype).to(DEVICE)
    layer.weight.data = torch.randn(hidden, generator=gen).to(dtype).to(DEVICE)
    y_ref, h_ref = rms_norm_reference(x, layer.weight, 1e-6, residual)
    y_layer, h_layer = layer(x, residual)
    assert torch.equal(y_ref, y_layer) and torch.equal(h_ref, h_layer)  # the same arithmetic
    y, h = rms_norm(x, layer.weight, 1e-6, residual)
    if ON_GPU or dtype == torch.float32:
        assert torch.equal(h, h_ref)
    else:  # the interpreter rounds fp32 -> bf16 toward zero (the GPU: to nearest even)
        torch.testing.assert_close(h, h_ref, atol=0, rtol=2**-7)
    ulp = {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]  # the fp32 sum's order differs
    torch.testing.assert_close(y, y_ref, atol=ulp * 4, rtol=ulp)
    torch.testing.assert_close(rms_norm(x, layer.weight, 1e-6), layer(x), atol=ulp * 4,
                               rtol=ulp)


# ---- fused QK-norm + rotary, and SiLU-and-mul ----

# The interpreter rounds fp32 -> bf16 toward zero and the fused kernels round once where
# PyTorch rounds after each op: in bf16 a few units in the last place apart.
FUSED_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=2e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("norm", [True, False], ids=["qk_norm", "rope_only"])
@pytest.mark.parametrize("num_heads, num_kv_heads, head_dim", [(4, 2, 16), (8, 1, 64),
                                                               (3, 3, 24)])
def test_qk_norm_rope_matches_the_layers(dtype, norm, num_heads, num_kv_heads, head_dim):
    """q and k as the decoder makes them (views into one packed qkv row, so strided), against
    the reference and against RMSNorm + RotaryEmbedding themselves."""
    gen = torch.Generator().manual_seed(head_dim + num_heads)
    tokens = 7
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = torch.randn(tokens, q_size + 2 * kv_size, generator=gen).to(dtype).to(DEVICE)
    q, k, _ = qkv.split([q_size, kv_size, kv_size], dim=-1)
    q = q.view(tokens, num_heads, head_dim)
    k = k.view(tokens, num_kv_heads, head_dim)
    positions = torch.tensor([0, 1, 5, 17, 100, 3, 255], device=DEVICE)
    rope = RotaryEmbedding(head_dim, 256, 10000.0).to(DEVICE)
    q_norm, k_norm = RMSNorm(head_dim).to(dtype).to(DEVICE), RMSNorm(head_dim).to(dtype).to(DEVICE)
    q_norm.weight.data = torch.randn(head_dim, generator=gen).to(dtype).to(DEVICE)
    k_norm.weight.data = torch.randn(head_dim, generator=gen).to(dtype).to(DEVICE)
    qw, kw = (q_norm.weight, k_norm.weight) if norm else (None, None)
    q_ref, k_ref = qk_norm_rope_reference(q, k, positions, rope.cos, rope.sin, qw, kw, 1e-6)
    q_layer, k_layer = (q_norm(q), k_norm(k)) if norm else (q, k)
    q_layer, k_layer = rope(positions, q_layer, k_layer)
    assert torch.equal(q_ref, q_layer) and torch.equal(k_ref, k_layer)  # the same arithmetic
    q_out, k_out = qk_norm_rope(q, k, positions, rope.cos, rope.sin, qw, kw, 1e-6)
    assert q_out.is_contiguous() and k_out.is_contiguous()
    torch.testing.assert_close(q_out, q_ref, **FUSED_TOL[dtype])
    torch.testing.assert_close(k_out, k_ref, **FUSED_TOL[dtype])


def test_qk_norm_rope_of_no_tokens():
    q, k = torch.zeros(0, 2, 8, device=DEVICE), torch.zeros(0, 1, 8, device=DEVICE)
    table = torch.zeros(4, 4, device=DEVICE)
    q_out, k_out = qk_norm_rope(q, k, torch.zeros(0, dtype=torch.long, device=DEVICE),
                                table, table)
    assert q_out.shape == (0, 2, 8) and k_out.shape == (0, 1, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("size", [24, 1536, 3000])
def test_silu_and_mul_matches_the_layer(dtype, size):
    gen = torch.Generator().manual_seed(size)
    x = (4 * torch.randn(5, 2 * size, generator=gen)).to(dtype).to(DEVICE)
    ref = silu_and_mul_reference(x)
    assert torch.equal(ref, SiluAndMul()(x))
    torch.testing.assert_close(silu_and_mul(x), ref, **FUSED_TOL[dtype])


@pytest.mark.parametrize("scale", [0.3, 2.0, 8.0])
@pytest.mark.parametrize("vocab, chunk", [(5, 8192), (1000, 8192), (2500, 1024), (3000, 2048)])
def test_top_p_threshold_matches_the_sort(scale, vocab, chunk):
    """The searched threshold is the sort's cut, to the float, for flat and peaked rows, top_p
    tiny (only the top token), middling and 1 (nothing cut); rows in one chunk and in several
    (a last chunk cut short), with a whole chunk at -inf (banned tokens) in one row."""
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(5, vocab, generator=gen) * scale
    if vocab > chunk:
        logits[2, :chunk] = float("-inf")
    logits = logits.to(DEVICE)
    top_p = torch.tensor([1e-6, 0.3, 0.8, 0.97, 1.0], device=DEVICE)
    got = top_p_threshold(logits, top_p, chunk=chunk)
    want = top_p_threshold_reference(logits, top_p)
    assert torch.equal(got, want), (got, want)
    kept = logits >= got[:, None]
    assert kept[torch.arange(5), logits.argmax(-1)].all()  # the top token always stays
    assert kept[-1].all()  # top_p = 1 keeps every token


def test_top_p_threshold_keeps_every_token_tied_with_it():
    logits = torch.tensor([[2.0, 1.0, 1.0, 1.0, -3.0]], device=DEVICE)
    threshold = top_p_threshold(logits, torch.tensor([0.5], device=DEVICE))
    assert threshold.item() == 1.0  # the sort keeps token 1 only; the threshold keeps 1, 2, 3
