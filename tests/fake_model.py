"""A fake model whose "KV cache" is a dict of slots, to drive the block manager and scheduler.

Each slot holds `(token, context)`. The context of position `p` is `mix(context of p-1, token)`,
where the context of `p-1` is READ BACK from the cache through the sequence's block table, the
way attention reads earlier keys and values. So a context stands for real KV: it depends on the
whole prefix, and a block that was shared between different prefixes, overwritten, or read before
it was written gives a different context, hence a different sampled token, from then on.

`run_workload` drives a real `Scheduler` with this model and checks, every step, what must hold
whatever the configuration (budgets, no block leaks at the end). Tests compare its outputs across
configurations and inspect the per-step records it keeps.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import NamedTuple

from minillm.config import EngineConfig, SamplingParams
from minillm.kvcache import BlockManager
from minillm.scheduler import Batch, Scheduler
from minillm.sequence import Sequence, SequenceStatus

VOCAB = 50  # the fake model samples token ids in [0, VOCAB)
_MOD = (1 << 61) - 1  # a Mersenne prime: contexts are a polynomial rolling hash modulo it


def mix(context: int, token: int) -> int:
    """The context after `token`, given the context before it."""
    return (context * 1_000_003 + token + 1) % _MOD


def contexts_of(tokens: Seq[int]) -> list[int]:
    """The contexts a correct cache holds for `tokens` at positions 0..len-1."""
    out, c = [], 0
    for t in tokens:
        c = mix(c, t)
        out.append(c)
    return out


def hashed_next_token(tokens: list[int], context: int) -> int:
    """Default fake model: the next token is a hash of the last position's context."""
    return (context >> 17) % VOCAB


def successor_next_token(tokens: list[int], context: int) -> int:
    """A predictable fake model for stop-condition tests: last token + 1 (mod VOCAB)."""
    return (tokens[-1] + 1) % VOCAB


class ShadowKV:
    """The fake KV cache: slot -> (token, context), slot = block * block_size + offset."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.slots: dict[int, tuple[int, int]] = {}

    def slot(self, block_table: Seq[int], pos: int) -> int:
        bs = self.block_size
        return block_table[pos // bs] * bs + pos % bs

    def read(self, block_table: Seq[int], pos: int) -> tuple[int, int]:
        slot = self.slot(block_table, pos)
        assert slot in self.slots, f"position {pos} (slot {slot}) read before it was written"
        return self.slots[slot]

    def write(self, block_table: Seq[int], start: int, tokens: Seq[int]) -> None:
        """Compute tokens at positions start.. : each reads the previous context back."""
        for j, token in enumerate(tokens):
            pos = start + j
            prev = self.read(block_table, pos - 1)[1] if pos else 0
            self.slots[self.slot(block_table, pos)] = (token, mix(prev, token))

    def read_back(self, block_table: Seq[int], n: int) -> tuple[list[int], list[int]]:
        """Tokens and contexts at positions 0..n-1, read through `block_table`."""
        pairs = [self.read(block_table, p) for p in range(n)]
        return [t for t, _ in pairs], [c for _, c in pairs]

    def check_sequence(self, seq: Sequence) -> None:
        """A sequence's computed positions hold its own tokens, with its own prefix behind them."""
        n = seq.num_computed_tokens
        assert len(seq.block_table) * self.block_size >= n, f"{seq}: table too short"
        tokens, contexts = self.read_back(seq.block_table, n)
        assert tokens == seq.token_ids[:n], f"{seq}: cache holds {tokens}"
        assert contexts == contexts_of(seq.token_ids[:n]), f"{seq}: KV of another prefix"


class FakeModel:
    """Computes a `Batch` against a `ShadowKV` and samples with `next_token(tokens, context)`.

    With `check=True` it also asserts, as it goes, what a correct scheduler and block manager
    guarantee the runner: it only writes blocks this sequence alone holds and that no cache
    claims, its inputs are the sequence's next tokens, and what it reads back is the sequence's.
    """

    def __init__(self, block_manager: BlockManager,
                 next_token: Callable[[list[int], int], int] = hashed_next_token,
                 check: bool = True) -> None:
        self.bm = block_manager
        self.kv = ShadowKV(block_manager.block_size)
        self.next_token = next_token
        self.check = check

    def write(self, seq: Sequence, start: int, tokens: Seq[int]) -> None:
        if self.check:
            bs, cache = self.bm.block_size, self.bm.cache
            for pos in range(start, start + len(tokens)):
                block = seq.block_table[pos // bs]
                assert self.bm.ref_counts[block] == 1, f"{seq} writes shared block {block}"
                assert not (cache and cache.is_cached(block)), f"{seq} writes cached {block}"
        self.kv.write(seq.block_table, start, tokens)

    def step(self, batch: Batch) -> list[int]:
        """Run one step; returns one token per sampled sequence, in batch order."""
        sampled_tokens = []
        for seq, inp, sampled in zip(batch.seqs, batch.step_inputs(), batch.sampled, strict=True):
            start, n = inp.start_pos, len(inp.token_ids)
            if self.check:
                assert start == seq.num_computed_tokens and n >= 1
                assert list(inp.token_ids) == seq.token_ids[start : start + n]
                assert list(inp.block_table) == seq.block_table
            self.write(seq, start, inp.token_ids)
            if sampled:
                end = start + n
                tokens, contexts = self.kv.read_back(inp.block_table, end)
                if self.check:
                    assert tokens == seq.token_ids[:end], f"{seq} reads back {tokens}"
                    assert contexts[-1] == contexts_of(seq.token_ids[:end])[-1], (
                        f"{seq} reads KV computed for another prefix")
                sampled_tokens.append(self.next_token(tokens, contexts[-1]))
        return sampled_tokens


def reference_completion(prompt: Seq[int], params: SamplingParams, max_model_len: int,
                         eos_token_ids: Seq[int] = (),
                         next_token: Callable[[list[int], int], int] = hashed_next_token,
                         ) -> tuple[list[int], str]:
    """What the fake model generates for one prompt, computed naively with no cache at all
    (the trusted reference, as nanochat checks its engine against a plain `generate`).
    Returns the completion and the finish reason."""
    tokens, out, context = list(prompt), [], 0
    for t in prompt:
        context = mix(context, t)
    while True:
        token = next_token(tokens, context)
        context = mix(context, token)
        tokens.append(token)
        out.append(token)
        if len(out) > params.min_tokens and (
                (not params.ignore_eos and token in eos_token_ids)
                or token in (params.stop_token_ids or ())):
            return out, "stop"
        if len(out) >= params.max_tokens or len(tokens) >= max_model_len:
            return out, "length"


# --------------------------------------------------------------------------------------------
# Workloads and a driver for the scheduler
# --------------------------------------------------------------------------------------------


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams
    arrival_step: int = 0  # added just before this step's schedule()


def make_workload(seed: int, num_requests: int = 12, max_prompt: int = 40,
                  max_tokens: int = 20, spread: int = 0) -> list[Request]:
    """Seeded requests whose prompts share a few prefixes (so prefix caching has work to do).

    `spread > 0` makes requests arrive over the first `spread` steps instead of all at once.
    """
    rng = random.Random(seed)
    prefixes = [[], [rng.randrange(VOCAB) for _ in range(9)],
                [rng.randrange(VOCAB) for _ in range(17)]]
    prefixes.append(prefixes[2] + [rng.randrange(VOCAB) for _ in range(6)])  # nested prefix
    out = []
    for _ in range(num_requests):
        prefix = rng.choice(prefixes)
        tail = [rng.randrange(VOCAB) for _ in range(rng.randint(1, max_prompt - len(prefix)))]
        params = SamplingParams(temperature=0.0, max_tokens=rng.randint(1, max_tokens))
        out.append(Request(prefix + tail, params, rng.randint(0, spread) if spread else 0))
    out.sort(key=lambda r: r.arrival_step)  # arrival order = list order
    return out


def engine_config(**kw) -> EngineConfig:
    """A small engine config for scheduler tests (block size 4, no model)."""
    args = dict(kvcache_block_size=4, max_model_len=64, max_num_seqs=4,
                max_num_batched_tokens=32, num_kvcache_blocks=64)
    args.update(kw)
    return EngineConfig(**args)


class Entry(NamedTuple):
    """One sequence in one step's batch, as it stood before the step ran."""

    seq_id: int
    start: int  # num_computed_tokens: the first position computed this step
    n: int  # tokens computed this step
    sampled: bool
    prefill: bool  # start < num_prompt_tokens
    cached: int  # num_cached_tokens (prefix-cache hit at its latest admission)


@dataclass
class StepRecord:
    """What one step did, as the test driver saw it."""

    step: int
    waiting_before: list[int]  # seq ids, queue order, before schedule()
    running_before: list[int]
    entries: list[Entry]
    preempted: set[int]  # running before, waiting after schedule()
    waiting_after: list[int]
    running_after: list[int]
    finished: list[int]


@dataclass
class Run:
    scheduler: Scheduler
    model: FakeModel
    seqs: list[Sequence]  # in request order
    records: list[StepRecord] = field(default_factory=list)

    @property
    def outputs(self) -> list[list[int]]:
        return [s.completion_token_ids for s in self.seqs]

    @property
    def finish_reasons(self) -> list[str | None]:
        return [s.finish_reason for s in self.seqs]


def run_workload(config: EngineConfig, requests: list[Request], *, trace: bool = False,
                 next_token: Callable[[list[int], int], int] = hashed_next_token,
                 check: bool = True, max_steps: int = 5000) -> Run:
    """Serve `requests` to completion with a fake model; check per-step invariants."""
    scheduler = Scheduler(config, trace=trace)
    bm = scheduler.block_manager
    model = FakeModel(bm, next_token, check)
    run = Run(scheduler, model, [])
    pending = list(requests)
    step = 0
    while pending or scheduler.has_unfinished():
        while pending and pending[0].arrival_step <= step:
            req = pending.pop(0)
            seq = Sequence(req.prompt, req.params)
            run.seqs.append(seq)
            scheduler.add(seq)
        step += 1
        assert step <= max_steps, "workload did not finish"
        waiting_before = [s.seq_id for s in scheduler.waiting]
        running_before = [s.seq_id for s in scheduler.running]
        batch = scheduler.schedule()

        assert batch.num_tokens <= config.max_num_batched_tokens
        assert len(batch.seqs) <= config.max_num_seqs
        assert len(scheduler.running) <= config.max_num_seqs
        assert len({s.seq_id for s in batch.seqs}) == len(batch.seqs), "a sequence twice"
        assert all(s.status is SequenceStatus.RUNNING for s in batch.seqs)
        assert set(batch.seqs) <= set(scheduler.running)
        assert all(n >= 1 for n in batch.num_new_tokens)
        if not pending and not batch.seqs:
            assert not scheduler.has_unfinished(), "an empty step with work left"
        waiting_after = [s.seq_id for s in scheduler.waiting]
        entries = [
            Entry(s.seq_id, s.num_computed_tokens, n, ok, s.in_prefill, s.num_cached_tokens)
            for s, n, ok in zip(batch.seqs, batch.num_new_tokens, batch.sampled, strict=True)]

        tokens = model.step(batch)
        finished = scheduler.postprocess(batch, tokens)

        for seq in scheduler.running:
            assert not seq.is_finished
            if check:
                model.kv.check_sequence(seq)
        run.records.append(StepRecord(
            step=batch.step, waiting_before=waiting_before, running_before=running_before,
            entries=entries, preempted=set(running_before) & set(waiting_after),
            waiting_after=waiting_after,
            running_after=[s.seq_id for s in scheduler.running],
            finished=[s.seq_id for s in finished]))

    assert all(s.is_finished for s in run.seqs)
    assert_no_leaks(bm)
    return run


def assert_no_leaks(bm: BlockManager) -> None:
    """Nothing holds a block: each is free or evictable, and the counts agree."""
    assert bm.num_used_blocks == 0
    assert all(r == 0 for r in bm.ref_counts)
    assert all(bm.block_state(b) in ("free", "evictable") for b in range(bm.num_blocks))
    evictable = bm.cache.num_evictable_blocks if bm.cache else 0
    assert len(bm.free) + evictable == bm.num_blocks
    assert len(set(bm.free)) == len(bm.free)
