"""The scheduler: which sequences run in the next forward pass, and how many tokens each.

Policy, in the order `schedule()` applies it:

1. **Running sequences first, oldest first.** Each gets what it still needs: one token when
   decoding, the rest of its prompt (up to the step's token budget) while in a chunked
   prefill. Oldest first means decodes go before the one sequence still prefilling (it is
   always the newest), so decodes never stall behind a long prompt.
2. **Preempt on KV pressure.** When a running sequence cannot get a block, the newest running
   sequence is preempted: its blocks are freed, its computed state is reset, and it goes back
   to the *front* of the waiting queue to be recomputed later (its tokens are kept, so its
   output is unchanged). If the sequence that needs the block is itself the newest, it is the
   one preempted.
3. **Admit waiting sequences in arrival order** while the token budget, `max_num_seqs` and free
   blocks allow, reusing cached prefix blocks. Strict FIFO: if the head of the queue does not
   fit, nothing behind it jumps ahead. No admissions happen in a step that had to preempt.
4. **Chunked prefill.** A prompt longer than the budget left is prefilled in chunks over
   several steps. A step therefore mixes decodes and at most one partial prefill chunk, as in
   Sarathi-Serve and vLLM v1: decodes keep their pace while the chunk fills the rest of the
   budget, so the GPU sees full steps without long prompts blocking token streams.

`postprocess()` then applies the sampled tokens and finishes sequences on EOS (unless
`ignore_eos`), `stop_token_ids`, `max_tokens` or `max_model_len`, freeing their blocks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from minillm.config import EngineConfig
from minillm.kvcache import BlockManager
from minillm.sequence import Sequence, SequenceStatus, StepInput


@dataclass
class Batch:
    """What the scheduler hands the model runner for one step."""

    step: int
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)  # tokens computed per sequence
    sampled: list[bool] = field(default_factory=list)  # False: a prefill chunk, no token yet

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)
        self.sampled.append(seq.num_computed_tokens + num_new_tokens == seq.num_tokens)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def num_sampled(self) -> int:
        return sum(self.sampled)

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    def step_inputs(self) -> list[StepInput]:
        """The per-sequence inputs of this step: all a tensor-parallel worker needs."""
        return [s.step_input(n) for s, n in zip(self.seqs, self.num_new_tokens)]

    def to_text(self) -> str:
        parts = [f"seq {s.seq_id}: {'+' if ok else '~'}{n} @ {s.num_computed_tokens}"
                 for s, n, ok in zip(self.seqs, self.num_new_tokens, self.sampled)]
        return f"Batch(step {self.step}, {self.num_tokens} tokens): " + ", ".join(parts)

    def __repr__(self) -> str:
        return self.to_text()


@dataclass
class StepTrace:
    """One step as the notebooks and `stats()` see it."""

    step: int
    prefill: dict[int, int] = field(default_factory=dict)  # seq_id -> prompt tokens this step
    decode: list[int] = field(default_factory=list)  # seq_ids decoding one token
    preempted: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # seq_ids left waiting after scheduling
    blocks_used: int = 0
    blocks_free: int = 0
    blocks_cached: int = 0

    def to_text(self) -> str:
        pre = " ".join(f"{s}:{n}" for s, n in self.prefill.items()) or "-"
        return (f"step {self.step:3d} | prefill {pre} | decode {self.decode or '-'} | "
                f"preempt {self.preempted or '-'} | finish {self.finished or '-'} | "
                f"wait {len(self.waiting)} | kv used {self.blocks_used} free {self.blocks_free} "
                f"cached {self.blocks_cached}")


class Scheduler:
    """Continuous batching with chunked prefill and preemption by recompute (policy above)."""

    def __init__(self, config: EngineConfig, block_manager: BlockManager | None = None,
                 trace: bool = False) -> None:
        self.config = config
        self.block_manager = block_manager or BlockManager.from_config(config)
        if self.block_manager.num_blocks < config.max_blocks_per_seq:
            raise ValueError(
                f"num_kvcache_blocks={self.block_manager.num_blocks} is invalid: must be >= "
                f"{config.max_blocks_per_seq} to hold one sequence of max_model_len tokens")
        self.eos_token_ids = frozenset(config.eos_token_ids)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_steps = 0
        self.num_preemptions = 0
        self.num_finished = 0
        self.num_prefill_tokens = 0  # tokens computed in prefill chunks (cache hits excluded)
        self.num_generated_tokens = 0
        self.trace: list[StepTrace] | None = [] if trace else None

    # ---- requests in and out ----

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence; a prompt with no room for a single new token is refused."""
        limit = self.config.max_model_len
        if seq.num_prompt_tokens >= limit:
            raise ValueError(
                f"prompt has {seq.num_prompt_tokens} tokens, too many for max_model_len={limit}:"
                f" a prompt may have at most {limit - 1} tokens")
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def abort(self, seq_id: int) -> Sequence | None:
        """End a request wherever it is; its blocks are freed. None if it is not here."""
        for queue in (self.waiting, self.running):
            for seq in queue:
                if seq.seq_id == seq_id:
                    self.finish(seq, "abort")
                    return seq
        return None

    def finish(self, seq: Sequence, reason: str) -> None:
        """End `seq` (also used by the engine for stop strings) and free its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif not seq.is_finished:
            self.waiting.remove(seq)
        if not seq.is_finished:
            self.block_manager.deallocate(seq)
            seq.finish(reason)
            self.num_finished += 1

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step ----

    def schedule(self) -> Batch:
        """Pick the next step's sequences and token counts, allocating their KV blocks."""
        bm, cfg = self.block_manager, self.config
        batch = Batch(step=self.num_steps)
        self.num_steps += 1
        budget = cfg.max_num_batched_tokens
        preempted: list[Sequence] = []

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if self._at_length_limit(seq):
                i += 1  # its last token is still in flight (overlap): commit() finishes it
                continue
            n = min(seq.num_uncomputed_tokens, budget)
            while not bm.can_allocate(seq, n):
                victim = self.running.pop()  # the newest running sequence
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            else:
                bm.allocate(seq, n)
                batch.add(seq, n)
                budget -= n
                i += 1
                continue
            break  # `seq` itself was preempted, and it was the last one

        while (self.waiting and not preempted and budget > 0
               and len(self.running) < cfg.max_num_seqs):
            seq = self.waiting[0]
            bm.acquire_cached_prefix(seq)
            n = seq.num_uncomputed_tokens
            if n > budget and cfg.enable_chunked_prefill:
                n = budget
            if n > budget or not bm.can_allocate(seq, n):
                self._release(seq)  # head of line waits; nobody overtakes it
                break
            bm.allocate(seq, n)
            bm.record_admission(seq)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = time.monotonic()
            self.running.append(seq)
            batch.add(seq, n)
            budget -= n

        if batch.is_empty and not self.running and self.waiting:
            raise RuntimeError("scheduler stalled: the waiting head cannot get KV blocks")
        if self.trace is not None:
            self.trace.append(self._trace_step(batch, preempted))
        return batch

    def postprocess(self, batch: Batch, sampled_token_ids: Seq[int]) -> list[Sequence]:
        """Apply one step's results; returns the sequences that finished.

        `sampled_token_ids` holds one token per sequence with `batch.sampled` True, in batch
        order (a prefill chunk that does not end its prompt samples nothing). The same as
        `commit(advance(batch), sampled_token_ids)`, the two halves that overlap scheduling
        runs apart.
        """
        if len(sampled_token_ids) != batch.num_sampled:
            raise ValueError(f"sampled_token_ids has {len(sampled_token_ids)} tokens, the batch "
                             f"samples {batch.num_sampled}")
        return self.commit(batch, self.advance(batch), sampled_token_ids)

    def advance(self, batch: Batch) -> list[tuple[Sequence, int] | None]:
        """The half of `postprocess` that needs no token values: mark the step's tokens
        computed, offer full blocks to the prefix cache, and give each sampling sequence a
        placeholder token, `-(row + 1)` for the step's sampled row `row`.

        With overlap scheduling the next step is scheduled (and launched) over placeholders:
        the runner swaps each for the real token on the device. Returns, per sampled row,
        `(sequence, index of its placeholder)` for `commit`, or None for a sequence that left
        (aborted or finished) while the step ran.
        """
        pending: list[tuple[Sequence, int] | None] = []
        for seq, n, sampled in zip(batch.seqs, batch.num_new_tokens, batch.sampled):
            if seq.status is not SequenceStatus.RUNNING:
                if sampled:
                    pending.append(None)
                continue  # aborted or preempted while the step ran
            if seq.in_prefill or n > 1:
                self.num_prefill_tokens += n
            seq.num_computed_tokens += n
            self.block_manager.cache_computed_blocks(seq)
            if sampled:
                pending.append((seq, seq.num_tokens))
                seq.token_ids.append(-len(pending))
        return pending

    def commit(self, batch: Batch, pending: list[tuple[Sequence, int] | None],
               sampled_token_ids: Seq[int]) -> list[Sequence]:
        """Write the sampled tokens over `advance`'s placeholders and finish sequences on EOS,
        stop ids, `max_tokens` or `max_model_len`; returns those that finished.

        A sequence preempted since `advance` still gets its token (it keeps its tokens for
        the recompute); one that finished since (a stop string, an abort) gets none.
        """
        finished: list[Sequence] = []
        for entry, token in zip(pending, sampled_token_ids, strict=True):
            if entry is None or entry[0].is_finished:
                continue
            seq, index = entry
            token = int(token)
            seq.set_token(index, token)
            self.num_generated_tokens += 1
            reason = self._stop_reason(seq, token)
            if reason is not None:
                self.finish(seq, reason)
                finished.append(seq)
        if self.trace is not None:
            for step in reversed(self.trace[-2:]):  # with overlap, the next step is traced too
                if step.step == batch.step:
                    step.finished = [s.seq_id for s in finished]
                    self._record_blocks(step)
        return finished

    # ---- helpers ----

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if seq.num_completion_tokens > p.min_tokens:
            if not p.ignore_eos and token in self.eos_token_ids:
                return "stop"
            if p.stop_token_ids and token in p.stop_token_ids:
                return "stop"
        if seq.num_completion_tokens >= p.max_tokens:
            return "length"
        if seq.num_tokens >= self.config.max_model_len:
            return "length"
        return None

    def _at_length_limit(self, seq: Sequence) -> bool:
        """Whether `seq` already holds its last token (`max_tokens` or `max_model_len`)."""
        return (seq.num_completion_tokens >= seq.params.max_tokens
                or seq.num_tokens >= self.config.max_model_len)

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.deallocate(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _release(self, seq: Sequence) -> None:
        """Undo `acquire_cached_prefix` for a sequence that could not be admitted."""
        self.block_manager.deallocate(seq)
        seq.num_computed_tokens = seq.num_cached_tokens = 0

    def _trace_step(self, batch: Batch, preempted: list[Sequence]) -> StepTrace:
        step = StepTrace(step=batch.step, preempted=[s.seq_id for s in preempted],
                         waiting=[s.seq_id for s in self.waiting])
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            if n == 1 and not seq.in_prefill:
                step.decode.append(seq.seq_id)
            else:
                step.prefill[seq.seq_id] = n
        self._record_blocks(step)
        return step

    def _record_blocks(self, step: StepTrace) -> None:
        bm = self.block_manager
        step.blocks_used, step.blocks_free = bm.num_used_blocks, bm.num_free_blocks
        step.blocks_cached = bm.num_cached_blocks

    def stats(self) -> dict[str, float]:
        """Counters since start: steps, preemptions, tokens, prefix-cache hits, KV blocks."""
        bm = self.block_manager
        return {
            "steps": self.num_steps,
            "preemptions": self.num_preemptions,
            "finished": self.num_finished,
            "running": len(self.running),
            "waiting": len(self.waiting),
            "prefill_tokens": self.num_prefill_tokens,
            "generated_tokens": self.num_generated_tokens,
            "prefix_cache_hit_tokens": bm.num_hit_tokens,
            "prefix_cache_hit_rate": bm.num_hit_tokens / max(1, bm.num_queried_tokens),
            "kv_blocks_total": bm.num_blocks,
            "kv_blocks_used": bm.num_used_blocks,
            "kv_blocks_free": bm.num_free_blocks,
            "kv_blocks_cached": bm.num_cached_blocks,
            "kv_blocks_evicted": bm.cache.num_evicted_blocks if bm.cache else 0,
        }
