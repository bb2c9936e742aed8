"""`minillm.scheduler`, driven by a fake model that reads its KV back from a shadow cache.

`tests/fake_model.py` checks every step that budgets hold and, at the end, that no block leaks.
Here: FIFO admission, preemption, chunked prefill coverage, stop conditions, abort, the trace,
and the key property: scheduling choices (budgets, chunking, pool size, prefix cache, batch
size) never change what is generated. Outputs are compared with `reference_completion`, which
generates each request alone with no cache at all.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.config import SamplingParams
from minillm.kvcache import BlockManager
from minillm.scheduler import Scheduler
from minillm.sequence import Sequence, SequenceStatus
from tests.fake_model import (
    FakeModel,
    Request,
    Run,
    assert_no_leaks,
    engine_config,
    make_workload,
    reference_completion,
    run_workload,
    successor_next_token,
)


def expected_outputs(run: Run) -> list[list[int]]:
    cfg = run.scheduler.config
    return [reference_completion(s.prompt_token_ids, s.params, cfg.max_model_len,
                                 cfg.eos_token_ids, run.model.next_token)[0] for s in run.seqs]


def lives(run: Run, seq_id: int):
    """A sequence's batch entries, split at its preemptions: one list per (re)computation."""
    out = [[]]
    for rec in run.records:
        out[-1].extend(e for e in rec.entries if e.seq_id == seq_id)
        if seq_id in rec.preempted:
            out.append([])
    return out


# --------------------------------------------------------------------------------------------
# The key property: the same outputs whatever the scheduling
# --------------------------------------------------------------------------------------------

CONFIGS = {  # name: (engine config overrides, what the run must show to count)
    "one-at-a-time": (dict(max_num_seqs=1, enable_prefix_caching=False,
                           enable_chunked_prefill=False, max_num_batched_tokens=64,
                           num_kvcache_blocks=400), None),
    "wide": (dict(max_num_seqs=8, max_num_batched_tokens=64, num_kvcache_blocks=400), "hits"),
    "no-chunking": (dict(max_num_seqs=8, enable_chunked_prefill=False,
                         max_num_batched_tokens=64, num_kvcache_blocks=400), None),
    "budget-8": (dict(max_num_seqs=8, max_num_batched_tokens=8), "chunked"),
    "budget-13": (dict(max_num_seqs=4, max_num_batched_tokens=13), "chunked"),
    "budget-13-hash": (dict(max_num_seqs=4, max_num_batched_tokens=13, prefix_cache="hash"),
                       "chunked"),
    "budget-32-no-cache": (dict(max_num_seqs=4, max_num_batched_tokens=32,
                                enable_prefix_caching=False), "chunked"),
    "pool-16-radix": (dict(max_num_seqs=8, num_kvcache_blocks=16), "preempted"),
    "pool-16-hash": (dict(max_num_seqs=8, num_kvcache_blocks=16, prefix_cache="hash"),
                     "preempted"),
    "pool-16-no-cache": (dict(max_num_seqs=8, num_kvcache_blocks=16,
                              enable_prefix_caching=False), "preempted"),
    "pool-20-budget-9": (dict(max_num_seqs=6, num_kvcache_blocks=20, max_num_batched_tokens=9),
                         "preempted"),
    "pool-24-no-chunking": (dict(max_num_seqs=8, num_kvcache_blocks=24,
                                 enable_chunked_prefill=False, max_num_batched_tokens=64),
                            "preempted"),
    "radix-wide": (dict(max_num_seqs=8, prefix_cache="radix", num_kvcache_blocks=60), "hits"),
    "hash-wide": (dict(max_num_seqs=8, prefix_cache="hash", num_kvcache_blocks=60), "hits"),
    "block-1": (dict(kvcache_block_size=1, num_kvcache_blocks=80, max_num_seqs=4,
                     max_num_batched_tokens=16), "preempted"),
    "block-16": (dict(kvcache_block_size=16, num_kvcache_blocks=5, max_num_seqs=4), "hits"),
}


@pytest.fixture(scope="module")
def workload() -> list[Request]:
    return make_workload(seed=1, num_requests=16, max_prompt=50, max_tokens=24, spread=12)


@pytest.fixture(scope="module")
def one_at_a_time(workload) -> Run:
    return run_workload(engine_config(**CONFIGS["one-at-a-time"][0]), workload)


def test_fake_model_matches_the_naive_reference(one_at_a_time):
    run = one_at_a_time
    assert run.outputs == expected_outputs(run)
    assert run.scheduler.num_preemptions == 0
    assert any(s.num_tokens == 64 for s in run.seqs)  # some stop at max_model_len
    assert len({tuple(o) for o in run.outputs}) == len(run.outputs)  # outputs differ


@pytest.mark.parametrize("name", CONFIGS)
def test_scheduling_never_changes_outputs(name, workload, one_at_a_time):
    overrides, shows = CONFIGS[name]
    run = run_workload(engine_config(**overrides), workload)
    assert run.outputs == one_at_a_time.outputs
    assert run.finish_reasons == one_at_a_time.finish_reasons
    stats = run.scheduler.stats()
    assert stats["finished"] == len(workload) and stats["running"] == stats["waiting"] == 0
    assert stats["generated_tokens"] == sum(len(o) for o in run.outputs)
    # Each configuration must really exercise what it is here for.
    if shows == "preempted":
        assert stats["preemptions"] > 0
        assert any(s.num_preemptions for s in run.seqs)
    if shows == "hits":
        assert stats["prefix_cache_hit_tokens"] > 0
    if shows == "chunked":
        assert any(len([e for e in life if e.prefill]) > 1
                   for s in run.seqs for life in lives(run, s.seq_id))


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(block_size=st.sampled_from([1, 2, 4, 8]), max_num_seqs=st.integers(1, 8),
       extra_budget=st.integers(0, 40), chunked=st.booleans(), extra_blocks=st.integers(0, 30),
       cache=st.sampled_from([None, "radix", "hash"]), seed=st.integers(0, 1000),
       spread=st.integers(0, 10))
def test_random_configurations_generate_the_reference_outputs(
        block_size, max_num_seqs, extra_budget, chunked, extra_blocks, cache, seed, spread):
    max_model_len = 48
    budget = max(max_num_seqs, 2) + extra_budget
    if not chunked:
        budget = max(budget, max_model_len)
    cfg = engine_config(
        kvcache_block_size=block_size, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=budget, enable_chunked_prefill=chunked,
        num_kvcache_blocks=-(-max_model_len // block_size) + extra_blocks,
        enable_prefix_caching=cache is not None, prefix_cache=cache or "radix")
    workload = make_workload(seed, num_requests=8, max_prompt=36, max_tokens=16, spread=spread)
    run = run_workload(cfg, workload)
    assert run.outputs == expected_outputs(run)


# --------------------------------------------------------------------------------------------
# Budgets, fairness, preemption, chunked prefill
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["budget-8", "budget-13", "pool-16-radix", "pool-20-budget-9",
                                  "no-chunking", "block-1"])
def test_every_running_sequence_runs_every_step(name, workload):
    """Running sequences go first, oldest first, and the budget covers one token each: a
    running sequence that is not preempted is never skipped (decodes never stall)."""
    run = run_workload(engine_config(**CONFIGS[name][0]), workload)
    for rec in run.records:
        scheduled = [e.seq_id for e in rec.entries]
        kept = [i for i in rec.running_before if i not in rec.preempted]
        assert scheduled[: len(kept)] == kept  # in running order, before any admission
        partial = [e for e in rec.entries if e.prefill and not e.sampled]
        assert len(partial) <= 1, "at most one partial prefill chunk per step"
        if partial:
            assert rec.entries[-1] == partial[0]  # and it is the newest


def test_first_admission_is_in_arrival_order(workload):
    run = run_workload(engine_config(**CONFIGS["pool-20-budget-9"][0]), workload)
    first_seen: dict[int, tuple[int, int]] = {}
    for rec in run.records:
        for i, e in enumerate(rec.entries):
            first_seen.setdefault(e.seq_id, (rec.step, i))
    order = sorted(first_seen, key=first_seen.__getitem__)
    assert order == [s.seq_id for s in run.seqs]
    times = [s.first_scheduled_time for s in run.seqs]
    assert times == sorted(times)


@pytest.mark.parametrize("name", ["pool-16-radix", "pool-20-budget-9", "budget-13",
                                  "pool-24-no-chunking"])
def test_admission_is_strict_fifo_and_preempted_go_to_the_front(name, workload):
    run = run_workload(engine_config(**CONFIGS[name][0]), workload)
    for rec in run.records:
        admitted = [e.seq_id for e in rec.entries if e.seq_id in rec.waiting_before]
        # Only the head of the queue is admitted, in order: nobody overtakes.
        assert admitted == rec.waiting_before[: len(admitted)]
        # The rest keep their order (preempted sequences, if any, go in front of them).
        assert rec.waiting_after[len(rec.preempted):] == rec.waiting_before[len(admitted):]
        if rec.preempted:
            k = len(rec.preempted)
            # The newest running sequences are the victims...
            assert set(rec.running_before[-k:]) == rec.preempted
            # ...and they wait at the front, oldest first, ahead of everyone else.
            assert rec.waiting_after[:k] == rec.running_before[-k:]
            assert rec.waiting_after[k:] == rec.waiting_before
            assert not admitted, "no admissions in a step that preempted"


def test_preempted_sequences_resume_and_finish_as_without_preemption(workload, one_at_a_time):
    run = run_workload(engine_config(max_num_seqs=8, num_kvcache_blocks=16,
                                     max_num_batched_tokens=24, prefix_cache="hash"), workload)
    preempted = [s for s in run.seqs if s.num_preemptions]
    assert len(preempted) >= 2
    assert run.scheduler.num_preemptions == sum(s.num_preemptions for s in run.seqs)
    for seq in preempted:
        i = run.seqs.index(seq)
        assert seq.finish_reason == one_at_a_time.seqs[i].finish_reason
        assert seq.completion_token_ids == one_at_a_time.outputs[i]
        # after each preemption the sequence was scheduled again
        assert len(lives(run, seq.seq_id)) == seq.num_preemptions + 1
        assert all(lives(run, seq.seq_id))


@pytest.mark.parametrize("name", ["budget-8", "budget-13", "budget-32-no-cache",
                                  "pool-16-no-cache", "pool-20-budget-9", "block-1"])
def test_chunked_prefill_covers_every_token_exactly_once(name, workload):
    run = run_workload(engine_config(**CONFIGS[name][0]), workload)
    for seq in run.seqs:
        seq_lives = lives(run, seq.seq_id)
        for k, life in enumerate(seq_lives):
            assert life, "a sequence ran before each preemption and after the last"
            first = life[0]
            assert first.start == first.cached  # starts right after its cached prefix
            assert first.cached % run.scheduler.config.kvcache_block_size == 0
            if not run.scheduler.config.enable_prefix_caching:
                assert first.cached == 0
            # contiguous chunks: each starts where the previous ended (no gap, no overlap)
            for prev, cur in pairwise(life):
                assert cur.start == prev.start + prev.n
            written = [p for e in life for p in range(e.start, e.start + e.n)]
            assert written == list(range(first.cached, life[-1].start + life[-1].n))
            # the prompt (and, after a preemption, the completion so far) is covered before
            # anything is sampled again; only the last sampled token is never computed
            if k == len(seq_lives) - 1:
                assert written[-1] == seq.num_tokens - 2
                prompt = [p for p in written if p < seq.num_prompt_tokens]
                assert prompt == list(range(first.cached, seq.num_prompt_tokens))
    if not run.scheduler.config.enable_prefix_caching:
        total = sum(e.n for rec in run.records for e in rec.entries if e.prefill)
        assert total >= sum(s.num_prompt_tokens for s in run.seqs)


def test_a_long_prompt_is_chunked_while_others_decode():
    cfg = engine_config(max_num_seqs=4, max_num_batched_tokens=8, max_model_len=64)
    params = SamplingParams(max_tokens=12)
    reqs = [Request([1, 2, 3], params), Request([4, 5], params),
            Request(list(range(40)), params, arrival_step=3)]
    run = run_workload(cfg, reqs)
    long_id = run.seqs[2].seq_id
    chunks = [(rec, e) for rec in run.records for e in rec.entries
              if e.seq_id == long_id and e.prefill]
    assert [e.n for _, e in chunks] == [6] * 6 + [4]  # 8 - 2 decodes each step; the rest
    for rec, _ in chunks:
        decodes = [e.seq_id for e in rec.entries if not e.prefill]
        assert decodes == [run.seqs[0].seq_id, run.seqs[1].seq_id]
    assert run.outputs == expected_outputs(run)


def test_without_chunked_prefill_a_prompt_waits_for_a_whole_step():
    cfg = engine_config(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64,
                        enable_chunked_prefill=False)
    reqs = [Request([1] * 10, SamplingParams(max_tokens=30)),
            Request([2] * 10, SamplingParams(max_tokens=8)),
            Request(list(range(63)), SamplingParams(max_tokens=1), arrival_step=2)]
    run = run_workload(cfg, reqs)
    long_id, short_id = run.seqs[2].seq_id, run.seqs[1].seq_id
    (admitted,) = [rec for rec in run.records if long_id in [e.seq_id for e in rec.entries]]
    (entry,) = [e for e in admitted.entries if e.seq_id == long_id]
    assert entry.n == 63 and entry.sampled  # the whole prompt in one step, never a chunk
    assert len(admitted.entries) == 2  # beside the one decode left: 1 + 63 = 64
    # While two sequences decoded, 62 tokens of budget were left: it waited, not chunked.
    waited = [rec for rec in run.records if long_id in rec.waiting_before]
    assert len(waited) > 1
    assert all(short_id in rec.running_before for rec in waited[:-1])
    assert run.outputs == expected_outputs(run)


# --------------------------------------------------------------------------------------------
# Prefix caching
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["radix", "hash"])
def test_prefix_caching_reduces_prefill(kind, workload):
    base = dict(max_num_seqs=2, max_num_batched_tokens=16, num_kvcache_blocks=80)
    without = run_workload(engine_config(**base, enable_prefix_caching=False), workload)
    cached = run_workload(engine_config(**base, prefix_cache=kind), workload)
    s0, s1 = without.scheduler.stats(), cached.scheduler.stats()
    assert s0["prefix_cache_hit_tokens"] == 0 and s0["prefix_cache_hit_rate"] == 0
    assert s1["prefix_cache_hit_tokens"] > 0 and 0 < s1["prefix_cache_hit_rate"] < 1
    assert s1["prefill_tokens"] == s0["prefill_tokens"] - s1["prefix_cache_hit_tokens"]
    assert s1["kv_blocks_cached"] > 0 and s1["kv_blocks_used"] == 0
    assert cached.outputs == without.outputs
    assert sum(s.num_cached_tokens for s in cached.seqs) > 0


def test_identical_prompts_share_blocks_while_running():
    cfg = engine_config(max_num_seqs=4, max_num_batched_tokens=64, num_kvcache_blocks=40)
    prompt = list(range(10, 30))
    reqs = [Request(prompt, SamplingParams(max_tokens=8))] + [
        Request(prompt, SamplingParams(max_tokens=8), arrival_step=2) for _ in range(3)]
    run = run_workload(cfg, reqs)
    assert [s.num_cached_tokens for s in run.seqs] == [0, 16, 16, 16]
    assert run.outputs == [run.outputs[0]] * 4


# --------------------------------------------------------------------------------------------
# Stop conditions, abort, bad input
# --------------------------------------------------------------------------------------------


def serve(prompts_params, next_token=successor_next_token, **cfg_kw):
    cfg = engine_config(**cfg_kw)
    reqs = [Request(p, sp) for p, sp in prompts_params]
    return run_workload(cfg, reqs, next_token=next_token)


def cycle4(tokens, context):  # 0 1 2 3 0 1 2 3 ...
    return (tokens[-1] + 1) % 4


@pytest.mark.parametrize("params, eos, completion, reason", [
    (SamplingParams(max_tokens=20), (3,), [2, 3], "stop"),
    (SamplingParams(max_tokens=20, ignore_eos=True), (3,), [2, 3, 0, 1, 2, 3, 0, 1] * 2 +
     [2, 3, 0, 1], "length"),
    (SamplingParams(max_tokens=20), (), [2, 3, 0, 1] * 5, "length"),
    (SamplingParams(max_tokens=20, min_tokens=2), (3,), [2, 3, 0, 1, 2, 3], "stop"),
    (SamplingParams(max_tokens=20, min_tokens=1), (3,), [2, 3], "stop"),
    (SamplingParams(max_tokens=20, min_tokens=6), (3,), [2, 3, 0, 1] * 2 + [2, 3], "stop"),
    (SamplingParams(max_tokens=20, stop_token_ids=[0]), (), [2, 3, 0], "stop"),
    (SamplingParams(max_tokens=20, stop_token_ids=[0], ignore_eos=True), (3,), [2, 3, 0],
     "stop"),  # ignore_eos does not ignore stop_token_ids
    (SamplingParams(max_tokens=20, stop_token_ids=[0], min_tokens=3), (), [2, 3, 0, 1, 2, 3, 0],
     "stop"),
    (SamplingParams(max_tokens=2), (3,), [2, 3], "stop"),  # eos on the last allowed token
    (SamplingParams(max_tokens=1), (3,), [2], "length"),
    (SamplingParams(max_tokens=5), (7,), [2, 3, 0, 1, 2], "length"),
])
def test_stop_conditions(params, eos, completion, reason):
    run = serve([([1], params)], next_token=cycle4, eos_token_ids=eos)
    (seq,) = run.seqs
    assert seq.completion_token_ids == completion
    assert seq.finish_reason == reason
    assert run.outputs == expected_outputs(run)


def test_max_model_len_ends_a_request():
    run = serve([(list(range(10)), SamplingParams(max_tokens=64))], max_model_len=16,
                num_kvcache_blocks=4, max_num_batched_tokens=16)
    (seq,) = run.seqs
    assert seq.num_tokens == 16 and seq.completion_token_ids == list(range(10, 16))
    assert seq.finish_reason == "length"


def test_prompt_too_long_for_max_model_len_is_refused():
    sched = Scheduler(engine_config(max_model_len=16, num_kvcache_blocks=4,
                                    max_num_batched_tokens=16))
    with pytest.raises(ValueError, match="max_model_len=16"):
        sched.add(Sequence(list(range(16))))
    with pytest.raises(ValueError, match="max_model_len=16"):
        sched.add(Sequence(list(range(40))))
    assert not sched.has_unfinished()
    sched.add(Sequence(list(range(15))))  # room for one generated token
    assert len(sched.waiting) == 1


def test_a_pool_smaller_than_one_sequence_is_refused():
    cfg = engine_config(max_model_len=64)  # 16 blocks of 4
    with pytest.raises(ValueError, match="num_kvcache_blocks=15"):
        Scheduler(cfg, BlockManager(15, 4))
    Scheduler(cfg, BlockManager(16, 4))


def test_postprocess_wants_one_token_per_sampled_sequence():
    sched = Scheduler(engine_config())
    sched.add(Sequence([1, 2, 3]))
    batch = sched.schedule()
    assert batch.num_sampled == 1
    with pytest.raises(ValueError, match="sampled_token_ids has 2 tokens"):
        sched.postprocess(batch, [5, 6])
    assert sched.postprocess(batch, [5]) == []


def test_abort_frees_blocks_wherever_the_request_is():
    cfg = engine_config(max_num_seqs=2, max_num_batched_tokens=32, num_kvcache_blocks=40)
    sched = Scheduler(cfg, trace=True)
    bm = sched.block_manager
    model = FakeModel(bm)
    seqs = [Sequence(list(range(i, i + 9)), SamplingParams(max_tokens=50)) for i in range(4)]
    for s in seqs:
        sched.add(s)
    batch = sched.schedule()
    sched.postprocess(batch, model.step(batch))
    running, waiting = seqs[0], seqs[3]
    assert running.status is SequenceStatus.RUNNING and waiting.status is SequenceStatus.WAITING
    used = bm.num_used_blocks
    assert sched.abort(running.seq_id) is running
    assert running.finish_reason == "abort" and running.is_finished
    assert running.block_table == [] and bm.num_used_blocks == used - 3
    assert running not in sched.running
    assert sched.abort(waiting.seq_id) is waiting
    assert waiting.finish_reason == "abort" and waiting not in sched.waiting
    assert sched.abort(running.seq_id) is None  # already gone
    assert sched.abort(10**9) is None

    # Aborted while its step runs: the step's result for it is dropped.
    batch = sched.schedule()
    victim = batch.seqs[0]
    tokens = model.step(batch)
    sched.abort(victim.seq_id)
    finished = sched.postprocess(batch, tokens)
    assert victim not in finished and victim.finish_reason == "abort"
    assert victim.num_completion_tokens == 1 and victim.block_table == []
    while sched.has_unfinished():
        batch = sched.schedule()
        sched.postprocess(batch, model.step(batch))
    assert sorted(s.finish_reason for s in seqs) == ["abort", "abort", "abort", "length"]
    assert sched.stats()["finished"] == 4
    assert_no_leaks(bm)


# --------------------------------------------------------------------------------------------
# Trace
# --------------------------------------------------------------------------------------------


def test_trace_is_off_by_default():
    run = run_workload(engine_config(), make_workload(0, num_requests=3))
    assert run.scheduler.trace is None


@pytest.mark.parametrize("name", ["pool-16-radix", "budget-13", "pool-20-budget-9"])
def test_trace_agrees_with_the_batches(name, workload):
    run = run_workload(engine_config(**CONFIGS[name][0]), workload, trace=True)
    trace = run.scheduler.trace
    assert trace is not None and len(trace) == len(run.records)
    bm = run.scheduler.block_manager
    assert trace[-1].blocks_used == bm.num_used_blocks == 0
    assert trace[-1].blocks_free == bm.num_free_blocks == bm.num_blocks
    assert trace[-1].blocks_cached == bm.num_cached_blocks
    saw = set()
    for step, rec in zip(trace, run.records, strict=True):
        assert step.step == rec.step
        prefill = {e.seq_id: e.n for e in rec.entries if e.prefill or e.n > 1}
        decode = [e.seq_id for e in rec.entries if not (e.prefill or e.n > 1)]
        assert step.prefill == prefill
        assert step.decode == decode
        assert set(step.preempted) == rec.preempted
        assert step.finished == rec.finished
        assert step.waiting == rec.waiting_after
        assert step.blocks_used + step.blocks_free == bm.num_blocks
        assert f"step {step.step:3d}" in step.to_text()
        saw |= {k for k in ("prefill", "decode", "preempted", "finished") if getattr(step, k)}
    if name == "pool-16-radix":
        assert saw == {"prefill", "decode", "preempted", "finished"}
    stats = run.scheduler.stats()
    assert sum(len(s.preempted) for s in trace) == stats["preemptions"]
    assert sum(len(s.finished) for s in trace) == stats["finished"] == len(workload)
    decoded = sum(len(s.decode) for s in trace)
    prefilled = sum(sum(s.prefill.values()) for s in trace)
    assert prefilled == stats["prefill_tokens"] and decoded + prefilled == sum(
        e.n for rec in run.records for e in rec.entries)


def test_batch_text_and_step_inputs():
    sched = Scheduler(engine_config(max_num_batched_tokens=6, max_num_seqs=2))
    a, b = Sequence([1, 2, 3]), Sequence(list(range(10)))
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert batch.num_tokens == 6 and batch.sampled == [True, False]
    assert batch.to_text() == (f"Batch(step 0, 6 tokens): seq {a.seq_id}: +3 @ 0, "
                               f"seq {b.seq_id}: ~3 @ 0")
    inputs = batch.step_inputs()
    assert [i.token_ids for i in inputs] == [(1, 2, 3), (0, 1, 2)]
    assert [i.block_table for i in inputs] == [tuple(a.block_table), tuple(b.block_table)]
