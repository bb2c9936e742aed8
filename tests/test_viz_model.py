"""minillm.viz.layers and minillm.viz.runner: RoPE, GQA, a runner step's inputs, the sampler.

Every figure is checked for the elements it claims to draw (found by gid), every text form
exactly, on small seeded inputs: a real `RotaryEmbedding`, the `AttentionMetadata` a real
`ModelRunner.prepare` builds for sequences scheduled by the real `Scheduler`, and hand-made
logits whose filtered distributions can be checked by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from matplotlib.figure import Figure

from minillm import viz
from minillm.config import EngineConfig, SamplingParams
from minillm.layers import RotaryEmbedding
from minillm.layers.rotary import rope_inv_freq
from minillm.runner import ModelRunner
from minillm.sampling import Sampler, SamplingBatch
from minillm.scheduler import Scheduler
from minillm.sequence import Sequence
from minillm.viz.style import SHARED_COLOR, lighten, seq_color
from tests.tiny import make_checkpoint


def by_gid(fig: Figure, prefix: str) -> list:
    """Artists of every axes whose gid starts with `prefix`."""
    return [a for ax in fig.axes for a in [*ax.patches, *ax.texts, *ax.lines, *ax.images]
            if (a.get_gid() or "").startswith(prefix)]


def gids(fig: Figure, prefix: str) -> list[str]:
    return sorted(a.get_gid() for a in by_gid(fig, prefix))


def face(artist) -> tuple[float, ...]:
    return tuple(round(c, 4) for c in artist.get_facecolor()[:3])


def rgb(color: str) -> tuple[float, ...]:
    return tuple(round(int(color[i : i + 2], 16) / 255, 4) for i in (1, 3, 5))


# ---- RoPE ----


@pytest.fixture
def rotary():
    return RotaryEmbedding(head_dim=16, max_positions=64, theta=10000.0)


def test_rope_frequencies_are_the_rotary_inv_freq(rotary):
    torch.testing.assert_close(viz.rope_frequencies(rotary), rope_inv_freq(16, 10000.0, None))
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    scaled = RotaryEmbedding(16, 8, 10000.0, llama3)
    torch.testing.assert_close(viz.rope_frequencies(scaled), rope_inv_freq(16, 10000.0, llama3))


def test_rope_angles_wrap_position_times_frequency(rotary):
    angles = viz.rope_angles(rotary, range(10))
    assert angles.shape == (10, 8)
    assert angles[:, 0].tolist() == pytest.approx(
        [math.remainder(p, 2 * math.pi) for p in range(10)], abs=1e-5)


def test_rope_text(rotary):
    assert viz.rope_text(rotary, range(6)) == (
        "                               | angle in degrees at position\n"
        "pair  θ (rad/pos)  wavelength  |   0   1   2   3   4   5\n"
        "   0  1            6.283       |   0  57 115 172 229 286\n"
        "   2  0.1          62.83       |   0   6  11  17  23  29\n"
        "   4  0.01         628.3       |   0   1   1   2   2   3\n"
        "   7  0.0003162    1.987e+04   |   0   0   0   0   0   0")
    assert viz.rope_text(rotary, [0, 7], pairs=[0]).splitlines()[2] == (
        "   0  1            6.283       |   0  41")  # 7 rad = 401°, wrapped


def test_draw_rope(rotary):
    fig = viz.draw_rope(rotary, range(32))
    assert isinstance(fig, Figure)
    (image,) = by_gid(fig, "rope-angles")
    assert image.get_array().shape == (32, 8)
    assert gids(fig, "rope-pair-") == ["rope-pair-0", "rope-pair-2", "rope-pair-4",
                                       "rope-pair-7"]
    line = by_gid(fig, "rope-pair-0")[0]
    assert len(line.get_xdata()) == 32  # one point per position
    fig = viz.draw_rope(rotary, range(8), pairs=[1, 3])
    assert gids(fig, "rope-pair-") == ["rope-pair-1", "rope-pair-3"]


def test_draw_rope_wavelengths(rotary):
    slow = RotaryEmbedding(16, 8, 500000.0)
    fig = viz.draw_rope_wavelengths({"a": rotary, "b": slow}, context=1000)
    lines = by_gid(fig, "wavelengths-")
    assert sorted(line.get_gid() for line in lines) == ["wavelengths-a", "wavelengths-b"]
    wavelengths = lines[0].get_ydata()
    assert len(wavelengths) == 8 and wavelengths[0] == pytest.approx(2 * math.pi, rel=1e-5)
    assert "1000 positions" in [t.get_text() for t in fig.axes[0].texts]


# ---- GQA ----


def test_gqa_groups_and_text():
    assert viz.gqa_groups(6, 2) == [[0, 1, 2], [3, 4, 5]]
    assert viz.gqa_text(9, 3) == (
        "9 query heads, 3 kv heads: grouped-query (GQA), 3 query heads per kv head\n"
        "  kv head 0 <- q heads 0 1 2\n"
        "  kv head 1 <- q heads 3 4 5\n"
        "  kv head 2 <- q heads 6 7 8")
    assert viz.gqa_text(2, 2).splitlines()[0].endswith("multi-head (MHA), 1 query heads per "
                                                       "kv head")
    assert viz.gqa_text(4, 1) == ("4 query heads, 1 kv heads: multi-query (MQA), 4 query heads "
                                  "per kv head\n  kv head 0 <- q heads 0 1 2 3")
    with pytest.raises(ValueError, match="num_heads=6 must divide by num_kv_heads=4"):
        viz.gqa_groups(6, 4)


def test_draw_gqa():
    fig = viz.draw_gqa(9, 3)
    assert len(by_gid(fig, "q-")) == 9
    assert len(by_gid(fig, "kv-")) == 3
    assert gids(fig, "link-") == sorted(f"link-{h}-{h // 3}" for h in range(9))
    kv = {a.get_gid(): a for a in by_gid(fig, "kv-")}
    assert face(kv["kv-1"]) == rgb(seq_color(1))
    assert "3× smaller" in fig.axes[0].get_title(loc="left")
    assert "MHA" in viz.draw_gqa(4, 4).axes[0].get_title(loc="left")


# ---- a runner step ----


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    path = make_checkpoint(str(tmp_path_factory.mktemp("qwen3")), "qwen3")
    config = EngineConfig(model=path, device="cpu", dtype="float32", kvcache_block_size=4,
                          num_kvcache_blocks=16, max_model_len=32, max_num_seqs=4,
                          max_num_batched_tokens=32)
    return ModelRunner(config)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


@pytest.fixture
def steps(runner):
    """Three steps, prepared by the real runner: a prefill of seqs 0 and 1 (6 and 3 tokens), a
    decode, then a mixed step where seq 2 arrives sharing seq 0's first (cached) block."""
    sched = Scheduler(runner.config)
    a = Sequence(list(range(10, 16)), greedy(4), seq_id=0)
    b = Sequence(list(range(20, 23)), greedy(4), seq_id=1)
    sched.add(a)
    sched.add(b)
    out = []
    for tokens in ([100, 101], [102, 103]):
        batch = sched.schedule()
        out.append((runner.prepare(batch.step_inputs()), [s.seq_id for s in batch.seqs]))
        sched.postprocess(batch, tokens)
    sched.add(Sequence([10, 11, 12, 13, 50, 51], greedy(4), seq_id=2))
    batch = sched.schedule()
    out.append((runner.prepare(batch.step_inputs()), [s.seq_id for s in batch.seqs]))
    return out


def test_step_inputs_text_prefill_decode_and_mixed(steps):
    texts = [viz.step_inputs_text(*tensors, seq_ids) for tensors, seq_ids in steps]
    assert texts[0] == (
        "input_ids    [10, 11, 12, 13, 14, 15, 20, 21, 22]\n"
        "positions    [0, 1, 2, 3, 4, 5, 0, 1, 2]\n"
        "slot_mapping [0, 1, 2, 3, 4, 5, 8, 9, 10]\n"
        "cu_seqlens_q [0, 6, 9]\n"
        "seq_lens     [6, 3]\n"
        "block_tables [[0, 1], [2, 0]]\n"
        "seq 0: rows 0:6, positions 0-5 -> slots 0-5; attends to 6 keys in blocks [0, 1]\n"
        "seq 1: rows 6:9, positions 0-2 -> slots 8-10; attends to 3 keys in blocks [2]")
    assert texts[1] == (
        "input_ids    [100, 101]\n"
        "positions    [6, 3]\n"
        "slot_mapping [6, 11]\n"
        "cu_seqlens_q [0, 1, 2]\n"
        "seq_lens     [7, 4]\n"
        "block_tables [[0, 1], [2, 0]]\n"
        "seq 0: rows 0:1, position 6 -> slot 6; attends to 7 keys in blocks [0, 1]\n"
        "seq 1: rows 1:2, position 3 -> slot 11; attends to 4 keys in blocks [2]")
    # seq 1 fills block 2 and gets block 3; seq 2 finds block 0 in the prefix cache and
    # computes its last two tokens only, into a block of its own.
    assert texts[2] == (
        "input_ids    [102, 103, 50, 51]\n"
        "positions    [7, 4, 4, 5]\n"
        "slot_mapping [7, 12, 16, 17]\n"
        "cu_seqlens_q [0, 1, 2, 4]\n"
        "seq_lens     [8, 5, 6]\n"
        "block_tables [[0, 1], [2, 3], [0, 4]]\n"
        "seq 0: rows 0:1, position 7 -> slot 7; attends to 8 keys in blocks [0, 1]\n"
        "seq 1: rows 1:2, position 4 -> slot 12; attends to 5 keys in blocks [2, 3]\n"
        "seq 2: rows 2:4, positions 4-5 -> slots 16-17; attends to 6 keys in blocks [0, 4]")


def slot_faces(fig: Figure) -> dict[int, tuple[float, ...]]:
    return {int(a.get_gid().split("-")[1]): face(a) for a in by_gid(fig, "slot-")}


def test_draw_step_inputs_prefill(steps):
    (input_ids, positions, meta), seq_ids = steps[0]
    fig = viz.draw_step_inputs(input_ids, positions, meta, num_blocks=16, seq_ids=seq_ids,
                               max_arrows=8)
    assert isinstance(fig, Figure)
    assert len(by_gid(fig, "token-")) == 9
    faces = slot_faces(fig)
    assert len(faces) == 16 * 4  # every slot of the pool
    written = {s for s, f in faces.items() if f != (1.0, 1.0, 1.0)}
    assert written == set(meta.slot_mapping.tolist())
    assert faces[0] == rgb(seq_color(0)) and faces[8] == rgb(seq_color(1))
    assert by_gid(fig, "arrow-") == []  # 9 tokens > max_arrows: slot numbers instead
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "P0 s0 L0" in texts and "P2 s1 L0" in texts and "P3" in texts
    assert fig.axes[0].get_title(loc="left").startswith("prefill step: 9 tokens of 2 sequences")


def test_draw_step_inputs_decode_draws_an_arrow_per_token(steps):
    (input_ids, positions, meta), seq_ids = steps[1]
    fig = viz.draw_step_inputs(input_ids, positions, meta, seq_ids=seq_ids)
    assert gids(fig, "arrow-") == ["arrow-0", "arrow-1"]
    faces = slot_faces(fig)
    assert len(faces) == 3 * 4  # default: up to the largest block id used
    assert faces[6] == rgb(seq_color(0))  # written now
    assert faces[5] == rgb(lighten(seq_color(0)))  # read: earlier KV
    assert faces[7] == (1.0, 1.0, 1.0)
    assert fig.axes[0].get_title(loc="left").startswith("decode step")


def test_draw_step_inputs_mixed_marks_the_shared_block(steps):
    (input_ids, positions, meta), seq_ids = steps[2]
    fig = viz.draw_step_inputs(input_ids, positions, meta, num_blocks=8, seq_ids=seq_ids)
    faces = slot_faces(fig)
    assert all(faces[s] == rgb(SHARED_COLOR) for s in range(4))  # block 0: seqs 0 and 2
    assert faces[16] == rgb(seq_color(2))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "P0 s0,s2 L0" in texts
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "shared prefix, read by several" in labels
    assert fig.axes[0].get_title(loc="left").startswith("mixed step: 4 tokens of 3 sequences")


def test_step_inputs_seq_ids_must_match(steps):
    (input_ids, positions, meta), _ = steps[0]
    with pytest.raises(ValueError, match="seq_ids has 1 ids, the step has 2 sequences"):
        viz.step_inputs_text(input_ids, positions, meta, [0])


# ---- the sampler's filters ----

PROBS = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
LOGITS = PROBS.log()


def test_sampler_stages_on_hand_made_logits():
    params = SamplingParams(temperature=1.0, top_k=4, top_p=0.7, min_p=0.8)
    stages = viz.sampler_stages(LOGITS, params)
    assert [name for name, _ in stages] == ["model", "top-k 4", "top-p 0.7", "min-p 0.8"]
    model, top_k, top_p, min_p = (p for _, p in stages)
    torch.testing.assert_close(model, PROBS)
    torch.testing.assert_close(top_k, torch.tensor([0.4, 0.3, 0.15, 0.1, 0]) / 0.95)
    # above token 2 lies 0.7 / 0.95 = 0.74 >= 0.7 of the mass: it is cut
    torch.testing.assert_close(top_p, torch.tensor([4, 3, 0, 0, 0]) / 7)
    # 3/7 < 0.8 * 4/7: only the most likely token is left
    torch.testing.assert_close(min_p, torch.tensor([1.0, 0, 0, 0, 0]))


def test_sampler_stages_temperature_and_greedy():
    stages = viz.sampler_stages(LOGITS, SamplingParams(temperature=0.5))
    assert [name for name, _ in stages] == ["model", "temperature 0.5"]
    torch.testing.assert_close(stages[1][1], PROBS**2 / (PROBS**2).sum())
    stages = viz.sampler_stages(LOGITS[None], SamplingParams(temperature=0.0))
    assert [name for name, _ in stages] == ["model", "greedy (argmax)"]
    assert stages[1][1].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_sampler_stages_only_keep_what_the_sampler_draws():
    """The real Sampler, 300 seeds: it draws every token the last stage keeps, and no other."""
    params = [SamplingParams(temperature=0.9, top_k=4, top_p=0.8, seed=s) for s in range(300)]
    batch = SamplingBatch.from_sequences([Sequence([1], p) for p in params], vocab_size=5)
    drawn = set(Sampler()(LOGITS.expand(300, -1), batch).token_ids.tolist())
    kept = viz.sampler_stages(LOGITS, params[0])[-1][1].nonzero()[:, 0].tolist()
    assert drawn == set(kept) == {0, 1, 2}


def test_sampler_filters_text():
    params = SamplingParams(temperature=1.0, top_k=4, top_p=0.7, min_p=0.8)
    text = viz.sampler_filters_text(LOGITS, params, n=4, token_label=lambda t: "abcde"[t])
    assert text == (
        "token         model  top-k 4  top-p 0.7  min-p 0.8\n"
        "a             0.400    0.421      0.571      1.000\n"
        "b             0.300    0.316      0.429          -\n"
        "c             0.150    0.158          -          -\n"
        "d             0.100    0.105          -          -\n"
        "kept tokens       5        4          2          1")


def test_draw_sampler_filters():
    params = SamplingParams(temperature=1.0, top_k=4, top_p=0.7, min_p=0.8)
    fig = viz.draw_sampler_filters(LOGITS, params, n=4, token_label=lambda t: "abcde"[t])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4  # model, top-k, top-p, min-p
    assert gids(fig, "kept-0-") == ["kept-0-0", "kept-0-1", "kept-0-2", "kept-0-3"]
    assert gids(fig, "kept-2-") == ["kept-2-0", "kept-2-1"]
    assert gids(fig, "cut-2-") == ["cut-2-2", "cut-2-3"]  # cut by top-p, shown once
    assert gids(fig, "cut-3-") == ["cut-3-1"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b", "c", "d",
                                                                     "other (1)"]
    assert fig.axes[3].get_title(loc="left") == "min-p 0.8\nkeeps 1 of 5"
