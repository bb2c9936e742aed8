"""Recording a run step by step, to draw it live or play it back later.

A `Trace` is a list of `TraceStep`s, one per scheduler step: the queues, the batch (prefill
chunks and decodes), the KV pool and every block table after the step, the prefix-cache and
token counters, and how long the step took. It saves to JSON and loads back, so a notebook or
the docs can replay a run without an engine (`minillm.viz.Dashboard.replay`).

A `TraceRecorder` fills a trace. On an `LLM` or `LLMEngine` it registers itself in
`LLMEngine.step_observers` and records every step by itself; on a bare `Scheduler` (driven by
`minillm.simulate`, no model) call `capture()` after each step. Either way the batch
composition comes from the scheduler's own `StepTrace` (the recorder turns `trace=True` on for
as long as it is attached), so a recorded step says exactly what the scheduler decided.

Recording costs one pass over the free list and the running block tables per step (tens of
microseconds for a few thousand blocks) and nothing at all when no recorder is attached.

    >>> with Trace.record(llm) as trace:
    ...     llm.generate(prompts, params)
    >>> trace.save("run.json"); Trace.load("run.json")[-1].to_text()
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from minillm.scheduler import Scheduler, StepTrace

if TYPE_CHECKING:
    from minillm.engine import LLMEngine

TRACE_FORMAT = 1  # bump when the JSON layout changes

# One character per KV block in `TraceStep.pool`, the states of `BlockManager.block_state`.
POOL_CODES = {"free": ".", "used": "u", "cached": "c", "evictable": "e"}
POOL_STATES = {code: state for state, code in POOL_CODES.items()}


@dataclass
class TraceStep:
    """One scheduler step: what ran, what waited, and the KV pool after it."""

    step: int  # the scheduler's step number
    time: float = 0.0  # seconds since recording began, at the end of the step
    seconds: float = 0.0  # the engine's own time for the step (schedule, forward, sample, ...)
    prefill: dict[int, int] = field(default_factory=dict)  # seq_id -> prompt tokens this step
    decode: list[int] = field(default_factory=list)  # seq_ids that decoded one token
    preempted: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # queue after scheduling, head first
    running: list[int] = field(default_factory=list)  # after the step, oldest first
    sampled: int = 0  # tokens sampled this step (decodes plus prompts completed)
    budget: int = 0  # the step's token budget, max_num_batched_tokens
    blocks_used: int = 0
    blocks_free: int = 0  # free list plus evictable blocks
    blocks_cached: int = 0
    pool: str | None = None  # one char per block: . free, u used, c cached+used, e evictable
    block_tables: dict[int, list[int]] = field(default_factory=dict)  # running seqs, after
    seqs: dict[int, list[int]] = field(default_factory=dict)  # seq_id -> [prompt, tokens, cached]
    evicted: list[int] = field(default_factory=list)  # blocks that left the prefix cache
    # Counters since recording began (the engine's totals minus those at the start):
    generated_tokens: int = 0
    prefill_tokens: int = 0
    hit_tokens: int = 0  # prompt tokens served by the prefix cache
    queried_tokens: int = 0  # prompt tokens looked up in the prefix cache
    evicted_blocks: int = 0

    @property
    def num_tokens(self) -> int:
        """Tokens computed this step: prefill chunks plus one per decode."""
        return sum(self.prefill.values()) + len(self.decode)

    @property
    def hit_rate(self) -> float:
        """Prefix-cache hit rate so far: cached prompt tokens / prompt tokens looked up."""
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0

    def block_state(self, b: int) -> str:
        """'free', 'used', 'cached' or 'evictable', as `BlockManager.block_state` said."""
        if self.pool is None:
            raise ValueError(f"step {self.step} has no pool: recorded with record_pool=False")
        return POOL_STATES[self.pool[b]]

    def pool_view(self, num_blocks: int, block_size: int) -> PoolSnapshot:
        """The recorded pool as a read-only stand-in for the `BlockManager`, for `viz`."""
        if self.pool is None:
            raise ValueError(f"step {self.step} has no pool: recorded with record_pool=False")
        return PoolSnapshot(self, num_blocks, block_size)

    def step_trace(self) -> StepTrace:
        """This step as the scheduler's `StepTrace`, for `viz.draw_timeline` and friends."""
        return StepTrace(step=self.step, prefill=dict(self.prefill), decode=list(self.decode),
                         preempted=list(self.preempted), finished=list(self.finished),
                         waiting=list(self.waiting), blocks_used=self.blocks_used,
                         blocks_free=self.blocks_free, blocks_cached=self.blocks_cached)

    def to_text(self) -> str:
        """One line like `StepTrace.to_text`, plus the queues and the budget used."""
        pre = " ".join(f"{s}:{n}" for s, n in self.prefill.items()) or "-"
        return (f"step {self.step:3d} | prefill {pre} | decode {self.decode or '-'} | "
                f"{self.num_tokens}/{self.budget} tokens | preempt {self.preempted or '-'} | "
                f"finish {self.finished or '-'} | run {self.running or '-'} | "
                f"wait {self.waiting or '-'} | kv used {self.blocks_used} free "
                f"{self.blocks_free} cached {self.blocks_cached}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraceStep:
        """The inverse of `to_dict`, also after JSON turned the int keys into strings."""
        d = dict(d)
        for key in ("prefill", "block_tables", "seqs"):
            d[key] = {int(k): v for k, v in d.get(key, {}).items()}
        return cls(**d)


@dataclass
class Trace:
    """A recorded run: the engine's shape (`config`) and one `TraceStep` per step."""

    config: dict[str, Any] = field(default_factory=dict)  # num_blocks, block_size, budget, ...
    steps: list[TraceStep] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> TraceStep:
        return self.steps[i]

    def __iter__(self):
        return iter(self.steps)

    @classmethod
    def record(cls, target, record_pool: bool = True) -> TraceRecorder:
        """A recorder attached to `target` (an `LLM`, `LLMEngine` or `Scheduler`).

        Use it as a context manager (`with Trace.record(llm) as trace: ...`), which detaches
        on exit, or keep the recorder and call `detach()` yourself.
        """
        return TraceRecorder(target, record_pool=record_pool).attach()

    def step_traces(self) -> list[StepTrace]:
        """Every step as a scheduler `StepTrace` (for `viz.draw_scheduler_trace`)."""
        return [s.step_trace() for s in self.steps]

    def tokens_per_second(self, upto: int | None = None, window: int | None = None) -> float:
        """Sampled tokens per second of engine time, over steps `[upto-window, upto)`."""
        stop = len(self.steps) if upto is None else upto
        start = 0 if window is None else max(0, stop - window)
        steps = self.steps[start:stop]
        seconds = sum(s.seconds for s in steps)
        return sum(s.sampled for s in steps) / seconds if seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"format": TRACE_FORMAT, "config": self.config,
                "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        if d.get("format") != TRACE_FORMAT:
            raise ValueError(f"trace format={d.get('format')!r} is invalid: this minillm reads "
                             f"format {TRACE_FORMAT}")
        return cls(config=dict(d["config"]), steps=[TraceStep.from_dict(s) for s in d["steps"]])

    def save(self, path: str | os.PathLike) -> None:
        """Write the trace as JSON (one step per line, so diffs stay readable)."""
        d = self.to_dict()
        steps = ",\n".join(json.dumps(s, separators=(",", ":")) for s in d["steps"])
        with open(path, "w") as f:
            f.write(f'{{"format": {TRACE_FORMAT}, "config": {json.dumps(d["config"])},\n'
                    f'"steps": [\n{steps}\n]}}\n')

    @classmethod
    def load(cls, path: str | os.PathLike) -> Trace:
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_text(self) -> str:
        return "\n".join(s.to_text() for s in self.steps)

    def __repr__(self) -> str:
        return (f"Trace({len(self.steps)} steps, {self.config.get('num_blocks')} KV blocks of "
                f"{self.config.get('block_size')} tokens)")


@dataclass
class SeqSnapshot:
    """A running sequence as recorded: enough for `viz.block_pool_text` / `draw_block_pool`."""

    seq_id: int
    block_table: list[int]


class PoolSnapshot:
    """A recorded step's KV pool, read like a `BlockManager` by the `viz` functions.

    `ref_counts` counts the recorded block tables holding each block, which is what the
    block manager's counts are (a waiting sequence holds no block).
    """

    def __init__(self, step: TraceStep, num_blocks: int, block_size: int) -> None:
        self.num_blocks, self.block_size, self._step = num_blocks, block_size, step
        self.ref_counts = [0] * num_blocks
        for table in step.block_tables.values():
            for b in table:
                self.ref_counts[b] += 1
        self.seqs = [SeqSnapshot(sid, table) for sid, table in step.block_tables.items()]

    def block_state(self, b: int) -> str:
        return self._step.block_state(b)

    @property
    def num_free_blocks(self) -> int:
        return self._step.pool.count(".") + self._step.pool.count("e")

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        return self._step.pool.count("c") + self._step.pool.count("e")


class TraceRecorder:
    """Fills a `Trace` from a live engine (automatically) or a scheduler (`capture()`).

    While attached it keeps the scheduler's `trace` switched on and drains it every step, so
    the scheduler's list never grows; detaching switches it back off unless it was on before.
    """

    def __init__(self, target, record_pool: bool = True) -> None:
        engine = getattr(target, "engine", target)  # an LLM holds its engine
        if isinstance(target, Scheduler):
            engine = None
        self.engine: LLMEngine | None = engine
        self.scheduler: Scheduler = target if engine is None else engine.scheduler
        self.record_pool = record_pool
        cfg = self.scheduler.config
        bm = self.scheduler.block_manager
        self.trace = Trace(config={
            "model": os.path.basename(str(cfg.model).rstrip("/")) if cfg.model else None,
            "num_blocks": bm.num_blocks,
            "block_size": bm.block_size,
            "max_num_batched_tokens": cfg.max_num_batched_tokens,
            "max_num_seqs": cfg.max_num_seqs,
            "prefix_cache": cfg.prefix_cache if bm.cache is not None else None,
        })
        self.attached = False
        self._owns_scheduler_trace = False
        self._seen = 0  # entries of scheduler.trace already recorded
        self._t0 = self._last = 0.0
        self._base: dict[str, int] = {}
        self._cached_prev: bytes | None = None
        self._generated = self._evicted = 0  # counters at the previous capture
        self._overlap_before = False  # the engine's overlap setting before attach()

    # ---- attach and detach ----

    def attach(self) -> TraceRecorder:
        """Start recording (counters and times start from here)."""
        if self.attached:
            return self
        s = self.scheduler
        if s.trace is None:
            s.trace, self._owns_scheduler_trace = [], True
        self._seen = len(s.trace)
        self._base = self._counters()
        self._t0 = self._last = time.perf_counter()
        if self.engine is not None:
            self.engine.step_observers.append(self._observe)
            # Overlap scheduling reports a step one call late, after the next one is already
            # scheduled: a recording wants each step whole, so the engine runs serially while
            # it is attached (the tokens are the same either way).
            self._overlap_before = self.engine.overlap
            self.engine.overlap = False
        self.attached = True
        return self

    def detach(self) -> Trace:
        """Stop recording; returns the trace."""
        if self.attached:
            if self.engine is not None and self._observe in self.engine.step_observers:
                self.engine.step_observers.remove(self._observe)
                self.engine.overlap = self._overlap_before
            if self._owns_scheduler_trace:
                self.scheduler.trace, self._owns_scheduler_trace = None, False
            self.attached = False
        return self.trace

    def __enter__(self) -> Trace:
        return self.attach().trace

    def __exit__(self, *exc) -> None:
        self.detach()

    # ---- recording ----

    def _observe(self, engine, batch, outputs, seconds: float) -> None:
        """`LLMEngine.step_observers` entry: record the step that just ran."""
        self.capture(seconds)

    def capture(self, seconds: float | None = None) -> list[TraceStep]:
        """Record the steps the scheduler ran since the last capture; returns them.

        `seconds` is the step's own duration; None takes the time since the previous capture.
        """
        now = time.perf_counter()
        if seconds is None:
            seconds = now - self._last
        s = self.scheduler
        new = s.trace[self._seen:] if s.trace is not None else []
        if self._owns_scheduler_trace:
            s.trace.clear()  # the recorder keeps the steps; the scheduler need not
            self._seen = 0
        else:
            self._seen = len(s.trace or ())
        if not new:
            return []
        counters = self._counters()
        delta = {k: v - self._base[k] for k, v in counters.items()}
        running = [q.seq_id for q in s.running]
        seqs = {q.seq_id: [q.num_prompt_tokens, q.num_tokens, q.num_cached_tokens]
                for q in (*s.running, *s.waiting)}
        tables = {q.seq_id: list(q.block_table) for q in s.running}
        any_evicted = delta["evicted_blocks"] > self._evicted
        self._evicted = delta["evicted_blocks"]
        pool, evicted = self._pool(tables, any_evicted) if self.record_pool else (None, [])
        out = []
        for i, st in enumerate(new):
            last = i == len(new) - 1  # earlier ones ran nothing: an empty batch
            step = TraceStep(
                step=st.step, time=now - self._t0, seconds=seconds if last else 0.0,
                prefill=dict(st.prefill), decode=list(st.decode), preempted=list(st.preempted),
                finished=list(st.finished), waiting=list(st.waiting), running=running,
                sampled=delta["generated_tokens"] - self._generated if last else 0,
                budget=s.config.max_num_batched_tokens, blocks_used=st.blocks_used,
                blocks_free=st.blocks_free, blocks_cached=st.blocks_cached, pool=pool,
                block_tables=tables, seqs=seqs, evicted=evicted if last else [],
                generated_tokens=delta["generated_tokens"],
                prefill_tokens=delta["prefill_tokens"], hit_tokens=delta["hit_tokens"],
                queried_tokens=delta["queried_tokens"], evicted_blocks=delta["evicted_blocks"])
            self.trace.steps.append(step)
            out.append(step)
        self._generated = delta["generated_tokens"]
        self._last = time.perf_counter()
        return out

    def _counters(self) -> dict[str, int]:
        s, bm = self.scheduler, self.scheduler.block_manager
        return {"generated_tokens": s.num_generated_tokens, "prefill_tokens": s.num_prefill_tokens,
                "hit_tokens": bm.num_hit_tokens, "queried_tokens": bm.num_queried_tokens,
                "evicted_blocks": bm.cache.num_evicted_blocks if bm.cache else 0}

    def _pool(self, tables: dict[int, list[int]], any_evicted: bool) -> tuple[str, list[int]]:
        """The pool as one char per block, and the blocks that left the cache since last time.

        Every block is free (on the free list), in use (in a running block table: cached or
        not), or else evictable: exactly `BlockManager.block_state`, in one pass over the free
        list and the tables instead of one call per block.
        """
        bm = self.scheduler.block_manager
        pool = bytearray(b"e" * bm.num_blocks) if bm.cache else bytearray(b"." * bm.num_blocks)
        for b in bm.free:
            pool[b] = 46  # "."
        is_cached = bm.cache.is_cached if bm.cache else None
        for table in tables.values():
            for b in table:
                pool[b] = 99 if is_cached is not None and is_cached(b) else 117  # "c" / "u"
        cached = pool.translate(_CACHED_MASK)  # 1 where the cache holds the block
        prev, self._cached_prev = self._cached_prev, bytes(cached)
        evicted = ([b for b, (was, now) in enumerate(zip(prev, cached)) if was and not now]
                   if any_evicted and prev is not None else [])
        return pool.decode(), evicted


_CACHED_MASK = bytes(1 if chr(i) in "ce" else 0 for i in range(256))
