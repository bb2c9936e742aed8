"""The `triton` attention backend end to end against the `torch` reference backend.

Both backends get the same step (same metadata, same caches with a cached prefix in them):
each stores the new K/V and attends; the outputs and the caches must agree. Without a GPU the
kernels run in Triton's interpreter (`TRITON_INTERPRET=1`, set before Triton is imported).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is first imported

import pytest  # noqa: E402

pytest.importorskip("triton", reason="Triton is not installed (Linux only): pip install "
                    "'minillm[gpu]' to test the triton backend")

from minillm.attention import TorchBackend, get_backend  # noqa: E402
from minillm.attention.triton_backend import TritonBackend  # noqa: E402
from tests.test_kernels import DEVICE, ON_GPU, TOLERANCE, paged_batch  # noqa: E402

DTYPES = [torch.float32] + ([torch.bfloat16] if ON_GPU else [])  # bf16: see test_kernels


def run_both(prefix_lens, query_lens, *, group, block_size, dtype, seed):
    q, k, v, k_cache, v_cache, meta = paged_batch(
        prefix_lens, query_lens, block_size=block_size, num_heads=2 * group, num_kv_heads=2,
        head_dim=64, dtype=dtype, seed=seed, fill=0.0)  # zeroed like the runner's cache
    scale = 64**-0.5
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    expected = TorchBackend().forward(q, k, v, ref_k, ref_v, meta, scale)
    out = TritonBackend().forward(q, k, v, k_cache, v_cache, meta, scale)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group,block_size", [(1, 16), (4, 256), (8, 16)])
def test_decode_only_step_matches_torch(dtype, group, block_size):
    run_both([40, 16, 0], [1, 1, 1], group=group, block_size=block_size, dtype=dtype, seed=11)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group,block_size", [(2, 16), (8, 256)])
def test_mixed_step_matches_torch(dtype, group, block_size):
    """A fresh prompt, a decode, and a chunk continuing a prefix that ends mid-block."""
    run_both([0, 25, 19], [9, 1, 12], group=group, block_size=block_size, dtype=dtype, seed=12)


def test_without_a_cache_attends_over_the_step_alone():
    """The runner's profiling pass runs before the cache exists (empty cache tensors)."""
    q, k, v, *_, meta = paged_batch([0, 0], [5, 3], block_size=16, num_heads=4,
                                    num_kv_heads=2, head_dim=64, dtype=torch.float32)
    empty = torch.empty(0, device=DEVICE)
    out = TritonBackend().forward(q, k, v, empty, empty, meta, 0.125)
    expected = TorchBackend().forward(q, k, v, empty, empty, meta, 0.125)
    torch.testing.assert_close(out, expected)


def test_get_backend_picks_triton_on_cuda_and_torch_on_cpu():
    assert get_backend("auto", "cpu").name == "torch"
    assert get_backend("torch", "cuda").name == "torch"
    with pytest.raises(ValueError, match=r"'triton'.*'cpu'"):
        get_backend("triton", "cpu")
    with pytest.raises(ValueError, match="flashinfer"):
        get_backend("flashinfer", "cpu")
    assert get_backend("auto", "cuda").name == "triton"  # Triton imports (checked above)
    assert get_backend("triton", "cuda").name == "triton"


def test_flash_attn_is_refused_clearly_where_it_cannot_run():
    with pytest.raises(ValueError, match=r"'flash_attn'.*'cpu'"):
        get_backend("flash_attn", "cpu")
    from minillm.attention.flash_attn_backend import flash_attn_importable

    if not flash_attn_importable():
        with pytest.raises(ValueError, match="flash-attn-4"):
            get_backend("flash_attn", "cuda")


def flash_varlen_semantics(q, k, v, *, cu_seqlens_q, seqused_k, max_seqlen_q, max_seqlen_k,
                           page_table, softmax_scale, causal):
    """What flash-attn-4's `flash_attn_varlen_func` documents for a paged cache, in PyTorch:
    pages `(num_pages, page_size, h_k, d)`, a page table per sequence, `seqused_k` keys, and
    causal masking aligned bottom-right (query row j of n sees keys < seqused_k - n + j + 1)."""
    assert causal and max_seqlen_q >= 1 and max_seqlen_k >= int(seqused_k.max())
    outs = []
    for i in range(len(seqused_k)):
        lo, hi, used = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1]), int(seqused_k[i])
        keys = k[page_table[i].long()].flatten(0, 1)[:used]  # [used, h_k, d]
        vals = v[page_table[i].long()].flatten(0, 1)[:used]
        n, group = hi - lo, q.shape[1] // k.shape[2]
        rows = torch.arange(n)[:, None] + used - n
        mask = torch.arange(used)[None, :] <= rows  # [n, used]
        outs.append(torch.nn.functional.scaled_dot_product_attention(
            q[lo:hi].transpose(0, 1), keys.repeat_interleave(group, 1).transpose(0, 1),
            vals.repeat_interleave(group, 1).transpose(0, 1), attn_mask=mask,
            scale=softmax_scale).transpose(0, 1))
    return torch.cat(outs), None


@pytest.mark.parametrize("prefix_lens, query_lens", [
    ([0, 13, 40], [9, 1, 20]),  # fresh prompt, a decode, a chunk over a prefix mid-block
    ([5, 31], [1, 1]),  # decode only
])
def test_flash_attn_backend_passes_the_paged_cache_as_flash_attn_reads_it(prefix_lens,
                                                                           query_lens):
    """The backend's mapping (block tables as the page table, sequence lengths as
    `seqused_k`, causal) checked with flash-attn's documented semantics in its place."""
    from minillm.attention.flash_attn_backend import FlashAttnBackend

    backend = FlashAttnBackend.__new__(FlashAttnBackend)  # no flash-attn here: its semantics
    backend._attend = flash_varlen_semantics
    q, k, v, k_cache, v_cache, meta = paged_batch(
        prefix_lens, query_lens, block_size=16, num_heads=4, num_kv_heads=2, head_dim=64,
        dtype=torch.float32, seed=3, fill=0.0)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    expected = TorchBackend().forward(q, k, v, ref_k, ref_v, meta, 0.125)
    out = backend.forward(q, k, v, k_cache, v_cache, meta, 0.125)
    tol = TOLERANCE[torch.float32]
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
