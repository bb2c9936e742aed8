"""minillm.viz: every figure has the content it claims, every text form is exact.

The scenarios are small and seeded (explicit seq_ids, made-up tokens `100 + position`), run
through the real Scheduler and BlockManager, so the expected text can be checked by hand.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from matplotlib.figure import Figure

from minillm import viz
from minillm.config import EngineConfig, SamplingParams
from minillm.kvcache import BlockManager, RadixPrefixCache
from minillm.scheduler import Scheduler, StepTrace
from minillm.sequence import Sequence
from minillm.simulate import run, step
from minillm.viz.blocks import ref_shade
from minillm.viz.style import (
    RADIX_EVICTED_COLOR,
    RADIX_HIT_COLOR,
    RADIX_NEW_COLOR,
    TIMELINE_COLORS,
    lighten,
    seq_color,
)


def token_fn(seq: Sequence) -> int:
    """A made-up next token that is easy to read in expected text: 100 + its position."""
    return 100 + seq.num_tokens


def params(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def by_gid(fig: Figure, prefix: str) -> list:
    """Artists (patches and texts) of every axes whose gid starts with `prefix`."""
    return [a for ax in fig.axes for a in [*ax.patches, *ax.texts]
            if (a.get_gid() or "").startswith(prefix)]


def legend_labels(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend()
            for t in ax.get_legend().get_texts()]


def all_text(fig: Figure) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)


@pytest.fixture
def shared():
    """Two running sequences sharing an 8-token prefix (two cached blocks), after two steps."""
    cfg = EngineConfig(max_num_seqs=4, max_num_batched_tokens=16, max_model_len=32,
                       kvcache_block_size=4, num_kvcache_blocks=12, prefix_cache="radix")
    sched = Scheduler(cfg, trace=True)
    a = Sequence(list(range(1, 11)), params(4), seq_id=0)
    b = Sequence(list(range(1, 9)) + [20, 21, 22], params(4), seq_id=1)
    sched.add(a)
    step(sched, token_fn)
    sched.add(b)
    step(sched, token_fn)
    return sched, [a, b]


def admit(bm: BlockManager, seq: Sequence) -> None:
    """What the scheduler and a forward pass do to a new sequence, in one go."""
    bm.acquire_cached_prefix(seq)
    n = seq.num_uncomputed_tokens
    bm.allocate(seq, n)
    seq.num_computed_tokens += n  # the forward pass stores these tokens' KV
    bm.cache_computed_blocks(seq)


# ---- import hygiene ----


def test_import_minillm_loads_no_plotting_library():
    code = ("import sys, minillm, minillm.viz, minillm.scheduler, minillm.simulate\n"
            "bad = [m for m in ('matplotlib', 'ipywidgets', 'IPython') if m in sys.modules]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_figures_display_as_images_in_ipython_without_pyplot():
    code = ("from IPython.core.interactiveshell import InteractiveShell\n"
            "shell = InteractiveShell.instance()\n"
            "from minillm.kvcache import BlockManager\n"
            "from minillm.viz import draw_block_pool\n"
            "png = shell.display_formatter.formatters['image/png']\n"
            "print(png(draw_block_pool(BlockManager(4, 4)))[:8])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "iVBORw0K"  # base64 of the PNG signature


def test_missing_plotting_library_names_the_extra():
    from minillm.viz.figure import require

    require("matplotlib")
    with pytest.raises(ImportError, match=r"minillm\[notebooks\]"):
        require("no_such_plotting_library")


def test_core_modules_do_not_import_viz():
    code = ("import sys, minillm.scheduler, minillm.kvcache, minillm.simulate\n"
            "print(sorted(m for m in sys.modules if m.startswith('minillm.viz')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- style ----


def test_abbreviate_tokens():
    assert viz.abbreviate_tokens([1, 2, 3]) == "1 2 3"
    assert viz.abbreviate_tokens(range(1, 41), max_tokens=6) == "1 2 3 … 38 39 40 (40)"
    assert viz.abbreviate_tokens(range(10), max_tokens=3) == "0 1 … 9 (10)"


def test_seq_colors_are_stable_and_distinct():
    assert seq_color(3) == seq_color(3 + 18)
    assert len({seq_color(i) for i in range(18)}) == 18


# ---- block pool ----


def test_block_pool_text(shared):
    sched, seqs = shared
    assert viz.block_pool_text(sched.block_manager, seqs) == (
        " 0 s0,1*   1 s0,1*   2 s0      3 s1      4 .       5 .       6 .       7 .\n"
        " 8 .       9 .      10 .      11 .")


def test_block_pool_text_after_finish_shows_evictable(shared):
    sched, seqs = shared
    run(sched, [], token_fn)
    assert viz.block_pool_text(sched.block_manager, [], cols=6) == (
        " 0 ~   1 ~   2 ~   3 ~   4 .   5 .\n"
        " 6 .   7 .   8 .   9 .  10 .  11 .")


def test_draw_block_pool(shared):
    sched, seqs = shared
    bm = sched.block_manager
    fig = viz.draw_block_pool(bm, seqs)
    assert isinstance(fig, Figure)
    blocks = by_gid(fig, "block-")
    assert len(blocks) == bm.num_blocks == 12
    assert bm.ref_counts[2] == bm.ref_counts[3] == 1  # one holder: the light shade
    assert blocks[2].get_facecolor()[:3] == pytest.approx(_rgb(ref_shade(seq_color(0), 1)))
    assert blocks[3].get_facecolor()[:3] == pytest.approx(_rgb(ref_shade(seq_color(1), 1)))
    assert ref_shade(seq_color(0), 3) == seq_color(0)  # three or more: the full colour
    assert ref_shade(seq_color(0), 1) != ref_shade(seq_color(0), 2) != seq_color(0)
    assert legend_labels(fig) == ["seq 0", "seq 1", "free", "evictable (cached, ref 0)",
                                  "in prefix cache"]
    texts = all_text(fig)
    assert texts.count("×2") == 2  # blocks 0 and 1 are shared
    assert "12 blocks × 4 tokens" in fig.axes[0].get_title(loc="left")


def test_draw_block_pool_without_owners_and_into_given_axes(shared):
    sched, _ = shared
    fig = Figure()
    ax = fig.add_subplot()
    assert viz.draw_block_pool(sched.block_manager, ax=ax, cols=4) is fig
    assert "in use" in legend_labels(fig)
    assert len(by_gid(fig, "block-")) == 12


# ---- block tables ----


def test_block_tables_text(shared):
    sched, seqs = shared
    assert viz.block_tables_text(seqs, sched.block_manager) == (
        "seq 0: 12 tokens, 11 computed, 0 from cache, blocks [0, 1, 2]\n"
        "  L0 -> P0 x2 | 1 2 3 4\n"
        "  L1 -> P1 x2 | 5 6 7 8\n"
        "  L2 -> P2    | 9 10 110 (111)\n"
        "seq 1: 12 tokens, 11 computed, 8 from cache, blocks [0, 1, 3]\n"
        "  L0 -> P0 x2 | 1 2 3 4\n"
        "  L1 -> P1 x2 | 5 6 7 8\n"
        "  L2 -> P3    | 20 21 22 (111)")


def test_draw_block_tables(shared):
    sched, seqs = shared
    fig = viz.draw_block_tables(seqs, sched.block_manager)
    assert isinstance(fig, Figure)
    arrows = by_gid(fig, "table-")
    assert sorted(a.get_gid() for a in arrows) == [f"table-{s}-{i}" for s in (0, 1)
                                                   for i in range(3)]
    physical = sorted(p.get_gid() for p in by_gid(fig, "physical-"))
    assert physical == ["physical-0", "physical-1", "physical-2", "physical-3"]
    texts = all_text(fig)
    assert "P0  ×2" in texts and "P1  ×2" in texts and "P2" in texts
    assert "L2→P3" in texts and "seq 1" in texts
    assert "shared (×ref count)" in legend_labels(fig)


# ---- radix tree ----


@pytest.fixture
def radix_bm():
    """Three prompts through a 6-block pool: a hit (with a split), then an eviction."""
    bm = BlockManager(6, 4, RadixPrefixCache(4))
    a = Sequence(list(range(1, 13)), seq_id=0)
    admit(bm, a)
    bm.deallocate(a)
    bm.cache.clear_events()
    b = Sequence([*range(1, 9), 50, 51, 52, 53], seq_id=1)
    admit(bm, b)
    return bm, b


def test_radix_events_text_hit_and_new(radix_bm):
    bm, _ = radix_bm
    assert viz.radix_events_text(bm.cache) == "hit nodes: [2]\nnew nodes: [3]"


def test_draw_radix_tree_colours_hits_and_new_nodes(radix_bm):
    bm, _ = radix_bm
    cache = bm.cache
    fig = viz.draw_radix_tree(cache, bm)
    nodes = {p.get_gid(): p for p in by_gid(fig, "radix-node-")}
    assert sorted(nodes) == sorted(f"radix-node-{n.node_id}" for n in cache.nodes())
    assert len(nodes) == 4  # root, the shared prefix, A's tail, B's tail
    assert nodes["radix-node-2"].get_facecolor()[:3] == pytest.approx(_rgb(RADIX_HIT_COLOR))
    assert nodes["radix-node-3"].get_facecolor()[:3] == pytest.approx(_rgb(RADIX_NEW_COLOR))
    assert nodes["radix-node-3"].get_linewidth() > nodes["radix-node-1"].get_linewidth()
    edges = {t.get_gid(): t.get_text() for t in by_gid(fig, "radix-edge-")}
    assert edges == {"radix-edge-2": "1 2 3 … 6 7 8 (8)", "radix-edge-1": "9 10 11 12",
                     "radix-edge-3": "50 51 52 53"}
    assert legend_labels(fig) == ["new (inserted)", "cache hit", "evicted", "cached",
                                  "in use (ref > 0)"]
    assert "ref 0" in all_text(fig) and "ref 1" in all_text(fig)


def test_radix_eviction_ghosts(radix_bm):
    bm, b = radix_bm
    cache = bm.cache
    cache.clear_events()
    admit(bm, Sequence(list(range(90, 102)), seq_id=2))  # 3 blocks, 2 free: evicts A's tail
    assert viz.radix_events_text(cache) == (
        "hit nodes: []\nnew nodes: [4]\nevicted 1 block(s) from below node 2: 9 10 11 12")
    fig = viz.draw_radix_tree(cache)
    ghosts = by_gid(fig, "radix-ghost-")
    assert [g.get_gid() for g in ghosts if hasattr(g, "get_facecolor")] == ["radix-ghost-0"]
    ghost = next(g for g in ghosts if g.get_gid() == "radix-ghost-0")
    assert ghost.get_linestyle() == "--"
    assert ghost.get_facecolor()[:3] == pytest.approx(_rgb(lighten(RADIX_EVICTED_COLOR)))
    assert by_gid(fig, "radix-ghost-edge-0")[0].get_text() == "9 10 11 12"
    assert len(by_gid(fig, "radix-node-")) == len(cache.nodes())


def test_radix_ghost_whose_parent_is_gone_hangs_under_root(radix_bm):
    bm, b = radix_bm
    bm.deallocate(b)
    bm.cache.clear_events()
    admit(bm, Sequence(list(range(200, 224)), seq_id=3))  # all 6 blocks: evicts everything
    text = viz.radix_events_text(bm.cache)
    assert text.splitlines()[2:] == [
        "evicted 1 block(s) (parent evicted too): 9 10 11 12",
        "evicted 1 block(s) (parent evicted too): 50 51 52 53",
        "evicted 2 block(s) from below the root: 1 2 3 4 5 6 7 8",
    ]
    fig = viz.draw_radix_tree(bm.cache, bm)
    assert all_text(fig).count("(parent gone)") == 2
    assert len([g for g in by_gid(fig, "radix-ghost-") if hasattr(g, "get_facecolor")]) == 3


def test_tidy_layout_centres_parents_over_children():
    children = {"r": ["a", "b"], "a": ["c", "d", "e"], "b": []}
    pos = viz.tidy_layout(children, "r")
    assert pos == {"c": (0.0, 2), "d": (1.0, 2), "e": (2.0, 2), "a": (1.0, 1), "b": (3.0, 1),
                   "r": (2.0, 0)}
    assert viz.tidy_layout({}, "only") == {"only": (0.0, 0)}


# ---- timeline ----


@pytest.fixture
def preempting():
    """Two sequences that outgrow a 6-block pool: the newer one is preempted, then resumes."""
    cfg = EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=16,
                       kvcache_block_size=4, num_kvcache_blocks=6, enable_prefix_caching=False)
    sched = Scheduler(cfg, trace=True)
    seqs = [Sequence(list(range(10 * i + 1, 10 * i + 8)), params(8), seq_id=i) for i in range(2)]
    run(sched, seqs, token_fn)
    return sched


@pytest.fixture
def chunked():
    """A 20-token prompt with an 8-token budget, between a short request and a late one."""
    cfg = EngineConfig(max_num_seqs=4, max_num_batched_tokens=8, max_model_len=32,
                       kvcache_block_size=4, num_kvcache_blocks=16)
    sched = Scheduler(cfg, trace=True)
    seqs = [Sequence([1, 2, 3], params(3), seq_id=0), Sequence(list(range(1, 21)), params(3),
            seq_id=1), Sequence([5, 6], params(3), seq_id=2)]
    run(sched, seqs, token_fn)
    return sched


def test_timeline_text_preemption(preempting):
    assert viz.timeline_text(preempting.trace) == (
        "step   0\n"
        "       0123456789\n"
        "seq 0  PDDDDDDF    prefill 7@0\n"
        "seq 1  PDDDDDX.PF  prefill 7@0 13@8\n"
        "P prefill  D decode  F finished  X preempted  . waiting  - not scheduled")


def test_timeline_text_chunked_prefill(chunked):
    assert viz.timeline_text(chunked.trace) == (
        "step   0\n"
        "       012345\n"
        "seq 0  PDF     prefill 3@0\n"
        "seq 1  PPPPDF  prefill 5@0 7@1 7@2 1@3\n"
        "seq 2  ...PDF  prefill 2@3\n"
        "P prefill  D decode  F finished  X preempted  . waiting  - not scheduled")


def test_timeline_cells_idle_and_vanished_sequences():
    """Hand-made trace: seq 1 holds blocks but gets no tokens in step 1; seq 2 is aborted."""
    trace = [
        StepTrace(0, prefill={0: 8, 1: 8}, waiting=[2]),
        StepTrace(1, decode=[0], waiting=[2]),
        StepTrace(2, decode=[0, 1], finished=[0]),
        StepTrace(3, decode=[1], finished=[1]),
    ]
    assert viz.timeline_cells(trace) == {
        0: [("prefill", 8), ("decode", 0), ("finished", 0), (None, 0)],
        1: [("prefill", 8), ("idle", 0), ("decode", 0), ("finished", 0)],
        2: [("waiting", 0), ("waiting", 0), (None, 0), (None, 0)],
    }
    assert viz.timeline_text(trace).splitlines()[2:5] == [
        "seq 0  PDF   prefill 8@0", "seq 1  P-DF  prefill 8@0", "seq 2  ..",
    ]


def test_draw_timeline(preempting):
    trace = preempting.trace
    fig = viz.draw_timeline(trace)
    cells = viz.timeline_cells(trace)
    filled = sum(state is not None for row in cells.values() for state, _ in row)
    assert len(by_gid(fig, "cell-")) == filled == 8 + 10
    assert legend_labels(fig) == ["prefill chunk (tokens)", "decode", "finished", "preempted",
                                  "waiting"]
    cell = next(p for p in by_gid(fig, "cell-6-1"))
    assert cell.get_facecolor()[:3] == pytest.approx(_rgb(TIMELINE_COLORS["preempted"]))
    chunk_labels = sorted(t.get_text() for t in fig.axes[0].texts)
    assert chunk_labels == ["13", "7", "7"]


def test_draw_kv_usage_and_combined(chunked):
    trace = chunked.trace
    fig = viz.draw_kv_usage(trace)
    assert legend_labels(fig) == ["used", "free (incl. evictable)", "in prefix cache"]
    cached_line = fig.axes[0].lines[0]
    assert list(cached_line.get_ydata()) == [s.blocks_cached for s in trace]
    both = viz.draw_scheduler_trace(trace)
    assert len(both.axes) == 2
    assert len(by_gid(both, "cell-")) == sum(
        state is not None for row in viz.timeline_cells(trace).values() for state, _ in row)


# ---- stats ----


def test_stats_table_text_and_figure():
    runs = {"hash": {"hit_rate": 0.25, "steps": 12}, "radix": {"hit_rate": 0.5, "steps": 10}}
    assert viz.stats_table_text(runs, ["hit_rate", "steps"]) == (
        "           hash  radix\n"
        "hit_rate  0.250  0.500\n"
        "steps        12     10")
    fig = viz.draw_stats(runs, ["hit_rate", "steps"])
    assert [ax.get_title() for ax in fig.axes] == ["hit_rate", "steps"]
    assert [len(ax.patches) for ax in fig.axes] == [2, 2]


# ---- widgets ----


def test_scheduler_stepper_steps_and_runs_to_end(capsys):
    cfg = EngineConfig(max_num_seqs=4, max_num_batched_tokens=16, max_model_len=32,
                       kvcache_block_size=4, num_kvcache_blocks=12)
    sched = Scheduler(cfg, trace=True)
    for i in range(3):
        sched.add(Sequence(list(range(1, 6 + i)), params(3), seq_id=i))
    stepper = viz.SchedulerStepper(sched, token_fn)
    assert sched.num_steps == 0 and len(stepper.figures) == 1  # pool only, empty trace
    stepper.step_button.click()
    assert sched.num_steps == 1
    assert stepper.status.value.startswith("<code>step   0 | prefill 0:5 1:6 2:5")
    assert len(stepper.figures) == 2
    assert len(by_gid(stepper.figures[0], "block-")) == 12
    stepper.run_button.click()
    assert not sched.has_unfinished()
    assert stepper.step_button.disabled and stepper.run_button.disabled
    assert "finished 3" in stepper.status.value
    steps = sched.num_steps
    stepper.step()  # nothing left: no new step
    assert sched.num_steps == steps


def _rgb(color: str) -> tuple[float, float, float]:
    return tuple(int(color[i : i + 2], 16) / 255 for i in (1, 3, 5))
