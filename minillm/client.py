"""`Client`: a small synchronous client for `minillm serve` (or any OpenAI-compatible server).

The `openai` package is the full client; this one is the few calls a script, a notebook or
`minillm chat --url` needs, returning plain strings:

>>> client = Client("http://127.0.0.1:8000")
>>> client.generate("The capital of France is", max_tokens=8, temperature=0)
>>> for piece in client.chat_stream([{"role": "user", "content": "Hi"}]): print(piece, end="")

Keyword arguments are the request's fields as the OpenAI API names them (`max_tokens`,
`temperature`, `top_p`, `stop`, `seed`, and minillm's `top_k`, `min_p`, `ignore_eos`, ...).
A server error raises `ServerError` with the status, message and field of OpenAI's error JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

Messages = str | list[dict[str, str]]  # a string is one user message


class ServerError(Exception):
    """The server answered with an error (`status` is the HTTP status; `param` the field)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(f"{status}: {message}" + (f" (param: {param})" if param else ""))
        self.status, self.message, self.param = status, message, param


class Client:
    """Generate, stream and chat against a server at `base_url` (without `/v1`)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", model: str | None = None,
                 timeout: float = 600.0, api_key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                 headers=headers)
        self.model = model  # None: the server's own model

    # ---- server ----

    def models(self) -> list[str]:
        """The names of the models the server serves."""
        return [m["id"] for m in self._check(self.http.get("/v1/models")).json()["data"]]

    def health(self) -> dict[str, Any]:
        """The server's /health JSON: `{"status": "ok", ...}`, or "unhealthy" with an error."""
        return self.http.get("/health").json()

    # ---- completions ----

    def generate(self, prompt: str | list[int], **params) -> str:
        """The completion of `prompt` (text, or token ids)."""
        body = self._post("/v1/completions", {"prompt": prompt, **params})
        return body["choices"][0]["text"]

    def stream(self, prompt: str | list[int], **params) -> Iterator[str]:
        """The completion of `prompt`, piece by piece as the server streams it."""
        for chunk in self._stream("/v1/completions", {"prompt": prompt, **params}):
            if chunk["choices"] and chunk["choices"][0]["text"]:
                yield chunk["choices"][0]["text"]

    def chat(self, messages: Messages, **params) -> str:
        """The assistant's reply to a conversation (or to one user message given as a string)."""
        body = self._post("/v1/chat/completions", {"messages": _messages(messages), **params})
        return body["choices"][0]["message"]["content"]

    def chat_stream(self, messages: Messages, **params) -> Iterator[str]:
        """The assistant's reply, piece by piece."""
        for chunk in self._stream("/v1/chat/completions",
                                  {"messages": _messages(messages), **params}):
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                yield chunk["choices"][0]["delta"]["content"]

    # ---- plumbing ----

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"model": self.model, **body} if self.model else body

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.http.post(path, json=self._body(body))).json()

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The JSON objects of a Server-Sent Events response, until `data: [DONE]`."""
        with self.http.stream("POST", path, json={**self._body(body), "stream": True}) as r:
            if r.is_error:
                r.read()
                self._check(r)
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    return
                obj = json.loads(data)
                if "error" in obj:  # the server failed mid-stream
                    err = obj["error"]
                    raise ServerError(503, err.get("message", ""), err.get("param"))
                yield obj

    @staticmethod
    def _check(r: httpx.Response) -> httpx.Response:
        if r.is_error:
            try:
                err = r.json()["error"]
            except (ValueError, KeyError, TypeError):
                err = {"message": r.text}
            raise ServerError(r.status_code, err.get("message", ""), err.get("param"))
        return r

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _messages(messages: Messages) -> list[dict[str, str]]:
    return [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
