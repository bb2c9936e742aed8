"""The scheduler process: rank 0 of the engine, stepping `LLMEngine` and streaming what it makes.

It owns one `LLMEngine` (and, with `--tensor-parallel-size N`, the engine's N-1 worker
processes, which end with the engine's `close()`). Its loop, as in mini-sglang's scheduler:

1. Take in messages: new `TokenizedRequest`s and `AbortRequest`s. Without blocking when there
   is work (a step must not wait for the network); blocking when idle (no busy loop), waking
   every `PARENT_CHECK_S` to see that the API process is still there.
2. Step the engine once: one forward pass over the running batch.
3. Send every request's new text and tokens of that step back to the API in one `BatchOutput`,
   and the engine's counters in a `SchedulerStats` (every `STATS_INTERVAL_S` while busy, and
   as soon as it goes idle, so `/metrics` shows freed KV blocks at once).

Each turn also checks that the API process is still its parent, and sends never block on a
dead one, so the process ends on its own if the API process is killed (SIGKILL) mid-work.

Detokenization stays here, inside the engine: `LLMEngine.step` turns tokens into text
incrementally and cuts it at stop strings with the same code as offline generation, so a
server client gets exactly the text `LLM.generate` would return. The server only carries the
deltas. A step that fails (a tensor-parallel worker died, say) ends this process; the API sees
it gone and answers 503 instead of waiting.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import zmq

from minillm.config import EngineConfig, SamplingParams
from minillm.server.engine_client import (
    PARENT_CHECK_S,
    parent_alive,
    send_from_child,
    setup_child_signals,
)
from minillm.server.messages import (
    AbortRequest,
    Addresses,
    BatchOutput,
    Output,
    Ready,
    RequestError,
    SchedulerStats,
    TokenizedRequest,
    TokenLogprob,
    decode,
    encode,
)

# While busy, counters go to the API at most this often (each step would be wasteful: a decode
# step of a small model takes milliseconds); /metrics is read every few seconds at most.
STATS_INTERVAL_S = 0.1


def run_scheduler(config: EngineConfig, addresses: Addresses, parent_pid: int) -> None:
    """The process's main: load the model, say ready, run the loop; always close the engine."""
    from minillm.bench import device_name  # the engine imports torch: only in this process
    from minillm.engine import LLMEngine

    setup_child_signals()
    engine = LLMEngine(config)
    try:
        loop = SchedulerLoop(engine, addresses, parent_pid)
        runner = engine.runner
        workers = engine.workers.processes if engine.workers is not None else []
        loop.send(Ready("scheduler", os.getpid(), worker_pids=[p.pid for p in workers], info={
            "device": device_name(runner.device), "dtype": runner.dtype_name,
            "num_kvcache_blocks": engine.scheduler.block_manager.num_blocks,
            "kvcache_block_size": config.kvcache_block_size,
            "max_model_len": config.max_model_len,
            "tensor_parallel_size": config.tensor_parallel_size}))
        loop.run()
    finally:
        engine.close()


@dataclass
class _Live:
    """A request the engine is running, as the API knows it."""

    rid: int  # the API's id
    num_logprobs_sent: int = 0


class SchedulerLoop:
    """Receive → step → send, until the API process goes away (see the module docstring)."""

    def __init__(self, engine, addresses: Addresses, parent_pid: int) -> None:
        self.engine = engine
        self.parent_pid = parent_pid
        self.ctx = zmq.Context()
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.bind(addresses.scheduler)
        self.outbox = self.ctx.socket(zmq.PUSH)
        self.outbox.connect(addresses.api)
        self.live: dict[int, _Live] = {}  # engine request id → request
        self.engine_ids: dict[int, int] = {}  # API id → engine request id
        self.num_prompt_tokens = 0
        self.last_stats = 0.0
        self.stats_due = True

    def send(self, message) -> None:
        send_from_child(self.outbox, encode(message), self.parent_pid)

    def run(self) -> None:
        try:
            while parent_alive(self.parent_pid):
                busy = self.engine.has_unfinished()
                if self.inbox.poll(0 if busy else int(PARENT_CHECK_S * 1000)):
                    self._receive_all()
                elif not busy:
                    if self.engine.workers is not None:
                        self.engine.workers.check_alive()  # a dead rank ends us, so /health sees it
                    continue
                if self.engine.has_unfinished():
                    self._send_outputs(self.engine.step())
                    self.stats_due = True
                self._send_stats()
        finally:
            self.ctx.destroy(linger=0)

    def _receive_all(self) -> None:
        while True:
            try:
                msg = decode(self.inbox.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            self.stats_due = True
            if isinstance(msg, TokenizedRequest):
                self._add(msg)
            elif isinstance(msg, AbortRequest):
                engine_id = self.engine_ids.pop(msg.rid, None)
                if engine_id is not None:
                    self.engine.abort(engine_id)
                    del self.live[engine_id]

    def _add(self, msg: TokenizedRequest) -> None:
        try:
            params = SamplingParams(**msg.params)
            engine_id = self.engine.add_request(None, params, prompt_token_ids=msg.prompt_token_ids)
        except ValueError as e:  # the API checked already; this is a last line of defence
            self.send(RequestError(msg.rid, str(e)))
            return
        self.live[engine_id] = _Live(msg.rid)
        self.engine_ids[msg.rid] = engine_id
        self.num_prompt_tokens += len(msg.prompt_token_ids)

    def _send_outputs(self, outputs) -> None:
        batch = []
        for out in outputs:
            req = self.live.get(out.request_id)
            if req is None:
                continue
            batch.append(Output(
                rid=req.rid, text=out.delta_text, token_ids=out.delta_token_ids,
                finished=out.finished, finish_reason=out.finish_reason,
                num_prompt_tokens=len(out.prompt_token_ids), num_output_tokens=len(out.token_ids),
                num_cached_tokens=out.num_cached_tokens, logprobs=self._new_logprobs(req, out)))
            if out.finished:
                del self.live[out.request_id]
                del self.engine_ids[req.rid]
        if batch:
            self.send(BatchOutput(batch))

    def _new_logprobs(self, req: _Live, out) -> list[TokenLogprob] | None:
        """The logprobs of tokens not sent before, with each token's text."""
        if out.logprobs is None:
            return None
        new = out.logprobs[req.num_logprobs_sent:]
        req.num_logprobs_sent = len(out.logprobs)
        text = self._token_text
        return [TokenLogprob(text(lp["token_id"]), lp["token_id"], lp["logprob"],
                             [TokenLogprob(text(t), t, v) for t, v in lp["top"]])
                for lp in new if lp is not None]

    def _token_text(self, token_id: int) -> str:
        return self.engine.tokenizer.decode([token_id], skip_special_tokens=False)

    def _send_stats(self) -> None:
        """Counters to the API: while busy every STATS_INTERVAL_S, when idle once per change."""
        now = time.monotonic()
        if self.engine.has_unfinished():
            if now - self.last_stats < STATS_INTERVAL_S:
                return
        elif not self.stats_due:
            return
        s = self.engine.stats()
        self.send(SchedulerStats(
            num_running=int(s["running"]), num_waiting=int(s["waiting"]),
            num_prompt_tokens=self.num_prompt_tokens,
            num_generation_tokens=int(s["generated_tokens"]),
            num_preemptions=int(s["preemptions"]), kv_blocks_used=int(s["kv_blocks_used"]),
            kv_blocks_total=int(s["kv_blocks_total"]),
            prefix_cache_hit_rate=float(s["prefix_cache_hit_rate"])))
        self.last_stats, self.stats_due = now, False
