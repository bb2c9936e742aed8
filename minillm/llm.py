"""`LLM`: the Python user's entry point — generate, stream and chat."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from minillm.config import EngineConfig, SamplingParams
from minillm.engine import LLMEngine, Prompt, RequestOutput
from minillm.hub import resolve_model

Message = dict[str, str]


@dataclass
class StreamChunk:
    """One piece of a streamed completion: `text` is the new text only."""

    request_id: int
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None


class LLM:
    """Offline generation with minillm's engine; arguments are `EngineConfig`'s fields.

    >>> llm = LLM()  # the demo model, SmolLM2-135M-Instruct
    >>> llm.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=8))[0].text
    """

    def __init__(self, model: str | None = None, **engine_args) -> None:
        config = EngineConfig(model=resolve_model(model), **engine_args)
        self.engine = LLMEngine(config)
        self.config = config

    # ---- generate ----

    @staticmethod
    def _as_prompt_list(prompts) -> list[Prompt]:
        """One prompt (a string or a list of ints) or a list of them -> a list of prompts."""
        if isinstance(prompts, str):
            return [prompts]
        if isinstance(prompts, (list, tuple)):
            if prompts and all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
                return [list(prompts)]
            return list(prompts)
        raise ValueError(f"prompts of type {type(prompts).__name__} is invalid: must be a string,"
                         " a list of token ids, or a list of those")

    @staticmethod
    def _params_list(params, n: int) -> list[SamplingParams]:
        if params is None:
            return [SamplingParams()] * n
        if isinstance(params, SamplingParams):
            return [params] * n
        params = list(params)
        if len(params) != n or not all(isinstance(p, SamplingParams) for p in params):
            raise ValueError(f"sampling_params is invalid: give one SamplingParams or a list of "
                             f"{n} (one per prompt)")
        return params

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True,
                 show: bool = False) -> list[RequestOutput]:
        """Complete every prompt; outputs in the order of the prompts.

        All prompts are validated before any is queued, so a bad one raises ValueError and
        nothing runs. `show=True` displays a live `minillm.viz.Dashboard` of the run (KV pool,
        queues, batches, rates) in the notebook, and no progress bar.
        """
        prompt_list = self._as_prompt_list(prompts)
        if not prompt_list:
            raise ValueError("prompts=[] is invalid: give at least one prompt")
        params = self._params_list(sampling_params, len(prompt_list))
        token_ids = [self.engine.encode_prompt(p) for p in prompt_list]
        if show:
            from minillm.viz.dashboard import Dashboard

            with Dashboard(self) as dashboard:
                dashboard.display()
                return self._run(prompt_list, token_ids, params, use_tqdm=False)
        return self._run(prompt_list, token_ids, params, use_tqdm)

    def _run(self, prompts: list[Prompt], token_ids: list[list[int]],
             params: list[SamplingParams], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.engine
        ids = [engine.add_request(p, sp, prompt_token_ids=t)
               for p, t, sp in zip(prompts, token_ids, params)]
        results: dict[int, RequestOutput] = {}
        bar = _Progress(len(ids)) if use_tqdm else None
        try:
            while len(results) < len(ids):
                stats_before = engine.scheduler.num_prefill_tokens
                t0 = time.perf_counter()
                outputs = engine.step()
                for out in outputs:
                    if out.finished:
                        results[out.request_id] = out
                if bar is not None:
                    prefill = engine.scheduler.num_prefill_tokens - stats_before
                    bar.update(outputs, prefill, time.perf_counter() - t0)
        except BaseException:
            for rid in ids:
                if rid not in results:
                    engine.abort(rid)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [results[rid] for rid in ids]

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None,
               ) -> Iterator[StreamChunk]:
        """Yield the completion of one prompt piece by piece; the pieces join to `generate`'s
        text. Closing the iterator early aborts the request."""
        engine = self.engine
        rid = engine.add_request(prompt, sampling_params)
        done = False
        try:
            while not done:
                for out in engine.step():
                    if out.request_id != rid:
                        continue
                    done = out.finished
                    if out.delta_text or out.finished or out.delta_token_ids:
                        yield StreamChunk(rid, out.delta_text, out.delta_token_ids, out.finished,
                                          out.finish_reason)
        finally:
            if not done:
                engine.abort(rid)

    def chat(self, messages, sampling_params=None, use_tqdm: bool = False):
        """Reply to one conversation (a list of messages) or to a list of conversations."""
        single = bool(messages) and isinstance(messages[0], dict)
        conversations = [messages] if single else list(messages)
        if not conversations:
            raise ValueError("messages=[] is invalid: give at least one message")
        token_ids = [self.chat_template(c) for c in conversations]
        for t in token_ids:
            self.engine.encode_prompt(t)  # length and vocabulary checks
        params = self._params_list(sampling_params, len(conversations))
        outs = self._run([None] * len(conversations), token_ids, params, use_tqdm)
        return outs[0] if single else outs

    def chat_template(self, messages: list[Message]) -> list[int]:
        """The prompt token ids the chat template makes of `messages`."""
        if self.engine.tokenizer is None:
            raise ValueError("chat is invalid with skip_tokenizer_init=True: the chat template "
                             "needs the tokenizer")
        return self.engine.tokenizer.apply_chat_template(messages)

    # ---- inspection and lifetime ----

    def stats(self) -> dict[str, float]:
        return self.engine.stats()

    def close(self) -> None:
        """Abort what is still running and release the model and its KV cache."""
        engine = getattr(self, "engine", None)
        if engine is None:
            return
        for seq in list(engine.scheduler.running) + list(engine.scheduler.waiting):
            engine.abort(seq.seq_id)
        engine.close()
        self.engine = None

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Progress:
    """A tqdm bar over requests, with prefill and decode tokens per second in its postfix."""

    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="Generating", dynamic_ncols=True)
        self.prefill_tokens = self.decode_tokens = 0
        self.prefill_s = self.decode_s = 0.0

    def update(self, outputs: list[RequestOutput], prefill: int, seconds: float) -> None:
        if prefill:
            self.prefill_tokens += prefill
            self.prefill_s += seconds
        else:
            self.decode_tokens += len(outputs)
            self.decode_s += seconds
        self.bar.set_postfix(prefill=f"{self.prefill_tokens / max(self.prefill_s, 1e-9):.0f}tok/s",
                             decode=f"{self.decode_tokens / max(self.decode_s, 1e-9):.0f}tok/s",
                             refresh=False)
        self.bar.update(sum(o.finished for o in outputs))

    def close(self) -> None:
        self.bar.close()
