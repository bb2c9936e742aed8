"""The messages the server's processes send each other: small dataclasses, msgpack on the wire.

Every message between the API process, the tokenizer worker and the scheduler process is one of
the dataclasses below, so a reader can see the whole protocol on one screen. Where each one goes:

    API ──GenerateRequest, AbortRequest──▶ tokenizer worker
    tokenizer worker ──TokenizedRequest, AbortRequest──▶ scheduler
    tokenizer worker, scheduler ──RequestError──▶ API   (a prompt that cannot run: a 400)
    scheduler ──BatchOutput, SchedulerStats──▶ API
    tokenizer worker, scheduler ──Ready──▶ API     (once, when loaded)

Aborts travel the same path as requests (through the tokenizer worker), so an abort can never
overtake the request it cancels: each hop is one ZMQ PUSH/PULL pipe, and a pipe keeps order.

On the wire a message is msgpack with one extension type: a dataclass becomes
`ExtType(1, msgpack([class name, {field: value}]))`, recursively, so messages can nest
(`BatchOutput` holds `Output`s, which hold `TokenLogprob`s) and user data (a chat message that
happens to have a key named like a type tag) can never be mistaken for a message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import msgpack


@dataclass(frozen=True)
class Addresses:
    """The ZMQ endpoints: each process binds the one it receives on (PULL); senders connect.

    They are ipc:// paths (Unix sockets) in a private temporary directory: only this user's
    processes on this machine can reach them, and nothing listens on a network port.
    """

    api: str  # the API process receives outputs, stats and errors here
    tokenizer: str  # the tokenizer worker receives requests and aborts here
    scheduler: str  # the scheduler process receives tokenized requests and aborts here

    @classmethod
    def in_dir(cls, path: str) -> Addresses:
        return cls(*(f"ipc://{os.path.join(path, name)}"
                     for name in ("api", "tokenizer", "scheduler")))


# ---- API → tokenizer worker → scheduler ----


@dataclass
class GenerateRequest:
    """A validated API request: a prompt (text or token ids) or a conversation, and how to
    sample. `params` holds `SamplingParams` fields, already checked by the API process."""

    rid: int  # the API process's request id
    params: dict[str, Any]
    prompt: str | list[int] | None = None  # /v1/completions
    messages: list[dict[str, str]] | None = None  # /v1/chat/completions


@dataclass
class TokenizedRequest:
    """What the scheduler runs: the prompt's token ids, checked against the model's limits."""

    rid: int
    prompt_token_ids: list[int]
    params: dict[str, Any]


@dataclass
class AbortRequest:
    """Stop request `rid` and free its KV blocks (its client went away)."""

    rid: int


# ---- back to the API ----


@dataclass
class RequestError:
    """Request `rid` cannot run; the API answers with this HTTP status and OpenAI error."""

    rid: int
    message: str
    param: str | None = None  # the request field at fault, as OpenAI's error names it
    status: int = 400


@dataclass
class TokenLogprob:
    """One token's log-probability; `top` holds the most likely alternatives (their own `top`
    is empty)."""

    token: str  # the token's text on its own (may be a partial character)
    token_id: int
    logprob: float
    top: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Output:
    """What one request gained in one engine step (or, joined, in several): the new text and
    tokens, nothing older."""

    rid: int
    text: str  # new completion text (stop strings already cut by the engine)
    token_ids: list[int]  # new completion token ids
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" once finished
    num_prompt_tokens: int
    num_output_tokens: int  # completion tokens so far
    num_cached_tokens: int  # prompt tokens served by the prefix cache
    logprobs: list[TokenLogprob] | None = None  # one per new token, when asked

    def followed_by(self, later: Output) -> Output:
        """This output and the same request's next one as a single output (new text and tokens
        joined; the counts and the finish of the later one)."""
        logprobs = (None if self.logprobs is None and later.logprobs is None
                    else (self.logprobs or []) + (later.logprobs or []))
        return Output(self.rid, self.text + later.text, self.token_ids + later.token_ids,
                      later.finished, later.finish_reason, later.num_prompt_tokens,
                      later.num_output_tokens, later.num_cached_tokens, logprobs)


@dataclass
class BatchOutput:
    """Every request's `Output` of one engine step, in one message."""

    outputs: list[Output]


@dataclass
class SchedulerStats:
    """The engine's gauges and counters, as `/metrics` shows them."""

    num_running: int
    num_waiting: int
    num_prompt_tokens: int  # prompt tokens of every request received, since start
    num_generation_tokens: int  # tokens sampled, since start
    num_preemptions: int
    kv_blocks_used: int
    kv_blocks_total: int
    prefix_cache_hit_rate: float  # prompt tokens found in the cache / prompt tokens looked up


@dataclass
class Ready:
    """A child process is up (the scheduler: the model is loaded and the KV cache allocated)."""

    process: str  # "tokenizer" | "scheduler"
    pid: int
    info: dict[str, Any] = field(default_factory=dict)  # scheduler: device, dtype, KV blocks
    worker_pids: list[int] = field(default_factory=list)  # tensor-parallel ranks 1..N-1


MESSAGE_TYPES = {cls.__name__: cls for cls in (
    GenerateRequest, TokenizedRequest, AbortRequest, RequestError, TokenLogprob, Output,
    BatchOutput, SchedulerStats, Ready)}
_EXT_MESSAGE = 1  # the msgpack extension code of a message


def _pack_message(obj: Any) -> msgpack.ExtType:
    if not is_dataclass(obj) or type(obj).__name__ not in MESSAGE_TYPES:
        raise TypeError(f"cannot send {type(obj).__name__}: not a message type")
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}  # shallow: nested ones recurse
    return msgpack.ExtType(_EXT_MESSAGE, msgpack.packb([type(obj).__name__, values],
                                                       default=_pack_message))


def _unpack_message(code: int, data: bytes) -> Any:
    if code != _EXT_MESSAGE:
        return msgpack.ExtType(code, data)
    name, values = msgpack.unpackb(data, ext_hook=_unpack_message)
    return MESSAGE_TYPES[name](**values)


def encode(message: Any) -> bytes:
    """A message dataclass → bytes for a ZMQ frame."""
    return msgpack.packb(message, default=_pack_message)


def decode(data: bytes) -> Any:
    """Bytes from a ZMQ frame → the message dataclass that was sent."""
    return msgpack.unpackb(data, ext_hook=_unpack_message)
