"""The API process's handle on the engine: it starts the two child processes, sends them
requests, routes what comes back to the request that waits for it, and watches that they live.

Process model (three processes, as mini-sglang; ZMQ PUSH/PULL over ipc://, `messages.py`):

    API process (FastAPI + uvicorn, asyncio)      EngineClient: one asyncio queue per request
        │ GenerateRequest, AbortRequest    ▲ BatchOutput, SchedulerStats, RequestError, Ready
        ▼                                  │
    tokenizer worker ──TokenizedRequest, AbortRequest──▶ scheduler process (LLMEngine, rank 0)
                                                          └─ tensor-parallel ranks 1..N-1

Why separate processes: the engine's loop must step the GPU without pause, and Python runs one
thread at a time; HTTP parsing, JSON, and tokenization in the same interpreter would stall it.

Failure: a watchdog checks the children every `WATCHDOG_S`; once one has died, `dead` says
why, every request in flight fails at once with a 503, and every new one too: the server never
hangs on a process that is gone. The children in turn watch this process (`parent_alive`) and
end if it disappears without closing them (SIGKILL).

Shutdown: SIGINT or SIGTERM reach uvicorn, which lets requests in flight finish for a few
seconds, then the app's lifespan calls `close()`: SIGTERM to each child (SIGKILL if it lingers),
whose `finally` blocks run; the scheduler's closes the engine, which ends its tensor-parallel
workers. The children are also daemonic, so they end with this process, except the scheduler
when it has tensor-parallel workers (a daemonic process may not start children). Children
ignore SIGINT: Ctrl-C in a terminal reaches the whole process group, and only this process
decides the order of the shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import zmq
import zmq.asyncio

from minillm.config import EngineConfig
from minillm.server.messages import (
    AbortRequest,
    Addresses,
    BatchOutput,
    GenerateRequest,
    Output,
    Ready,
    RequestError,
    SchedulerStats,
    decode,
    encode,
)
from minillm.server.metrics import ServerMetrics

PARENT_CHECK_S = 1.0  # how often an idle child checks that the API process is alive
WATCHDOG_S = 0.2  # how often the API process checks its children: the bound on failing fast
SHUTDOWN_TIMEOUT_S = 5.0  # how long a child may take to end after SIGTERM before SIGKILL


class EngineError(Exception):
    """A request the engine cannot serve: a bad prompt (400) or a dead process (503)."""

    def __init__(self, message: str, status: int = 503, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param = message, status, param


# ---- helpers the child processes call ----


def setup_child_signals() -> None:
    """In a child: Ctrl-C in a terminal reaches the whole process group, but only the API
    process decides when to stop, so ignore SIGINT; SIGTERM (sent by `close()`) raises
    SystemExit, so `finally` blocks run (the scheduler closes its engine and its TP workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: _exit())


def _exit() -> None:
    raise SystemExit(0)


def parent_alive(parent_pid: int) -> bool:
    """False once the API process is gone (the child was re-parented). A cheap system call:
    the children ask at every turn of their loops."""
    return os.getppid() == parent_pid


def send_from_child(socket: zmq.Socket, data: bytes, parent_pid: int) -> None:
    """Send, waiting while the receiver is slow, but never hanging once the API process is
    gone (a PUSH socket whose peer died would otherwise block forever)."""
    while True:
        try:
            socket.send(data, zmq.NOBLOCK)
            return
        except zmq.Again:
            if not parent_alive(parent_pid):
                raise SystemExit(0) from None
            socket.poll(int(PARENT_CHECK_S * 1000), zmq.POLLOUT)


# ---- the API side ----


class EngineClient:
    """Start, feed, watch and stop the tokenizer worker and the scheduler process.

    `generate()` is the one call a route makes: an async iterator of one request's `Output`s
    that ends after the finished one. Leaving it early (the client went away) aborts the request
    in the engine, which frees its KV blocks.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self.stats: SchedulerStats | None = None  # the scheduler's latest counters
        self.info: dict[str, Any] = {}  # what the scheduler reported when ready
        self.pids: dict[str, Any] = {"api": os.getpid()}
        self.dead: str | None = None  # why the engine cannot serve, once a child has died
        self.processes: dict[str, mp.process.BaseProcess] = {}
        self._queues: dict[int, asyncio.Queue] = {}  # request id → its outputs
        self._rids = itertools.count()
        self._tasks: list[asyncio.Task] = []
        self._dir: str | None = None
        self._ctx: zmq.asyncio.Context | None = None

    # ---- lifetime ----

    async def start(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Start both children and wait until each reports ready (the model loaded)."""
        from minillm.server.scheduler_process import run_scheduler
        from minillm.server.tokenizer_worker import run_tokenizer_worker

        self._dir = tempfile.mkdtemp(prefix="minillm-server-")
        addresses = Addresses.in_dir(self._dir)
        self._ctx = zmq.asyncio.Context()
        self._inbox = self._ctx.socket(zmq.PULL)
        self._inbox.bind(addresses.api)
        # Sends never wait: a PUSH socket queues up to its high-water mark. A plain (blocking)
        # socket sent with NOBLOCK keeps `_send` synchronous, so aborts can go out from
        # `finally` blocks of cancelled tasks.
        self._sync_ctx = zmq.Context()
        self._outbox = self._sync_ctx.socket(zmq.PUSH)
        self._outbox.connect(addresses.tokenizer)

        spawn = mp.get_context("spawn")  # a fresh interpreter: no CUDA or threads inherited
        args = (self.config, addresses, os.getpid())
        # A daemonic process may not start children, and the scheduler starts the tensor-
        # parallel workers; it is then ended by close() and its own parent check alone.
        self.processes = {
            "tokenizer": spawn.Process(target=run_tokenizer_worker, args=args, daemon=True,
                                       name="minillm-tokenizer"),
            "scheduler": spawn.Process(target=run_scheduler, args=args, name="minillm-scheduler",
                                       daemon=self.config.tensor_parallel_size == 1),
        }
        for p in self.processes.values():
            p.start()
        waiting = set(self.processes)
        while waiting:
            if should_stop():
                raise EngineError("stopped while starting")
            self._check_children()
            if self.dead:
                raise EngineError(self.dead)
            if await self._inbox.poll(int(WATCHDOG_S * 1000)):
                msg = decode(await self._inbox.recv())
                if isinstance(msg, Ready):
                    waiting.discard(msg.process)
                    self.pids[msg.process] = msg.pid
                    if msg.process == "scheduler":
                        self.pids["tp_workers"] = msg.worker_pids
                        self.info = msg.info
        self._tasks = [asyncio.create_task(self._receive_loop()),
                       asyncio.create_task(self._watchdog())]

    async def close(self) -> None:
        """End both children (SIGTERM, then SIGKILL after a grace period) and the sockets."""
        for task in self._tasks:
            task.cancel()
        self.dead = self.dead or "the server is shutting down"
        self._fail_all(self.dead)
        for p in self.processes.values():
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        for p in self.processes.values():
            while p.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if p.is_alive():
                p.kill()
            p.join(timeout=1)
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._sync_ctx.destroy(linger=0)
            self._ctx = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # ---- health ----

    def _check_children(self) -> None:
        for name, p in self.processes.items():
            if not p.is_alive() and self.dead is None:
                self.dead = f"the {name} process (pid {p.pid}) died with exit code {p.exitcode}"

    def healthy(self) -> bool:
        self._check_children()
        return self.dead is None and bool(self.processes)

    async def _watchdog(self) -> None:
        while self.dead is None:
            await asyncio.sleep(WATCHDOG_S)
            self._check_children()
        self._fail_all(self.dead)

    def _fail_all(self, reason: str) -> None:
        for rid, queue in self._queues.items():
            queue.put_nowait(RequestError(rid, f"the engine cannot serve: {reason}", status=503))

    # ---- requests ----

    def _send(self, message) -> None:
        try:
            self._outbox.send(message if isinstance(message, bytes) else encode(message),
                              zmq.NOBLOCK)
        except zmq.ZMQError as e:  # queue full or socket closed: the tokenizer is not reading
            raise EngineError(f"the engine cannot take requests: {e}") from None

    async def _receive_loop(self) -> None:
        while True:
            msg = decode(await self._inbox.recv())
            if isinstance(msg, BatchOutput):
                for out in msg.outputs:
                    queue = self._queues.get(out.rid)
                    if queue is not None:
                        queue.put_nowait(out)
            elif isinstance(msg, RequestError):
                queue = self._queues.get(msg.rid)
                if queue is not None:
                    queue.put_nowait(msg)
            elif isinstance(msg, SchedulerStats):
                self.stats = msg

    async def generate(self, params: dict[str, Any], prompt: str | list[int] | None = None,
                       messages: list[dict[str, str]] | None = None) -> AsyncIterator[Output]:
        """One request's outputs, step by step, until the finished one. Steps that arrived while
        the caller was busy come joined into one output.

        Raises `EngineError`: status 400 when the prompt cannot run (too long, empty messages),
        503 when the engine is gone. Closing the iterator early aborts the request.
        """
        if self.dead is not None:
            raise EngineError(f"the engine cannot serve: {self.dead}")
        rid = next(self._rids)
        try:
            message = encode(GenerateRequest(rid, params, prompt=prompt, messages=messages))
        except (OverflowError, ValueError, TypeError) as e:  # e.g. a token id past 2**64
            raise EngineError(f"the request cannot be encoded: {e}", 400,
                              "prompt" if messages is None else "messages") from None
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[rid] = queue
        backlog: collections.deque = collections.deque()  # taken from the queue, not yet given
        done = False
        start = last = time.perf_counter()
        try:
            self._send(message)
            while not done:
                if not backlog:
                    backlog.append(await queue.get())
                while not queue.empty():
                    backlog.append(queue.get_nowait())
                now = time.perf_counter()
                item = None
                # Outputs that piled up while the caller was busy (a stream writing to a slow
                # client, an API process behind the engine) go out as one: the caller's work
                # then follows its own pace, not the engine's step rate. Text is unchanged.
                while backlog and isinstance(backlog[0], Output) and not done:
                    out = backlog.popleft()
                    if out.token_ids:
                        self.metrics.observe_token(last == start, now - start, now - last)
                        last = now
                    item = out if item is None else item.followed_by(out)
                    done = out.finished
                if item is None:  # a RequestError: the engine never had it, or is gone
                    error = backlog.popleft()
                    done = True  # nothing to abort
                    raise EngineError(error.message, error.status, error.param)
                if done:
                    self.metrics.observe_finished(item.finish_reason)
                yield item
        finally:
            del self._queues[rid]
            if not done and self.dead is None:
                try:
                    self._send(AbortRequest(rid))
                except EngineError:
                    pass
