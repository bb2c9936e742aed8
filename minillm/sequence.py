"""A request's state as the engine sees it: tokens, status, blocks and timestamps.

A `Sequence` is created WAITING, becomes RUNNING when the scheduler first gives it KV blocks,
may go back to WAITING (PREEMPTED) when KV memory runs out, and ends FINISHED with a
`finish_reason`. Everything the scheduler and block manager decide about a request is written
here, so printing a sequence shows where it stands.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum

from minillm.config import SamplingParams


class SequenceStatus(Enum):
    """Where a sequence is in its life."""

    WAITING = "waiting"  # queued, holds no KV blocks
    RUNNING = "running"  # holds KV blocks, is scheduled each step
    PREEMPTED = "preempted"  # was running, lost its blocks, waits at the head of the queue
    FINISHED = "finished"  # done; finish_reason says why


FINISH_REASONS = ("stop", "length", "abort")

_ids = itertools.count()


def next_seq_id() -> int:
    """A process-wide unique sequence id."""
    return next(_ids)


@dataclass(eq=False)
class Sequence:
    """One request: its tokens so far, and the KV bookkeeping the scheduler keeps for it.

    Token bookkeeping: `token_ids` is prompt + completion. `num_computed_tokens` counts the
    tokens whose KV is in the cache (prefix-cache hits included); the tokens after it are
    computed by the next forward passes, a chunk at a time during a chunked prefill. A
    sequence is "in prefill" while `num_computed_tokens < num_prompt_tokens`.
    """

    prompt_token_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    seq_id: int = field(default_factory=next_seq_id)
    num_prompt_tokens: int = field(init=False)
    token_ids: list[int] = field(init=False)  # prompt + completion
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)  # logical block i -> physical block
    num_computed_tokens: int = 0  # tokens whose KV is stored (cached prefix included)
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at admission
    finish_reason: str | None = None  # "stop" | "length" | "abort" once FINISHED
    num_preemptions: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError("prompt_token_ids=[] is invalid: a prompt needs at least one token")
        self.prompt_token_ids = list(self.prompt_token_ids)
        self.num_prompt_tokens = len(self.prompt_token_ids)
        self.token_ids = list(self.prompt_token_ids)

    # ---- token bookkeeping ----

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def last_token_id(self) -> int:
        return self.token_ids[-1]

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens whose KV is not stored yet: the rest of the prompt, or the last sampled token."""
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def in_prefill(self) -> bool:
        return self.num_computed_tokens < self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        """Record a sampled token; its KV is computed by the next step."""
        self.token_ids.append(token_id)
        if self.first_token_time is None:
            self.first_token_time = time.monotonic()

    def set_token(self, index: int, token_id: int) -> None:
        """Write a sampled token over the placeholder `Scheduler.advance` left at `index`."""
        self.token_ids[index] = token_id
        if self.first_token_time is None:
            self.first_token_time = time.monotonic()

    def reset_for_recompute(self) -> None:
        """Forget all KV state after preemption; prompt and completion are kept and recomputed."""
        self.block_table = []
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.num_preemptions += 1
        self.status = SequenceStatus.PREEMPTED

    def finish(self, reason: str) -> None:
        if reason not in FINISH_REASONS:
            raise ValueError(f"reason={reason!r} is invalid: must be one of {FINISH_REASONS}")
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.finish_time = time.monotonic()

    # ---- what crosses to another process ----

    def step_input(self, num_new_tokens: int) -> StepInput:
        """The few fields a forward pass needs to compute this sequence's next tokens."""
        start = self.num_computed_tokens
        return StepInput(
            seq_id=self.seq_id,
            token_ids=tuple(self.token_ids[start : start + num_new_tokens]),
            start_pos=start,
            block_table=tuple(self.block_table),
        )

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, {self.status.value}, prompt={self.num_prompt_tokens}, "
            f"completion={self.num_completion_tokens}, computed={self.num_computed_tokens}, "
            f"cached={self.num_cached_tokens}, blocks={self.block_table}"
            + (f", finish={self.finish_reason!r})" if self.finish_reason else ")")
        )


@dataclass(frozen=True, slots=True)
class StepInput:
    """The part of a `Sequence` that a forward pass reads: all that tensor-parallel workers get.

    Workers never see sampling params, the full token history or timestamps; rank 0 samples.
    Sending this instead of a `Sequence` keeps the per-step message small (a decode step sends
    one token id and the block table per sequence).
    """

    seq_id: int
    token_ids: tuple[int, ...]  # the tokens computed this step
    start_pos: int  # position of token_ids[0] in the sequence
    block_table: tuple[int, ...]  # physical KV blocks, in logical order
