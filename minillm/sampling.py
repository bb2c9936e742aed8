"""The sampler: from one step's logits to one next token per sequence.

Two objects, built for a batch that mixes requests with different `SamplingParams`:

- `SamplingBatch` turns the step's `list[Sequence]` into per-row tensors, once per step, and
  records which stages any row needs at all, so a batch of greedy requests costs one argmax
  and a batch without penalties never builds token counts.
- `Sampler` applies the stages to the whole batch at once, in this order::

      penalties -> min_tokens mask -> greedy rows: argmax
                                   -> other rows:  / temperature -> top-k -> top-p -> min-p
                                                   -> softmax -> exponential race

  Filters set logits to -inf and always keep the most likely token. A stage that a row does
  not use is a no-op on that row (temperature 1, top-k = vocab size, top-p 1, min-p 0, no
  penalty), so a request samples the same token whatever its neighbours turn on.

Random numbers. Sampling uses the exponential race: with q ~ Exponential(1) drawn independently
per token, argmax(p / q) is a sample from p. It needs no `torch.multinomial` (whose CUDA kernel
syncs with the host) and lets every row take noise from its own generator. A request with a
`seed` draws from a generator seeded by (seed, number of tokens it has generated), which holds
no state across steps: the same seed gives the same tokens whatever the batch, and again after
a preemption recomputes the request. Rows without a seed share one generator seeded per step
by the engine (`step_seed`), so a whole run with the same `EngineConfig.seed` repeats exactly.

Logprobs are those of the model's raw logits (log_softmax before penalties, temperature and
filters), which is what vLLM returns by default and what a client comparing models expects.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import torch

from minillm.layers.fusion import fused_kernels_enabled  # the same switch as the layers
from minillm.sequence import Sequence
from minillm.transfer import to_device

_MASK64 = (1 << 64) - 1  # torch generators take seeds in [0, 2**64)
_TINY = torch.finfo(torch.float32).tiny  # floor for the exponential noise: p / q is never 0 / 0


# --------------------------------------------------------------------------------------------
# Per-request seeds
# --------------------------------------------------------------------------------------------


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser (Steele et al., 2014): a bijective 64-bit hash that sends nearby
    integers to unrelated ones. The constants are the published ones."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def token_seed(seed: int, position: int) -> int:
    """The generator seed for the `position`-th completion token of a request with `seed`.

    A pure function of the two, so no generator state has to survive between steps, be kept
    per request, or be rebuilt after a preemption. Hashing (rather than `seed + position`)
    keeps requests with seeds 1 and 2 from replaying each other's noise one token apart.
    """
    return _splitmix64(_splitmix64(seed & _MASK64) ^ position)


# --------------------------------------------------------------------------------------------
# The batch
# --------------------------------------------------------------------------------------------


def _token_counts(token_lists: list[list[int]], vocab_size: int,
                  device: torch.device) -> torch.Tensor:
    """How often each token occurs in each row's list: [B, V] float32, by one scatter_add."""
    counts = torch.zeros(len(token_lists), vocab_size, device=device)  # [B, V]
    lengths = [len(t) for t in token_lists]
    total = sum(lengths)
    if total == 0:
        return counts
    tokens = to_device(list(itertools.chain.from_iterable(token_lists)), torch.long,
                       device)  # [total]
    rows = torch.repeat_interleave(  # [total]; output_size given: no device-to-host sync
        torch.arange(len(token_lists), device=device),
        to_device(lengths, torch.long, device), output_size=total)
    counts.view(-1).scatter_add_(0, rows * vocab_size + tokens, torch.ones(total, device=device))
    return counts


@dataclass
class SamplingBatch:
    """The sampling parameters of one step's rows, as tensors on the logits' device.

    Built once per step by `from_sequences`; row i is the i-th sequence. Every [B] tensor holds
    a neutral value where a request leaves its option off, so a stage can run on the whole batch.
    The `do_*` flags say whether any row that samples (is not greedy) uses a stage; the sampler
    skips a stage when its flag is False. Token-count tensors exist only when some row asks for
    a penalty (they are [B, V], the one large thing here).
    """

    vocab_size: int
    greedy: torch.Tensor  # [B] bool: temperature == 0
    temperature: torch.Tensor  # [B] float32; 1.0 on greedy rows, so dividing is always safe
    top_k: torch.Tensor  # [B] int64; vocab_size where off
    top_p: torch.Tensor  # [B] float32; 1.0 where off
    min_p: torch.Tensor  # [B] float32; 0.0 where off
    repetition_penalty: torch.Tensor  # [B] float32; 1.0 where off
    presence_penalty: torch.Tensor  # [B] float32; 0.0 where off
    frequency_penalty: torch.Tensor  # [B] float32; 0.0 where off
    seen_tokens: torch.Tensor | None  # [B, V] bool: in prompt or output (repetition penalty)
    output_counts: torch.Tensor | None  # [B, V] float32: times generated (presence/frequency)
    # (row, token) pairs held at -inf: EOS and stop tokens of rows still short of min_tokens
    banned_rows: torch.Tensor | None  # [N] int64
    banned_token_ids: torch.Tensor | None  # [N] int64
    seeded_rows: list[int]  # sampled rows whose request has a seed
    row_seeds: list[int]  # their generator seeds for this token (`token_seed`)
    step_seed: int  # seeds the generator shared by the sampled rows without a seed
    num_logprobs: list[int | None]  # per row: top-n logprobs asked for; None: no logprobs
    all_greedy: bool
    any_greedy: bool
    do_top_k: bool
    do_top_p: bool
    max_top_k: int  # the largest top_k of the sampled rows (vocab_size where one has none)
    do_min_p: bool

    def __len__(self) -> int:
        return len(self.num_logprobs)

    @property
    def do_penalties(self) -> bool:
        return self.seen_tokens is not None or self.output_counts is not None

    @property
    def max_num_logprobs(self) -> int | None:
        """The largest top-n any row asked for; None when no row wants logprobs."""
        asked = [n for n in self.num_logprobs if n is not None]
        return max(asked) if asked else None

    @classmethod
    def from_sequences(cls, seqs: list[Sequence], vocab_size: int,
                       eos_token_ids: tuple[int, ...] | list[int] = (),
                       device: torch.device | str = "cpu", step_seed: int = 0) -> SamplingBatch:
        """Gather each sequence's `SamplingParams` into tensors; row i is `seqs[i]`.

        `eos_token_ids` are masked (with the request's `stop_token_ids`) until a request has
        `min_tokens` completion tokens, even with `ignore_eos`, as vLLM does: min_tokens is a
        promise about length. `step_seed` seeds the rows without a seed of their own.
        """
        device = torch.device(device)
        params = [s.params for s in seqs]
        greedy = [p.temperature == 0.0 for p in params]
        sampled = [p for p, g in zip(params, greedy, strict=True) if not g]
        # One upload for all per-row numbers: [7, B].
        floats = to_device(
            [[1.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)],
             [p.top_p for p in params],
             [p.min_p for p in params],
             [p.repetition_penalty for p in params],
             [p.presence_penalty for p in params],
             [p.frequency_penalty for p in params],
             [float(g) for g in greedy]],
            torch.float32, device)
        temperature, top_p, min_p, rep, presence, frequency, is_greedy = floats.unbind(0)
        top_k = to_device([vocab_size if p.top_k == -1 else p.top_k for p in params],
                          torch.long, device)

        # Token counts only for the rows that use them; the other rows stay zero (no penalty).
        with_rep = [p.repetition_penalty != 1.0 for p in params]
        with_pf = [p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 for p in params]
        seen_tokens = output_counts = None
        if any(with_rep):  # prompt and output: s.token_ids
            seen_tokens = _token_counts(
                [s.token_ids if r else [] for s, r in zip(seqs, with_rep, strict=True)],
                vocab_size, device) > 0
        if any(with_pf):  # output only
            output_counts = _token_counts(
                [s.completion_token_ids if f else [] for s, f in zip(seqs, with_pf, strict=True)],
                vocab_size, device)

        banned: list[tuple[int, int]] = []
        for row, s in enumerate(seqs):
            if s.num_completion_tokens < s.params.min_tokens:
                ids = set(eos_token_ids) | set(s.params.stop_token_ids or ())
                banned.extend((row, t) for t in sorted(ids) if t < vocab_size)
        banned_rows = banned_ids = None
        if banned:
            pairs = to_device(banned, torch.long, device)  # [N, 2]
            banned_rows, banned_ids = pairs.unbind(1)

        seeded = [(row, token_seed(s.params.seed, s.num_completion_tokens))
                  for row, (s, g) in enumerate(zip(seqs, greedy, strict=True))
                  if s.params.seed is not None and not g]
        return cls(
            vocab_size=vocab_size,
            greedy=is_greedy.bool(),
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=rep,
            presence_penalty=presence,
            frequency_penalty=frequency,
            seen_tokens=seen_tokens,
            output_counts=output_counts,
            banned_rows=banned_rows,
            banned_token_ids=banned_ids,
            seeded_rows=[row for row, _ in seeded],
            row_seeds=[seed for _, seed in seeded],
            step_seed=step_seed,
            num_logprobs=[p.logprobs for p in params],
            all_greedy=all(greedy),
            any_greedy=any(greedy),
            do_top_k=any(p.top_k != -1 and p.top_k < vocab_size for p in sampled),
            max_top_k=max((vocab_size if p.top_k == -1 else min(p.top_k, vocab_size)
                           for p in sampled), default=vocab_size),
            do_top_p=any(p.top_p < 1.0 for p in sampled),
            do_min_p=any(p.min_p > 0.0 for p in sampled),
        )


# --------------------------------------------------------------------------------------------
# The stages: pure functions on [B, V] float32 logits
# --------------------------------------------------------------------------------------------


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Repetition penalty (HF/vLLM), then presence and frequency penalties (OpenAI).

    Repetition: a token seen in the prompt or the output has its logit divided by the penalty
    when positive and multiplied when negative, so a penalty > 1 always makes it less likely.
    Presence/frequency count generated tokens only: logit -= presence * (count > 0) +
    frequency * count.
    """
    if batch.seen_tokens is not None:
        penalty = torch.where(batch.seen_tokens, batch.repetition_penalty[:, None], 1.0)  # [B, V]
        logits = torch.where(logits > 0, logits / penalty, logits * penalty)
    if batch.output_counts is not None:
        counts = batch.output_counts  # [B, V]
        logits = (logits - batch.frequency_penalty[:, None] * counts
                  - batch.presence_penalty[:, None] * (counts > 0))
    return logits


# With every row's top_k at most this, `apply_top_k_top_p` ranks only the top `max_top_k`
# tokens (`torch.topk`) instead of sorting the whole vocabulary: the result is the same, since
# top-p is applied after top-k, over the kept tokens only.
PARTIAL_SORT_MAX_K = 1024


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None,
                      top_p: torch.Tensor | None, max_top_k: int | None = None) -> torch.Tensor:
    """Keep each row's `top_k` most likely tokens, then the smallest set of those whose
    probability (renormalised after top-k) reaches `top_p`. One ranking serves both.

    A token survives top-p when the probability of the tokens ranked above it is still below
    top_p, so the most likely token always survives. Rows with top_p == 1 are left alone: the
    float32 cumulative sum can pass 1.0 before the last tokens and would cut them.
    `max_top_k` (a host int, the largest top_k of the batch) lets the ranking stop there, a
    partial sort far cheaper than sorting a 150k vocabulary; without it the whole row is sorted,
    stably (lowest id first among ties, so top_k=1 keeps the token argmax picks). With it, which
    of several tokens tied at the k-th place survive is `torch.topk`'s choice. Top-p without
    top-k on a GPU sorts nothing: `minillm.kernels.top_p` finds each row's threshold.
    """
    if top_k is None and top_p is not None and logits.is_cuda and fused_kernels_enabled():
        from minillm.kernels.top_p import top_p_threshold  # Triton: imported on a GPU only

        # No sort at all: a per-row threshold found by search (ties with it are all kept).
        return logits.masked_fill(logits < top_p_threshold(logits, top_p)[:, None],
                                  float("-inf"))
    if top_k is not None and max_top_k is not None and max_top_k <= PARTIAL_SORT_MAX_K:
        ranked, order = logits.topk(max_top_k, dim=-1, sorted=True)  # [B, K] each
    else:
        ranked, order = logits.sort(dim=-1, descending=True, stable=True)  # [B, V] each
    if top_k is not None:
        rank = torch.arange(ranked.shape[-1], device=logits.device)  # [K or V]
        ranked = ranked.masked_fill(rank >= top_k[:, None], float("-inf"))
    if top_p is not None:
        probs = ranked.softmax(dim=-1)
        mass_above = probs.cumsum(dim=-1) - probs  # exactly 0 for the top token
        cut = (mass_above >= top_p[:, None]) & (top_p[:, None] < 1.0)
        ranked = ranked.masked_fill(cut, float("-inf"))
    out = torch.full_like(logits, float("-inf")) if ranked.shape != logits.shape else \
        torch.empty_like(logits)
    return out.scatter_(-1, order, ranked)  # back to token order


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens less likely than min_p * p(most likely token).

    Done on logits: softmax shares one normaliser across the row, so p_i < min_p * p_max is
    logit_i < logit_max + log(min_p). min_p = 0 gives log 0 = -inf and drops nothing; the most
    likely token always stays since min_p <= 1.
    """
    threshold = logits.amax(dim=-1, keepdim=True) + min_p.log()[:, None]  # [B, 1]
    return logits.masked_fill(logits < threshold, float("-inf"))


def exponential_race(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample one token per row: argmax(p / q) with q ~ Exponential(1) is distributed as p.

    (The first of independent exponential clocks with rates p_i to ring is i with probability
    p_i.) Unlike `torch.multinomial` it never syncs with the host, and each row's randomness
    is just its row of `noise`.
    """
    return (probs / noise).argmax(dim=-1)


# --------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------


class TokenLogprobs(NamedTuple):
    """Logprobs of one sampled position, from the model's raw logits."""

    token_id: int  # the sampled token
    logprob: float  # its logprob
    top: list[tuple[int, float]]  # the top-n (token id, logprob), most likely first


@dataclass
class SamplerOutput:
    """One step's sampled tokens, and the logprobs of the rows that asked for them."""

    token_ids: torch.Tensor  # [B] int64, on the logits' device
    logprobs: list[TokenLogprobs | None] | None = None  # per row; None when no row asked

    def row_logprobs(self, row: int) -> dict | None:
        """Row `row`'s logprobs as a plain dict {"token_id", "logprob", "top"}, or None."""
        if self.logprobs is None or self.logprobs[row] is None:
            return None
        return self.logprobs[row]._asdict()


class Sampler:
    """Picks one token per row of `logits` [B, V] according to a `SamplingBatch`.

    Holds only a torch.Generator per device, reseeded for every use (per step for the shared
    noise, per row and token for seeded requests), so sampling itself keeps no state between
    steps: what a step samples is a function of its logits and its `SamplingBatch`.
    """

    def __init__(self) -> None:
        self._generators: dict[torch.device, torch.Generator] = {}

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        if logits.shape != (len(batch), batch.vocab_size):
            raise ValueError(f"logits of shape {tuple(logits.shape)} do not match the sampling "
                             f"batch: expected ({len(batch)}, {batch.vocab_size})")
        raw = logits
        if batch.all_greedy and not batch.do_penalties and batch.banned_rows is None:
            # Widening to float32 is exact, so the raw logits have the same argmax: no [B, V]
            # float32 copy (about 0.1 ms a step at 256 x 151,936 on an H200).
            token_ids = raw.argmax(dim=-1)
        else:
            token_ids = self._filtered_sample(raw, batch)

        out = SamplerOutput(token_ids=token_ids)
        if batch.max_num_logprobs is not None:
            out.logprobs = self._logprobs(raw, token_ids, batch)
        return out

    def _filtered_sample(self, raw: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Penalties and banned tokens on a float32 copy, then greedy or sampled per row."""
        logits = raw.to(torch.float32, copy=True)  # [B, V]; the raw logits stay for logprobs
        if batch.do_penalties:
            logits = apply_penalties(logits, batch)
        if batch.banned_rows is not None:
            logits[batch.banned_rows, batch.banned_token_ids] = float("-inf")
        if batch.all_greedy:
            return logits.argmax(dim=-1)
        token_ids = self._sample(logits, batch)
        if batch.any_greedy:
            token_ids = torch.where(batch.greedy, logits.argmax(dim=-1), token_ids)
        return token_ids

    def _sample(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Temperature, filters, softmax, exponential race: [B, V] -> [B] token ids."""
        logits = logits / batch.temperature[:, None]
        if batch.do_top_k or batch.do_top_p:
            logits = apply_top_k_top_p(logits, batch.top_k if batch.do_top_k else None,
                                       batch.top_p if batch.do_top_p else None,
                                       batch.max_top_k if batch.do_top_k else None)
        if batch.do_min_p:
            logits = apply_min_p(logits, batch.min_p)
        probs = logits.softmax(dim=-1)  # [B, V]
        return exponential_race(probs, self._noise(batch, probs.shape, probs.device))

    def _noise(self, batch: SamplingBatch, shape: torch.Size,
               device: torch.device) -> torch.Tensor:
        """Exponential(1) noise [B, V]: one batched draw for the unseeded rows, then each seeded
        row redrawn from its own seed (the only Python loop, over the uncommon seeded rows)."""
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        noise = torch.empty(shape, device=device)  # [B, V]
        if len(batch.seeded_rows) < shape[0]:
            gen.manual_seed(batch.step_seed)
            noise.exponential_(generator=gen)
        for row, seed in zip(batch.seeded_rows, batch.row_seeds, strict=True):
            gen.manual_seed(seed)
            noise[row].exponential_(generator=gen)
        return noise.clamp_(min=_TINY)

    @staticmethod
    def _logprobs(raw: torch.Tensor, token_ids: torch.Tensor,
                  batch: SamplingBatch) -> list[TokenLogprobs | None]:
        """Sampled-token and top-n logprobs of the raw logits, moved to the host in one copy."""
        logprobs = raw.float().log_softmax(dim=-1)  # [B, V]
        n = min(batch.max_num_logprobs, batch.vocab_size)
        top_lp, top_ids = logprobs.topk(n, dim=-1)  # [B, n] each, sorted
        sampled_lp = logprobs.gather(-1, token_ids[:, None])  # [B, 1]
        # One transfer: [B, 2 + 2n] float64 holds ids exactly (they are far below 2**53).
        host = torch.cat([token_ids[:, None].double(), sampled_lp.double(), top_ids.double(),
                          top_lp.double()], dim=1).tolist()
        rows: list[TokenLogprobs | None] = []
        for values, asked in zip(host, batch.num_logprobs, strict=True):
            if asked is None:
                rows.append(None)
                continue
            ids, lps = values[2:2 + n], values[2 + n:]
            top = [(int(i), lp) for i, lp in zip(ids[:asked], lps[:asked], strict=True)]
            rows.append(TokenLogprobs(int(values[0]), values[1], top))
        return rows
