"""minillm.viz.sharding: the shard arithmetic is what real ranks load, and the figures and text
show it.

`shard_ranges` restates the layers' weight-loader rules; the spawned test below runs two real
gloo ranks, each loading a tiny checkpoint, and compares every parameter with the slice of the
full checkpoint tensor that `shard_ranges` names.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as tmp
from matplotlib.figure import Figure

from minillm import distributed
from minillm.config import ModelConfig
from minillm.viz.sharding import (
    Shard,
    all_reduce_text,
    draw_all_reduce,
    draw_shards,
    rank_color,
    row_parallel_parts,
    shard_ranges,
    shards_text,
)
from minillm.viz.style import lighten
from tests.tiny import make_checkpoint

QWEN3_06B = ModelConfig(  # Qwen/Qwen3-0.6B's config.json
    architecture="Qwen3ForCausalLM", vocab_size=151936, hidden_size=1024,
    intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
    head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True)
QWEN25_15B = ModelConfig(  # Qwen/Qwen2.5-1.5B's: 2 kv heads, so 4 ranks share each one by two
    architecture="Qwen2ForCausalLM", vocab_size=151936, hidden_size=1536,
    intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
    head_dim=128, max_position_embeddings=32768, tie_word_embeddings=True)
TINY_KV1 = ModelConfig(  # tests/tiny.py's shape with one kv head and an odd vocabulary
    architecture="LlamaForCausalLM", vocab_size=385, hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
    max_position_embeddings=512, tie_word_embeddings=True)


# ---- the arithmetic ----


def test_qwen3_over_two_ranks_splits_heads_in_order():
    s = shard_ranges(QWEN3_06B, 2, 1)
    assert s["q_proj"] == Shard("q_proj", "QKVParallelLinear", (2048, 1024), 0, 1024, 2048,
                                heads=(8, 16))
    assert (s["k_proj"].start, s["k_proj"].stop, s["k_proj"].heads) == (512, 1024, (4, 8))
    assert (s["o_proj"].dim, s["o_proj"].start, s["o_proj"].stop) == (1, 1024, 2048)
    assert (s["down_proj"].dim, s["down_proj"].start, s["down_proj"].stop) == (1, 1536, 3072)
    assert (s["embed_tokens"].start, s["embed_tokens"].stop) == (75968, 151936)
    assert "lm_head" not in s  # tied: the embedding's shard is the head's


def test_fewer_kv_heads_than_ranks_replicates_them():
    kv = [shard_ranges(QWEN25_15B, 4, r)["k_proj"] for r in range(4)]
    assert [s.heads for s in kv] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert all(s.replicas == 2 for s in kv)
    assert [shard_ranges(QWEN25_15B, 4, r)["q_proj"].heads for r in range(4)] == [
        (0, 3), (3, 6), (6, 9), (9, 12)]


def test_vocab_is_padded_to_a_multiple_of_the_ranks():
    first, last = (shard_ranges(TINY_KV1, 2, r)["embed_tokens"] for r in (0, 1))
    assert (first.start, first.stop, first.padding) == (0, 193, 0)
    assert (last.start, last.stop, last.padding) == (193, 385, 1)
    assert first.size == last.size == 193


@pytest.mark.parametrize("mc,tp", [(QWEN3_06B, 2), (QWEN3_06B, 4), (QWEN25_15B, 4),
                                   (TINY_KV1, 2), (TINY_KV1, 4)])
def test_distinct_shards_tile_every_tensor(mc, tp):
    per_rank = [shard_ranges(mc, tp, r) for r in range(tp)]
    for name, first in per_rank[0].items():
        bands = sorted({(p[name].start, p[name].stop) for p in per_rank})
        assert bands[0][0] == 0 and bands[-1][1] == first.shape[first.dim], name
        assert all(a[1] == b[0] for a, b in zip(bands, bands[1:])), name  # no gap, no overlap
        assert len({p[name].size for p in per_rank}) == 1, name  # same shape on every rank


def test_bad_rank_counts_fail_with_the_engines_message():
    with pytest.raises(ValueError, match="tensor_parallel_size=3 is invalid"):
        shard_ranges(QWEN3_06B, 3, 0)
    with pytest.raises(ValueError, match=r"rank=2 is invalid: must be in \[0, 1\]"):
        shard_ranges(QWEN3_06B, 2, 2)


# ---- against what real ranks load ----


def _rank_loads_its_shards(rank: int, world_size: int, init_method: str, model_dir: str) -> None:
    """One gloo rank: build the model, load the checkpoint, compare with `shard_ranges`."""
    from safetensors import safe_open

    from minillm.attention import get_backend
    from minillm.loader import load_weights
    from minillm.models import build_model

    distributed.init_process_group(rank, world_size, "cpu", init_method)
    try:
        mc = ModelConfig.from_pretrained(model_dir)
        model = build_model(mc, 64, get_backend("torch", "cpu"))
        load_weights(model, model_dir)
        shards = shard_ranges(mc, world_size, rank)
        with safe_open(f"{model_dir}/model.safetensors", framework="pt") as f:
            full = {name: f.get_tensor(name) for name in f.keys()}

        def check(held: torch.Tensor, name: str, shard: Shard) -> None:
            want = full[name][shard.slices()]
            rows = shard.stop - shard.start
            if shard.padding:  # vocabulary padding: zero rows after the real ones
                assert torch.equal(held[rows:], torch.zeros_like(held[rows:])), name
                held = held[:rows]
            assert torch.equal(held, want), f"rank {rank}: {name} is not {shard}"

        sizes = [shards[n].size for n in ("q_proj", "k_proj", "v_proj")]
        for i, layer in enumerate(model.model.layers):
            prefix = f"model.layers.{i}"
            attn, mlp = layer.self_attn, layer.mlp
            for part, n in zip(attn.qkv_proj.weight.split(sizes), ("q_proj", "k_proj", "v_proj")):
                check(part, f"{prefix}.self_attn.{n}.weight", shards[n])
            check(attn.o_proj.weight, f"{prefix}.self_attn.o_proj.weight", shards["o_proj"])
            gate, up = mlp.gate_up_proj.weight.chunk(2)
            check(gate, f"{prefix}.mlp.gate_proj.weight", shards["gate_proj"])
            check(up, f"{prefix}.mlp.up_proj.weight", shards["up_proj"])
            check(mlp.down_proj.weight, f"{prefix}.mlp.down_proj.weight", shards["down_proj"])
        check(model.model.embed_tokens.weight, "model.embed_tokens.weight",
              shards["embed_tokens"])
        assert ("lm_head" in shards) == (not mc.tie_word_embeddings)
        if "lm_head" in shards:
            check(model.lm_head.weight, "lm_head.weight", shards["lm_head"])
    finally:
        distributed.destroy_process_group()


def spawn_ranks(fn, world_size: int, *args, timeout: float = 120.0) -> None:
    """Run `fn(rank, world_size, init_method, *args)` on `world_size` spawned gloo ranks; a
    rank's exception fails the test, and so does running past `timeout` (ranks killed)."""
    init_method = f"tcp://127.0.0.1:{distributed.free_port()}"
    ctx = tmp.start_processes(fn, args=(world_size, init_method, *args), nprocs=world_size,
                              join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
                p.join()
            pytest.fail(f"{world_size} ranks ran past {timeout:.0f} s")


@pytest.mark.parametrize("arch,overrides", [
    ("qwen3", dict(num_key_value_heads=2)),  # kv heads split; lm_head separate
    ("llama", dict(num_key_value_heads=1, vocab_size=385, tie_word_embeddings=True)),
], ids=["kv2-split", "kv1-replicated-padded-vocab"])
def test_two_ranks_load_the_slices_shard_ranges_names(arch, overrides, tmp_path):
    model_dir = make_checkpoint(str(tmp_path), arch, **overrides)
    spawn_ranks(_rank_loads_its_shards, 2, model_dir)


# ---- text and figures ----


def test_shards_text_is_exact():
    assert shards_text(TINY_KV1, 2) == """\
LlamaForCausalLM: 4 heads and 1 kv head of 16, hidden 64, intermediate 128, vocab 385; tp=2
tensor                  split  rank 0               rank 1
q_proj [64, 64]         rows   0:32 (heads 0-1)     32:64 (heads 2-3)
k_proj [16, 64]         rows   0:16 (kv head 0) ×2  0:16 (kv head 0) ×2
v_proj [16, 64]         rows   0:16 (kv head 0) ×2  0:16 (kv head 0) ×2
o_proj [64, 64]         cols   0:32 (heads 0-1)     32:64 (heads 2-3)
gate_proj [128, 64]     rows   0:64                 64:128
up_proj [128, 64]       rows   0:64                 64:128
down_proj [64, 128]     cols   0:64                 64:128
embed_tokens [385, 64]  rows   0:193                193:385 +1 pad
parameters of these tensors, 2 layers: 94.3K; held per rank: 49.2K, 49.2K"""


def bands(fig: Figure) -> dict[str, list]:
    """gid -> the patches carrying it, for gids `shard-...`."""
    out: dict[str, list] = {}
    for p in fig.axes[0].patches:
        if (p.get_gid() or "").startswith("shard-"):
            out.setdefault(p.get_gid(), []).append(p)
    return out


def test_draw_shards_colours_one_band_per_rank_and_tensor():
    fig = draw_shards(QWEN3_06B, 4)
    assert isinstance(fig, Figure)
    found = bands(fig)
    names = list(shard_ranges(QWEN3_06B, 4, 0))
    assert sorted(found) == sorted(f"shard-{n}-r{r}" for n in names for r in range(4))
    assert found["shard-q_proj-r2"][0].get_facecolor()[:3] == pytest.approx(
        tuple(int(lighten(rank_color(2), 0.35)[i : i + 2], 16) / 255 for i in (1, 3, 5)))
    o = found["shard-o_proj-r1"][0]  # row-parallel: a vertical band, a quarter wide
    assert o.get_height() > o.get_width() * 3
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["rank 0", "rank 1", "rank 2", "rank 3"]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "heads 12-15" in texts and "RowParallelLinear" in " ".join(texts)


def test_draw_shards_stripes_a_replicated_kv_head():
    fig = draw_shards(QWEN25_15B, 4)
    found = bands(fig)
    r0, r1 = found["shard-k_proj-r0"][0], found["shard-k_proj-r1"][0]
    assert r0.get_y() == r1.get_y() and r0.get_x() < r1.get_x()  # side by side, same rows
    assert "kv head 0\n×2" in [t.get_text() for t in fig.axes[0].texts]


def test_all_reduce_parts_sum_to_the_full_matmul():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (2, 8), generator=g).float()
    w = torch.randint(-3, 4, (4, 8), generator=g).float()
    parts = row_parallel_parts(x, w, 4)
    assert [(b.start, b.stop) for b, _ in parts] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert torch.equal(sum(y for _, y in parts), x @ w.T)
    text = all_reduce_text(x, w, 2)
    assert text.startswith("rank 0: x[:, 0:4] · W[:, 0:4]ᵀ =")
    assert text.endswith("equal: True")
    fig = draw_all_reduce(x, w, 2)
    gids = {p.get_gid() for p in fig.axes[0].patches} - {None}
    assert gids == {"x-r0", "w-r0", "partial-r0", "x-r1", "w-r1", "partial-r1", "sum", "full"}
    with pytest.raises(ValueError, match="in_features=8 must divide by 3 ranks"):
        row_parallel_parts(x, w, 3)


def test_importing_sharding_loads_no_plotting_library():
    code = ("import sys, minillm.viz.sharding\n"
            "print([m for m in ('matplotlib', 'IPython') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
