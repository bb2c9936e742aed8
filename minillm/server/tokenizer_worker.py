"""The tokenizer worker: prompts and conversations → token ids, checked, on their way to the engine.

It sits between the API process and the scheduler, so the scheduler's loop never spends time on
text: for each `GenerateRequest` it applies the chat template (or encodes the prompt), runs the
same checks as `LLM.generate` (`minillm.engine.encode_prompt`: no empty prompt, ids in the
vocabulary, shorter than `max_model_len`), and forwards a `TokenizedRequest`. A request that
fails a check goes back to the API as a `RequestError` naming the field, which the API turns
into a 400. Aborts pass through in order, so they never overtake their request.

Detokenization does not happen here: it stays with the engine, which turns tokens into text
incrementally and cuts at stop strings in the same code as offline generation, so the text a
server client receives is exactly the text `LLM.generate` returns.
"""

from __future__ import annotations

import os

import zmq

from minillm.config import EngineConfig
from minillm.server.engine_client import (
    PARENT_CHECK_S,
    parent_alive,
    send_from_child,
    setup_child_signals,
)
from minillm.server.messages import (
    AbortRequest,
    Addresses,
    GenerateRequest,
    Ready,
    RequestError,
    TokenizedRequest,
    decode,
    encode,
)


def run_tokenizer_worker(config: EngineConfig, addresses: Addresses, parent_pid: int) -> None:
    """The process's main loop: receive, tokenize and check, forward; until the parent goes."""
    from minillm.tokenizer import Tokenizer  # imported here: only the child needs transformers

    setup_child_signals()
    tokenizer = Tokenizer(config.model)
    vocab_size = config.model_config.vocab_size
    ctx = zmq.Context()
    inbox = ctx.socket(zmq.PULL)
    inbox.bind(addresses.tokenizer)
    to_scheduler = ctx.socket(zmq.PUSH)
    to_scheduler.connect(addresses.scheduler)
    to_api = ctx.socket(zmq.PUSH)
    to_api.connect(addresses.api)

    def send(socket: zmq.Socket, message) -> None:
        send_from_child(socket, encode(message), parent_pid)

    send(to_api, Ready("tokenizer", os.getpid()))
    try:
        while parent_alive(parent_pid):
            if not inbox.poll(int(PARENT_CHECK_S * 1000)):
                continue
            msg = decode(inbox.recv())
            if isinstance(msg, AbortRequest):
                send(to_scheduler, msg)
                continue
            assert isinstance(msg, GenerateRequest), msg
            try:
                ids = _tokenize(msg, tokenizer, vocab_size, config.max_model_len)
            except _BadRequest as e:
                send(to_api, RequestError(msg.rid, e.message, e.param))
                continue
            send(to_scheduler, TokenizedRequest(msg.rid, ids, msg.params))
    finally:
        ctx.destroy(linger=0)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def _tokenize(msg: GenerateRequest, tokenizer, vocab_size: int, max_model_len: int) -> list[int]:
    """The request's prompt token ids, or `_BadRequest` naming the field at fault.

    Any error counts as the request's fault, not only ValueError: a chat template may raise its
    own (e.g. "roles must alternate"), and one bad request must never take the worker down.
    """
    from minillm.engine import encode_prompt

    field = "prompt" if msg.messages is None else "messages"
    try:
        prompt = msg.prompt if msg.messages is None else tokenizer.apply_chat_template(
            msg.messages)
        return encode_prompt(tokenizer, prompt, vocab_size, max_model_len)
    except ValueError as e:  # minillm's checks: "<name>=<value> is invalid: ..."
        message = str(e)
        named = message.split("=", 1)[0]
        param = named if named.startswith(field) and " " not in named else field
        raise _BadRequest(message, param) from None
    except Exception as e:
        raise _BadRequest(f"{field} cannot be used: {type(e).__name__}: {e}", field) from None
