"""minillm.trace and minillm.viz.dashboard: a recorded step is the step the engine ran, a trace
survives JSON, the dashboard draws during real generation, replays, and rations its redraws.

Real generation runs on a tiny random checkpoint (tests/tiny.py) with a small KV pool, so that
chunked prefill, prefix-cache hits, preemption and eviction all happen in a few dozen steps.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from matplotlib.figure import Figure

from minillm import LLM, SamplingParams, viz
from minillm.config import EngineConfig
from minillm.scheduler import Scheduler
from minillm.simulate import Workload, step
from minillm.trace import Trace, TraceRecorder, TraceStep
from minillm.viz.dashboard import Throttle
from tests.tiny import make_checkpoint

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("qwen3")), "qwen3")


@pytest.fixture(scope="module")
def prompts():
    gen = torch.Generator().manual_seed(0)
    system = torch.randint(0, 384, (13,), generator=gen).tolist()  # a shared prefix
    tails = [torch.randint(0, 384, (n,), generator=gen).tolist() for n in (3, 9, 30, 1, 17, 5)]
    return [system + t for t in tails]


def make_llm(checkpoint, **kw) -> LLM:
    args = dict(device="cpu", dtype="float32", kvcache_block_size=4, max_model_len=64,
                num_kvcache_blocks=24, max_num_seqs=4, max_num_batched_tokens=24)
    args.update(kw)
    return LLM(checkpoint, **args)


class Truth:
    """An engine observer, registered after the recorder: what each step really was."""

    def __init__(self, engine) -> None:
        self.steps: list[dict] = []
        engine.step_observers.append(self)

    def __call__(self, engine, batch, outputs, seconds) -> None:
        s, bm = engine.scheduler, engine.scheduler.block_manager
        self.steps.append({
            "step": batch.step,
            "tokens": dict(zip([q.seq_id for q in batch.seqs], batch.num_new_tokens)),
            "sampled": batch.num_sampled,
            "running": [q.seq_id for q in s.running],
            "waiting": [q.seq_id for q in s.waiting],
            "tables": {q.seq_id: list(q.block_table) for q in s.running},
            "states": [bm.block_state(b) for b in range(bm.num_blocks)],
            "evicted": bm.cache.num_evicted_blocks,
        })


@pytest.fixture(scope="module")
def recorded(checkpoint, prompts):
    """Two rounds of generation under one recorder: the second round evicts and preempts."""
    llm = make_llm(checkpoint)
    recorder = Trace.record(llm)
    truth = Truth(llm.engine)
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    outs += llm.generate([p[::-1] for p in prompts], GREEDY, use_tqdm=False)
    trace = recorder.detach()
    llm.engine.step_observers.remove(truth)
    return llm, trace, truth, outs


# ---- the trace ----


def test_trace_steps_are_the_engines_steps(recorded):
    llm, trace, truth, outs = recorded
    assert len(trace) == len(truth.steps) == llm.stats()["steps"]
    for t, real in zip(trace, truth.steps, strict=True):
        assert t.step == real["step"]
        tokens = dict(t.prefill) | {sid: 1 for sid in t.decode}
        assert tokens == real["tokens"]
        assert t.num_tokens == sum(real["tokens"].values()) <= t.budget == 24
        assert t.sampled == real["sampled"]
        assert t.running == real["running"] and t.waiting == real["waiting"]
        assert t.block_tables == real["tables"]
        assert [t.block_state(b) for b in range(24)] == real["states"]
        assert t.blocks_used == sum(s in ("used", "cached") for s in real["states"])
    stats = llm.stats()
    last = trace[-1]
    assert last.generated_tokens == sum(t.sampled for t in trace) == stats["generated_tokens"]
    assert last.generated_tokens == sum(len(o.token_ids) for o in outs) == 12 * 12
    assert last.prefill_tokens == stats["prefill_tokens"]
    assert last.hit_tokens == stats["prefix_cache_hit_tokens"] > 0
    assert last.hit_rate == pytest.approx(stats["prefix_cache_hit_rate"])
    assert sum(len(t.preempted) for t in trace) == stats["preemptions"] > 0
    assert last.evicted_blocks == stats["kv_blocks_evicted"] > 0
    assert all(t.seconds > 0 for t in trace)
    assert [t.time for t in trace] == sorted(t.time for t in trace)


def test_evicted_blocks_left_the_cache(recorded):
    _, trace, truth, _ = recorded
    for prev, t, real_prev, real in zip(trace, trace[1:], truth.steps, truth.steps[1:]):
        assert len(t.evicted) <= t.evicted_blocks - prev.evicted_blocks
        for b in t.evicted:
            assert real_prev["states"][b] in ("cached", "evictable")
            assert real["states"][b] in ("free", "used")
    assert any(t.evicted for t in trace)


def test_json_round_trip(recorded, tmp_path):
    _, trace, _, _ = recorded
    path = tmp_path / "run.json"
    trace.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == 1 and data["config"]["num_blocks"] == 24
    loaded = Trace.load(path)
    assert loaded == trace
    assert isinstance(next(iter(loaded[0].prefill)), int)
    assert loaded.to_text() == trace.to_text()
    data["format"] = 99
    with pytest.raises(ValueError, match="format=99 is invalid"):
        Trace.from_dict(data)


def test_recorder_on_a_scheduler_matches_its_own_trace():
    config = EngineConfig(max_num_seqs=4, max_num_batched_tokens=48, max_model_len=96,
                          kvcache_block_size=4, num_kvcache_blocks=24)
    sched = Scheduler(config, trace=True)  # the scheduler keeps its own trace too
    for seq in Workload(num_requests=8, prompt_len=(8, 32), output_len=(4, 20), seed=1).make():
        sched.add(seq)
    recorder = TraceRecorder(sched).attach()
    while sched.has_unfinished():
        step(sched)
        recorder.capture()
    trace = recorder.detach()
    assert trace.step_traces() == sched.trace  # detaching left the scheduler's own trace on
    assert sum(t.sampled for t in trace) == sched.num_generated_tokens
    assert any(t.preempted for t in trace)
    text = viz.dashboard_text(trace, 3, timings=False)
    assert text.splitlines()[0] == (f"step 3 (4 of {sched.num_steps} recorded): 4 running, "
                                    f"{len(sched.trace[3].waiting)} waiting")


def test_recorder_leaves_the_engine_as_it_was(checkpoint, prompts):
    llm = make_llm(checkpoint)
    engine = llm.engine
    with Trace.record(llm, record_pool=False) as trace:
        assert engine.scheduler.trace == [] and len(engine.step_observers) == 1
        llm.generate(prompts[:2], GREEDY, use_tqdm=False)
        assert engine.scheduler.trace == []  # drained every step
    assert engine.scheduler.trace is None and engine.step_observers == []
    assert len(trace) > 0 and trace[0].pool is None
    with pytest.raises(ValueError, match="record_pool=False"):
        trace[0].block_state(0)


# ---- drawing ----


def test_text_and_static_figure(recorded):
    _, trace, _, _ = recorded
    i = next(k for k, t in enumerate(trace) if t.preempted)
    t = trace[i]
    text = viz.dashboard_text(trace, i, timings=False)
    lines = text.splitlines()
    assert lines[0] == f"step {t.step} ({i + 1} of {len(trace)} recorded): " \
                       f"{len(t.running)} running, {len(t.waiting)} waiting"
    assert f"preempted {t.preempted}" in lines[2]
    assert "tokens/s" not in text and "tokens/s" in viz.dashboard_text(trace, i)
    view = t.pool_view(24, 4)
    assert any(text.endswith("\n" + viz.block_pool_text(view, view.seqs, cols=cols))
               for cols in (16, 8, 4))
    assert max(map(len, text.splitlines())) <= 100
    fig = viz.draw_dashboard(trace, i)
    assert isinstance(fig, Figure) and len(fig.axes) == 5  # pool, queues, batches, rates (+twin)
    assert any(im.get_gid() == "pool" for ax in fig.axes for im in ax.images)
    queue_bars = {p.get_gid() for ax in fig.axes for p in ax.patches
                  if (p.get_gid() or "").startswith("queue-")}
    assert queue_bars == {f"queue-{sid}" for sid in t.running + t.waiting}
    html = viz.dashboard_html(trace, i)
    assert html.count('title="block ') == 24
    assert html.count(" evicted this step\"") == len(t.evicted)
    with pytest.raises(ValueError, match="step=999 is invalid"):
        viz.draw_dashboard(trace, 999)


# ---- the widget ----


def test_live_dashboard_draws_every_step_when_unthrottled(checkpoint, prompts):
    llm = make_llm(checkpoint)
    dash = viz.Dashboard(llm, max_fps=1e9, max_overhead=1.0)
    frames = []
    dash.view.observe(lambda change: frames.append(change["new"]), names="value")
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    trace = dash.detach()
    assert dash.num_redraws == len(trace) == len(frames) == llm.stats()["steps"]
    assert all("<b>live</b>" in f for f in frames[:-1]) and "<b>done</b>" in frames[-1]
    assert f"step {trace[-1].step} ({len(trace)} of {len(trace)})" in frames[-1]
    assert dash.current == len(trace) - 1 and not dash.live
    assert llm.engine.step_observers == [] and llm.engine.scheduler.trace is None
    assert [len(o.token_ids) for o in outs] == [12] * len(prompts)
    assert isinstance(dash.figure(), Figure)


def test_live_dashboard_throttles_redraws(checkpoint, prompts):
    llm = make_llm(checkpoint)
    with viz.Dashboard(llm, max_fps=2.0) as dash:
        llm.generate(prompts, GREEDY, use_tqdm=False)
        elapsed = dash.trace[-1].time
    steps = len(dash.trace)
    assert steps > 20
    assert 2 <= dash.num_redraws <= 2.0 * elapsed + 2  # a first frame, the last, 2/s between
    assert dash.current == steps - 1  # the last step is always drawn
    assert dash.throttle.busy < 0.05 * elapsed + 0.05


def test_generate_show_true(checkpoint, prompts, capsys):
    llm = make_llm(checkpoint)
    shown = llm.generate(prompts[:3], GREEDY, use_tqdm=False, show=True)
    plain = llm.generate(prompts[:3], GREEDY, use_tqdm=False)
    assert [o.token_ids for o in shown] == [o.token_ids for o in plain]
    assert llm.engine.step_observers == []


def test_replay_slider_moves_through_steps(recorded):
    _, trace, _, _ = recorded
    dash = viz.Dashboard.replay(trace)
    assert dash.current == len(trace) - 1 and dash.slider.max == len(trace) - 1
    seen = []
    for k in (0, 5, len(trace) // 2, len(trace) - 1):
        dash.slider.value = k
        assert dash.current == k
        assert f"step {trace[k].step} ({k + 1} of {len(trace)})" in dash.view.value
        seen.append(dash.view.value)
    assert len(set(seen)) == 4
    dash.show_step(3)
    assert dash.slider.value == 3 and "<b>replay</b>" in dash.view.value
    assert isinstance(dash.figure(), Figure)
    with pytest.raises(ValueError, match="exactly one"):
        viz.Dashboard()
    with pytest.raises(ValueError, match="no steps"):
        viz.Dashboard.replay(Trace())


def test_throttle_bounds_rate_and_busy_share():
    now = [0.0]
    fast = Throttle(max_per_second=4.0, max_busy=0.05, clock=lambda: now[0])
    slow = Throttle(max_per_second=4.0, max_busy=0.05, clock=lambda: now[0])
    for _ in range(1000):  # 10 s of 10 ms steps
        if fast.ready():
            fast.done(now[0], 0.001)  # cheap frames: the rate limit binds
        if slow.ready():
            slow.done(now[0], 0.1)  # slow frames: the busy share binds (one per 2 s)
        now[0] += 0.01
    assert 39 <= fast.count <= 4.0 * 10 + 1  # float steps may land a hair early or late
    assert slow.count == 5 and slow.busy / 10.0 <= 0.05
    with pytest.raises(ValueError, match="max_busy=0 is invalid"):
        Throttle(max_busy=0)


# ---- optional dependencies ----


def test_missing_widgets_say_what_to_install(monkeypatch, recorded):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'minillm\[notebooks\]'"):
        viz.Dashboard.replay(recorded[1])


def test_trace_module_imports_no_plotting_library():
    code = ("import sys, minillm.trace, minillm.viz.dashboard\n"
            "print([m for m in ('matplotlib', 'ipywidgets', 'IPython', 'torch') "
            "if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_trace_step_from_dict_fills_defaults():
    step = TraceStep.from_dict({"step": 4, "prefill": {"2": 7}, "decode": [1]})
    assert step.prefill == {2: 7} and step.num_tokens == 8 and step.hit_rate == 0.0


def test_recording_runs_the_engine_serially_and_gives_overlap_back(checkpoint, prompts):
    """With overlap a step is reported after the next is scheduled; a recording wants each
    step whole, so the recorder turns overlap off while attached (same tokens either way)."""
    llm = make_llm(checkpoint, overlap_schedule=True)
    free = llm.generate(prompts, GREEDY, use_tqdm=False)
    recorder = Trace.record(llm)
    assert llm.engine.overlap is False
    recorded = llm.generate(prompts, GREEDY, use_tqdm=False)
    trace = recorder.detach()
    assert llm.engine.overlap is True
    assert sum(len(t.finished) for t in trace) == len(prompts)  # every finish is in the trace
    assert [o.token_ids for o in recorded] == [o.token_ids for o in free]
