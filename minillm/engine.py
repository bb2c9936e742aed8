"""The engine loop: requests in, scheduler → runner → scheduler each step, text out.

`LLMEngine` ties the pieces together for one process: the tokenizer turns prompts into token
ids, the scheduler picks each step's work, the model runner computes and samples, and an
incremental detokenizer per request turns tokens into text, cutting at stop strings. The `LLM`
class and the server drive it through `add_request` / `step` / `abort`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from minillm.config import EngineConfig, SamplingParams
from minillm.runner import ModelRunner, resolve_device
from minillm.sampling import SamplerOutput
from minillm.scheduler import Batch, Scheduler
from minillm.sequence import Sequence, StepInput
from minillm.tokenizer import IncrementalDetokenizer, Tokenizer, find_stop, stop_holdback
from minillm.transfer import HostTokens

Prompt = str | list[int]
# Called after every step that ran: (engine, batch, outputs, the step's seconds). For
# recording and drawing (`minillm.trace`, `minillm.viz.Dashboard`); the step's cost when none
# is registered is one empty-list check.
StepObserver = Callable[["LLMEngine", Batch, list["RequestOutput"], float], None]


def encode_prompt(tokenizer: Tokenizer | None, prompt: Prompt, vocab_size: int, max_model_len: int,
                  ) -> list[int]:
    """Token ids of a prompt, validated: non-empty, in the vocabulary, short enough.

    A function (not only the method) so that the server's tokenizer worker runs the same
    checks without an engine."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("a text prompt is invalid with skip_tokenizer_init=True: pass "
                             "token ids")
        if not prompt:
            raise ValueError("prompt='' is invalid: a prompt needs at least one token")
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, (list, tuple)):
        ids = list(prompt)
        bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int)
               or not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are invalid: each must be an int in "
                             f"[0, {vocab_size - 1}]")
    else:
        raise ValueError(f"prompt of type {type(prompt).__name__} is invalid: must be a "
                         "string or a list of token ids")
    if not ids:
        raise ValueError("prompt is invalid: it has no tokens")
    if len(ids) >= max_model_len:
        raise ValueError(f"prompt has {len(ids)} tokens, too many for max_model_len="
                         f"{max_model_len}: a prompt may have at most {max_model_len - 1} tokens")
    return ids


@dataclass
class RequestOutput:
    """A request's state after a step: cumulative text and tokens, plus what is new."""

    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    text: str  # completion text so far (stop strings cut off)
    token_ids: list[int]  # completion token ids so far
    delta_text: str = ""  # text new since the previous output of this request
    delta_token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache
    logprobs: list[dict] | None = None  # per token: {"token_id", "logprob", "top": [(id, lp)]}


@dataclass
class _Request:
    seq: Sequence
    prompt: str | None
    detokenizer: IncrementalDetokenizer | None  # None: skip_tokenizer_init, no text
    text: str = ""  # visible completion text (after stop-string cuts)
    num_emitted_chars: int = 0  # of `text`, already returned as deltas
    num_emitted_tokens: int = 0
    logprobs: list[dict] | None = None


@dataclass
class _InFlight:
    """A launched step whose tokens have not been committed yet."""

    batch: Batch
    sampled: SamplerOutput  # token ids still on the device
    host_tokens: HostTokens
    pending: list[tuple[Sequence, int] | None] = field(default_factory=list)  # Scheduler.advance


def needs_token_history(batch: Batch) -> bool:
    """Whether sampling this batch reads earlier tokens' values (repetition, presence or
    frequency penalties): then the previous step must be committed before it launches."""
    for seq in batch.seqs:
        p = seq.params
        if p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
            return True
    return False


class LLMEngine:
    """One process's engine: `add_request`, then `step` until `has_unfinished()` is False."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        # skip_tokenizer_init: token ids in and out only (benchmarks on random weights, or a
        # caller that tokenizes itself); the EOS ids then come from config.json alone.
        self.tokenizer = None if config.skip_tokenizer_init else Tokenizer(config.model)
        if self.tokenizer is not None:
            config.eos_token_ids = tuple(dict.fromkeys((*config.eos_token_ids,
                                                        *self.tokenizer.eos_token_ids)))
        self.workers = None
        if config.tensor_parallel_size > 1:
            from minillm.worker import WorkerGroup

            self.workers = WorkerGroup(config, resolve_device(config.device).type)
        try:
            self.runner = ModelRunner(config)
        except BaseException:
            if self.workers is not None:
                self.workers.abort()  # no process group or worker outlives a failed start
            raise
        if self.workers is not None:  # however the group ends (close, exit), graphs go first
            self.workers.before_close = self.runner.release_graphs
        self.scheduler = Scheduler(config)
        self.vocab_size = config.model_config.vocab_size
        self._requests: dict[int, _Request] = {}
        self.step_observers: list[StepObserver] = []
        # Overlap scheduling (as mini-sglang): step N+1 is launched before step N's tokens are
        # read back. On by default on one CUDA device (the CPU computes as it launches, so
        # there is nothing to hide there); tensor-parallel workers would need step N's tokens
        # on their own devices, so it stays off with more than one rank.
        self.overlap = (config.overlap_schedule if config.overlap_schedule is not None
                        else self.runner.device.type == "cuda" and self.workers is None)
        self._in_flight: _InFlight | None = None

    # ---- requests ----

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt, validated: non-empty, in the vocabulary, short enough."""
        return encode_prompt(self.tokenizer, prompt, self.vocab_size, self.config.max_model_len)

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None,
                    prompt_token_ids: list[int] | None = None) -> int:
        """Queue a request; returns its id. Raises ValueError before queueing if it is bad."""
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params of type {type(params).__name__} is invalid: must be "
                             "SamplingParams")
        if self.tokenizer is None and params.stop:
            raise ValueError(f"stop={params.stop!r} is invalid with skip_tokenizer_init=True: "
                             "stop strings need text (use stop_token_ids)")
        ids = prompt_token_ids if prompt_token_ids is not None else self.encode_prompt(prompt)
        seq = Sequence(ids, params)
        self.scheduler.add(seq)
        detok = None if self.tokenizer is None else IncrementalDetokenizer(self.tokenizer, ids)
        self._requests[seq.seq_id] = _Request(
            seq, prompt if isinstance(prompt, str) else None, detok,
            logprobs=[] if params.logprobs is not None else None)
        return seq.seq_id

    def abort(self, request_id: int) -> None:
        """Stop a request now; its KV blocks are freed. Unknown ids are ignored."""
        if self.scheduler.abort(request_id) is not None:
            self._requests.pop(request_id, None)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or self._in_flight is not None

    # ---- one step ----

    def step(self) -> list[RequestOutput]:
        """Schedule, run and sample one step; outputs for the requests that got a token.

        With overlap scheduling the outputs are those of the step launched by the previous
        call: this call schedules and launches the next step first, then waits for the
        previous one's tokens while the device computes.
        """
        if not self.has_unfinished():
            return []
        t0 = time.perf_counter() if self.step_observers else 0.0
        prev, self._in_flight = self._in_flight, None
        batch = self.scheduler.schedule() if self.scheduler.has_unfinished() else None
        done: list[tuple[Batch, list[RequestOutput]]] = []
        if batch is not None and not batch.is_empty:
            # Inputs first: a sequence that `_finish(prev)` ends still has its blocks here,
            # and its row's token is dropped by `advance`.
            inputs = batch.step_inputs()
            prev_tokens = prev.sampled.token_ids if prev is not None and prev.pending else None
            if prev is not None and needs_token_history(batch):
                done.append(self._finish(prev))  # penalties read the real tokens: no overlap
                prev = None
            launched = self._launch(batch, inputs, prev_tokens)
            if prev is not None:
                done.append(self._finish(prev))  # the device is busy with `batch` meanwhile
            launched.pending = self.scheduler.advance(batch)
            if self.overlap:
                self._in_flight = launched
            else:
                done.append(self._finish(launched))
        elif prev is not None:
            done.append(self._finish(prev))
        if self.step_observers:
            seconds = time.perf_counter() - t0
            for ran, outputs in done:
                for observe in list(self.step_observers):
                    observe(self, ran, outputs, seconds)
        return [out for _, outputs in done for out in outputs]

    def _launch(self, batch: Batch, inputs: list[StepInput],
                prev_tokens: torch.Tensor | None) -> _InFlight:
        """Start `batch` on the device (its placeholders read `prev_tokens` there) and the
        copy of its tokens to the host; returns without waiting for either."""
        if self.workers is not None:
            self.workers.step(inputs, batch.sampled)
        try:
            sampled = self.runner.run(batch, inputs, prev_tokens)
        except RuntimeError:
            if self.workers is not None:
                self.workers.check_alive()  # a dead worker explains the failure best
            raise
        if self.workers is not None:
            self.workers.step_done()
        return _InFlight(batch, sampled, HostTokens(sampled.token_ids))

    def _finish(self, step: _InFlight) -> tuple[Batch, list[RequestOutput]]:
        """Wait for `step`'s tokens, commit them, detokenize; the step's outputs."""
        tokens = step.host_tokens.get()
        self.scheduler.commit(step.batch, step.pending, tokens)
        outputs = []
        for row, entry in enumerate(step.pending):
            req = None if entry is None else self._requests.get(entry[0].seq_id)
            if req is None:
                continue  # aborted, or finished by a stop string while the step ran
            if req.logprobs is not None:
                req.logprobs.append(step.sampled.row_logprobs(row))
            outputs.append(self._update(req, tokens[row]))
            if req.seq.is_finished:
                del self._requests[req.seq.seq_id]
        return step.batch, outputs

    def _update(self, req: _Request, token: int) -> RequestOutput:
        """Detokenize the new token, apply stop strings, and say what is new."""
        seq, stops = req.seq, req.seq.params.stop
        text = ""
        if req.detokenizer is not None:
            before = len(req.detokenizer.text)
            req.detokenizer.add(token)
            if seq.is_finished:
                req.detokenizer.flush()
            text = req.detokenizer.text
        if stops:
            cut = find_stop(text, stops, before)
            if cut is not None:
                text = text[:cut]
                if seq.is_finished:
                    seq.finish_reason = "stop"  # the stop string came with the last token
                else:
                    self.scheduler.finish(seq, "stop")
        visible = text if seq.is_finished or not stops else text[: len(text) -
                                                                  stop_holdback(text, stops)]
        req.text = text
        delta = visible[req.num_emitted_chars:]
        req.num_emitted_chars = len(visible)
        completion = seq.completion_token_ids
        new_tokens = completion[req.num_emitted_tokens:]
        req.num_emitted_tokens = len(completion)
        return RequestOutput(
            request_id=seq.seq_id, prompt=req.prompt, prompt_token_ids=seq.prompt_token_ids,
            text=text if seq.is_finished else visible, token_ids=completion, delta_text=delta,
            delta_token_ids=new_tokens, finished=seq.is_finished, finish_reason=seq.finish_reason,
            num_cached_tokens=seq.num_cached_tokens, logprobs=req.logprobs)

    def close(self) -> None:
        """End the tensor-parallel workers (if any); the engine cannot step afterwards."""
        if self.workers is not None:
            self.workers.close()
            self.workers = None

    def stats(self) -> dict[str, float]:
        """Scheduler counters plus the KV cache's size."""
        out = dict(self.scheduler.stats())
        out["kv_cache_bytes"] = self.runner.kv_cache_bytes()
        return out
