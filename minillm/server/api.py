"""The HTTP side: a FastAPI app speaking the OpenAI API, and `run_server` behind `minillm serve`.

Routes:

- `GET /v1/models`: the one served model. Its name is the checkpoint directory's basename, or
  `--served-model-name`. **Model-name policy**: a request whose `model` names another model is
  refused with 404 (`code: "model_not_found"`), as the OpenAI API and vLLM do, so a client that
  meant another server finds out at once; a request without `model` gets the served one.
- `POST /v1/chat/completions`, `POST /v1/completions`: with `stream: true` the answer is
  Server-Sent Events (`data: {json}\\n\\n` per chunk, `data: [DONE]` last, and a final
  `usage` chunk with `stream_options: {"include_usage": true}`).
- `GET /health`: 200 `{"status": "ok", "pids": ...}` while every child process lives, else
  503. `GET /metrics`: Prometheus text (`metrics.py`).

Every error is OpenAI's JSON, `{"error": {"message", "type", "param", "code"}}`: bad input
(malformed JSON, missing or wrong-typed fields, out-of-range values, empty messages, a prompt
longer than `max_model_len`) is a 400, FastAPI's 422 included; a dead engine process is a 503.

A streaming client that disconnects cancels its response; leaving `EngineClient.generate`
sends an abort to the engine, which frees the request's KV blocks. A non-streaming request
polls for its client's disconnection while it waits, to the same effect. A stream answers
its HTTP status only once the first token is there, so a prompt the tokenizer worker refuses
still gets a 400, never an error in the middle of a 200 stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from minillm.config import EngineConfig
from minillm.server.engine_client import EngineClient, EngineError
from minillm.server.messages import Output, TokenLogprob
from minillm.server.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_logprobs,
    completion_logprobs,
    error_body,
    sampling_params,
    usage,
)

logger = logging.getLogger("uvicorn.error")  # uvicorn's own log, so our lines appear with its
DISCONNECT_POLL_S = 0.5  # how often a waiting non-stream request checks for its client
GRACEFUL_SHUTDOWN_S = 5.0  # on SIGTERM, requests in flight get this long to finish


class ServerState:
    """What the routes share: the engine handle, the served model's name, when it started."""

    def __init__(self, config: EngineConfig, model_name: str) -> None:
        self.config = config
        self.model_name = model_name
        self.engine = EngineClient(config)
        self.created = int(time.time())


def _state(request: Request) -> ServerState:
    return request.app.state.server


router = APIRouter()


# ---- health, metrics, models ----


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    engine = _state(request).engine
    if engine.healthy():
        return JSONResponse({"status": "ok", "pids": engine.pids, "engine": engine.info})
    return JSONResponse({"status": "unhealthy", "error": engine.dead, "pids": engine.pids},
                        status_code=503)


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    engine = _state(request).engine
    return PlainTextResponse(engine.metrics.render(engine.stats),
                             media_type="text/plain; version=0.0.4")


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """The one served model: the checkpoint directory's name, or `--served-model-name`.

    Requests must name this model or leave `model` out; any other name is refused with 404
    (`code: "model_not_found"`), as the OpenAI API and vLLM do.
    """
    state = _state(request)
    return {"object": "list", "data": [{
        "id": state.model_name, "object": "model", "created": state.created,
        "owned_by": "minillm", "root": state.config.model,
        "max_model_len": state.config.max_model_len}]}


def _check_model(state: ServerState, name: str | None) -> None:
    if name is not None and name != state.model_name:
        raise APIError(404, f"The model `{name}` does not exist: this server serves "
                       f"`{state.model_name}`", "model", "model_not_found")


# ---- completions ----


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
    """The assistant's reply to `messages`, rendered with the model's chat template."""
    state = _state(request)
    _check_model(state, req.model)
    params = sampling_params(req, state.config.max_model_len)
    outputs = state.engine.generate(params, messages=[m.as_dict() for m in req.messages])
    fmt = _Format("chat", state.model_name, req.include_usage)
    return await _respond(request, outputs, fmt, bool(req.stream))


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request) -> Response:
    """The continuation of `prompt` (a string or token ids; one prompt per request)."""
    state = _state(request)
    _check_model(state, req.model)
    params = sampling_params(req, state.config.max_model_len)
    outputs = state.engine.generate(params, prompt=req.single_prompt())
    fmt = _Format("text", state.model_name, req.include_usage)
    return await _respond(request, outputs, fmt, bool(req.stream))


class _Format:
    """Builds one request's response objects: chat or text completion, whole or in chunks."""

    def __init__(self, kind: str, model: str, include_usage: bool) -> None:
        self.chat = kind == "chat"
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.text_offset = 0  # completions' logprobs count characters from the start

    def _envelope(self, chunk: bool, choices: list[dict], **extra) -> dict[str, Any]:
        obj = ("chat.completion" + (".chunk" if chunk else "")) if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def _logprobs(self, items: list[TokenLogprob] | None) -> dict | None:
        if items is None:
            return None
        if self.chat:
            return chat_logprobs(items)
        out = completion_logprobs(items, self.text_offset)
        self.text_offset += sum(len(t.token) for t in items)
        return out

    def response(self, outputs: list[Output]) -> dict[str, Any]:
        """The whole (non-stream) answer from all of a request's outputs."""
        last = outputs[-1]
        text = "".join(o.text for o in outputs)
        logprobs = None if last.logprobs is None else self._logprobs(
            [t for o in outputs for t in o.logprobs or ()])
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=logprobs, finish_reason=last.finish_reason)
        return self._envelope(False, [choice], usage=_usage(last))

    def start_chunks(self) -> list[dict[str, Any]]:
        """Chat streams open with the assistant's role, as OpenAI's do."""
        if not self.chat:
            return []
        return [self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None})]

    def chunk(self, out: Output) -> dict[str, Any] | None:
        """One step's chunk; None when it carries nothing (text held back, no logprobs)."""
        if not (out.text or out.logprobs or out.finished):
            return None
        if self.chat:
            choice = {"index": 0, "delta": {"content": out.text} if out.text else {}}
        else:
            choice = {"index": 0, "text": out.text}
        choice.update(logprobs=self._logprobs(out.logprobs),
                      finish_reason=out.finish_reason if out.finished else None)
        return self._chunk(choice)

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        extra = {"usage": None} if self.include_usage else {}
        return self._envelope(True, [choice], **extra)

    def usage_chunk(self, last: Output) -> dict[str, Any]:
        return self._envelope(True, [], usage=_usage(last))


def _usage(last: Output) -> dict[str, Any]:
    return usage(last.num_prompt_tokens, last.num_output_tokens, last.num_cached_tokens)


def _sse(obj: dict[str, Any] | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


async def _respond(request: Request, outputs: AsyncIterator[Output], fmt: _Format,
                   stream: bool) -> Response:
    if not stream:
        collected = await _unless_disconnected(request, _collect(outputs))
        return JSONResponse(fmt.response(collected))
    first = await _unless_disconnected(request, anext(outputs))  # a bad prompt raises here: 400
    return StreamingResponse(_stream(first, outputs, fmt), media_type="text/event-stream")


async def _collect(outputs: AsyncIterator[Output]) -> list[Output]:
    return [out async for out in outputs]


async def _stream(first: Output, outputs: AsyncIterator[Output], fmt: _Format,
                  ) -> AsyncIterator[str]:
    """The SSE body. If the client goes away, Starlette cancels this generator, and closing
    `outputs` aborts the request in the engine."""
    try:
        for chunk in fmt.start_chunks():
            yield _sse(chunk)
        out = first
        while True:
            chunk = fmt.chunk(out)
            if chunk is not None:
                yield _sse(chunk)
            if out.finished:
                break
            out = await anext(outputs)
        if fmt.include_usage:
            yield _sse(fmt.usage_chunk(out))
    except EngineError as e:  # the engine died mid-stream: say so in-band, then end
        yield _sse(error_body(e.status, e.message, e.param))
    finally:
        await outputs.aclose()
    yield _sse("[DONE]")


class _ClientGone(Exception):
    pass


async def _unless_disconnected(request: Request, awaitable: Awaitable) -> Any:
    """Await `awaitable` unless the client disconnects first: then cancel it (which aborts the
    request in the engine) and answer nobody."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise _ClientGone()
    finally:
        task.cancel()


# ---- errors: always OpenAI's JSON ----

_TYPE_TAGS = {"str", "int", "float", "bool"}  # pydantic puts union members' names in `loc`


def _param(loc: tuple) -> str | None:
    """`("body", "messages", 0, "content", "str")` → "messages[0].content"."""
    param = ""
    for part in loc[1:]:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part.isidentifier() and part[0].islower() and part not in _TYPE_TAGS:
            param += f".{part}" if param else part
        else:
            break
    return param or None


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI answers bad bodies with 422 and its own shape; OpenAI's API says 400."""
    errors = exc.errors()
    first = errors[0]
    if first["type"] == "json_invalid":
        message = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
        return JSONResponse(error_body(400, message), status_code=400)
    param = _param(tuple(first["loc"]))
    reasons = dict.fromkeys(e["msg"] for e in errors if _param(tuple(e["loc"])) == param)
    message = f"{param or 'request body'}: {' or '.join(reasons)}"
    return JSONResponse(error_body(400, message, param), status_code=400)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
    code = "service_unavailable" if exc.status == 503 else None
    return JSONResponse(error_body(exc.status, exc.message, exc.param, code),
                        status_code=exc.status)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body(exc.status_code, str(exc.detail)),
                        status_code=exc.status_code, headers=exc.headers)


async def _client_gone(request: Request, exc: _ClientGone) -> Response:
    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it


# ---- the app and the server ----


def build_app(config: EngineConfig, model_name: str, should_exit=lambda: False) -> FastAPI:
    """The FastAPI app; its lifespan starts the engine processes and ends them.

    `should_exit` lets a signal interrupt the wait for the model to load.
    """
    state = ServerState(config, model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        logger.info("minillm: loading %s (%s) in the scheduler process", model_name,
                    config.model)
        try:
            await state.engine.start(should_stop=should_exit)
        except EngineError as e:
            logger.error("minillm: the engine did not start: %s", e.message)
            await state.engine.close()
            raise
        info = state.engine.info
        logger.info("minillm: ready: %s on %s (%s), %d KV blocks of %d tokens", model_name,
                    info["device"], info["dtype"], info["num_kvcache_blocks"],
                    info["kvcache_block_size"])
        try:
            yield
        finally:
            await state.engine.close()

    app = FastAPI(title="minillm", lifespan=lifespan)
    app.state.server = state
    app.include_router(router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(_ClientGone, _client_gone)
    return app


def run_server(model: str | None, host: str = "127.0.0.1", port: int = 8000,
               served_model_name: str | None = None, log_level: str = "info",
               access_log: bool = False, **engine_args) -> int:
    """`minillm serve`: check the flags, start the processes, serve until SIGINT/SIGTERM."""
    import uvicorn

    from minillm.hub import resolve_model

    config = EngineConfig(model=resolve_model(model), **engine_args)  # bad flags fail here
    name = served_model_name or os.path.basename(os.path.normpath(config.model))
    server: uvicorn.Server | None = None
    app = build_app(config, name, should_exit=lambda: server is not None and server.should_exit)
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=access_log,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
    try:
        server.run()  # the app's lifespan ends the engine processes before this returns
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: nothing left to do
        pass
    return 0 if server.started else 1
