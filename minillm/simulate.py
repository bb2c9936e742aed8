"""Drive the real scheduler and block manager with made-up tokens, no model needed.

The notebooks, the `minillm simulate` command and the tests use this to show scheduling,
paging and prefix caching before any model exists. The "model" here is a deterministic
function of a sequence's tokens, so a run's outputs depend only on its inputs, never on how
the steps were batched: the same property the real engine must keep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from minillm.config import SamplingParams
from minillm.scheduler import Scheduler
from minillm.sequence import Sequence

TokenFn = Callable[[Sequence], int]


def made_up_token(seq: Sequence, vocab_size: int = 1000) -> int:
    """A deterministic next token for `seq`: a hash of its tokens so far (never 0)."""
    return 1 + hash(tuple(seq.token_ids)) % (vocab_size - 1)


@dataclass
class Workload:
    """Parameters of a synthetic burst of requests."""

    num_requests: int = 8
    prompt_len: tuple[int, int] = (8, 48)  # inclusive range of prompt lengths
    output_len: tuple[int, int] = (4, 24)  # inclusive range of max_tokens
    shared_prefix_len: int = 0  # tokens every prompt starts with (a system prompt)
    vocab_size: int = 1000
    seed: int = 0

    def make(self) -> list[Sequence]:
        """The requests, seeded: the same workload gives the same sequences' tokens."""
        rng = random.Random(self.seed)
        prefix = [rng.randrange(1, self.vocab_size) for _ in range(self.shared_prefix_len)]
        seqs = []
        for _ in range(self.num_requests):
            n = rng.randint(*self.prompt_len)
            prompt = prefix + [rng.randrange(1, self.vocab_size) for _ in range(n)]
            params = SamplingParams(temperature=0.0, max_tokens=rng.randint(*self.output_len),
                                    ignore_eos=True)
            seqs.append(Sequence(prompt, params))
        return seqs


def step(scheduler: Scheduler, token_fn: TokenFn = made_up_token) -> list[Sequence]:
    """One engine step with made-up tokens: schedule, "run", postprocess. Returns finished."""
    batch = scheduler.schedule()
    tokens = [token_fn(s) for s, sampled in zip(batch.seqs, batch.sampled) if sampled]
    return scheduler.postprocess(batch, tokens)


def run(scheduler: Scheduler, seqs: list[Sequence], token_fn: TokenFn = made_up_token,
        max_steps: int = 100_000) -> list[Sequence]:
    """Add `seqs` and step until all finish; returns them in the order given."""
    for seq in seqs:
        scheduler.add(seq)
    for _ in range(max_steps):
        if not scheduler.has_unfinished():
            return seqs
        step(scheduler, token_fn)
    raise RuntimeError(f"simulation did not finish in {max_steps} steps")
