"""The OpenAI API's request and response shapes: pydantic models in, plain dicts out.

Requests are validated twice, by the tool made for each job: pydantic checks the JSON's shape
and types (strict: "0.5" is not a number, `true` is not an int), then `SamplingParams` checks
the values with the same rules as offline generation. Either failure becomes a 400 with
OpenAI's error JSON whose `param` names the field. Fields the API does not know are ignored,
as vLLM does. Extensions beyond OpenAI's fields use vLLM's names (`top_k`, `min_p`,
`repetition_penalty`, `min_tokens`, `ignore_eos`, `stop_token_ids`).

Defaults: `max_tokens` is 16 for /v1/completions (OpenAI's legacy default) and unlimited for
chat (up to `max_model_len`); `temperature` and `top_p` are 1, as in the OpenAI API. A prompt
plus `max_tokens` longer than `max_model_len` is not refused: generation stops at
`max_model_len` with finish_reason "length".
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from minillm.config import SamplingParams
from minillm.server.messages import TokenLogprob

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class APIError(Exception):
    """An error the API answers with `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---- requests ----


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool | None = False


class _SamplingFields(_Strict):
    """The fields both endpoints share."""

    model: str | None = None  # None: the served model
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = 1
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None  # accepted, unused
    # extensions, vLLM's names
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: str  # checked with the chat template, by the tokenizer worker
    content: str | list[TextPart]
    name: str | None = None

    def as_dict(self) -> dict[str, str]:
        content = self.content if isinstance(self.content, str) else "".join(
            p.text for p in self.content)
        return {"role": self.role, "content": content}


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None  # the newer name of max_tokens; wins if both
    logprobs: bool | None = False
    top_logprobs: int | None = None


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = False

    def single_prompt(self) -> str | list[int]:
        """The one prompt of this request (a batch of prompts is refused: n=1, one prompt)."""
        p = self.prompt
        if isinstance(p, list) and p and not isinstance(p[0], int):
            if len(p) != 1:
                raise APIError(400, f"prompt has {len(p)} prompts: this server takes one prompt "
                               "per request", "prompt")
            return p[0]
        return p


def sampling_params(req: ChatCompletionRequest | CompletionRequest,
                    max_model_len: int) -> dict[str, Any]:
    """`SamplingParams` of a request, checked, as a dict for the engine; APIError(400) naming
    the request's field if a value is out of range."""
    chat = isinstance(req, ChatCompletionRequest)
    if req.n not in (None, 1):
        raise APIError(400, f"n={req.n} is invalid: this server generates one choice (n=1)", "n")
    if not chat and req.echo:
        raise APIError(400, "echo=true is not supported", "echo")
    aliases = {}  # SamplingParams' field name → the request's, where they differ
    if chat:
        max_tokens = req.max_completion_tokens
        if max_tokens is not None:
            aliases["max_tokens"] = "max_completion_tokens"
        else:
            max_tokens = req.max_tokens
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs requires logprobs=true", "top_logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        aliases["logprobs"] = "top_logprobs"
    else:
        max_tokens, logprobs = req.max_tokens, req.logprobs
    if max_tokens is None:
        max_tokens = max_model_len if chat else COMPLETIONS_DEFAULT_MAX_TOKENS
    given = dict(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
                 max_tokens=max_tokens, min_tokens=req.min_tokens, ignore_eos=req.ignore_eos,
                 stop=req.stop, stop_token_ids=req.stop_token_ids, seed=req.seed,
                 repetition_penalty=req.repetition_penalty,
                 presence_penalty=req.presence_penalty,
                 frequency_penalty=req.frequency_penalty, logprobs=logprobs)
    try:
        params = SamplingParams(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:  # "<field>=<value> is invalid: ..." (see minillm.config)
        name = str(e).split("=", 1)[0].removesuffix("[...]")
        raise APIError(400, str(e), aliases.get(name, name)) from None
    fields = asdict(params)
    for name, value in fields.items():  # msgpack carries 64-bit integers, the engine no more
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and not -(1 << 63) <= v < (1 << 63):
                name = aliases.get(name, name)
                raise APIError(400, f"{name}={v} is invalid: must fit in 64 bits", name)
    return fields


# ---- responses ----


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def chat_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    """Chat's shape: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}."""
    def entry(t: TokenLogprob) -> dict[str, Any]:
        return {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode())}

    return {"content": [{**entry(t), "top_logprobs": [entry(a) for a in t.top]} for t in items]}


def completion_logprobs(items: list[TokenLogprob], text_offset: int) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, `text_offset` counting from the start of
    the completion (`text_offset` is where `items` begin)."""
    offsets = []
    for t in items:
        offsets.append(text_offset)
        text_offset += len(t.token)
    return {"tokens": [t.token for t in items], "token_logprobs": [t.logprob for t in items],
            "top_logprobs": [{a.token: a.logprob for a in t.top} for t in items],
            "text_offset": offsets}
