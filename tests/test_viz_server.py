"""minillm.viz.server: the server's pictures name the real message dataclasses, and their text
forms are exact."""

from __future__ import annotations

from dataclasses import fields

import pytest
from matplotlib.figure import Figure

from minillm.server import messages
from minillm.viz.server import (
    CHANNELS,
    SCENARIOS,
    draw_server_processes,
    draw_server_sequence,
    request_messages,
    server_channels_text,
    server_messages_text,
)


def by_gid(fig: Figure, gid: str) -> list:
    return [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]


def test_channels_carry_real_messages():
    sent = {cls for ch in CHANNELS for cls in ch.messages}
    # Every message type travels some pipe, except the ones nested inside others.
    nested = {messages.Output, messages.TokenLogprob}
    assert sent == set(messages.MESSAGE_TYPES.values()) - nested
    assert {ch.socket for ch in CHANNELS} == {f.name for f in fields(messages.Addresses)}


def test_channels_text():
    assert server_channels_text().splitlines()[:7] == [
        "client ──HTTP (OpenAI API, SSE)──▶ API process",
        "API process ──PUSH → PULL tokenizer──▶ tokenizer worker",
        "    GenerateRequest(rid, params, prompt, messages)",
        "    AbortRequest(rid)",
        "tokenizer worker ──PUSH → PULL scheduler──▶ scheduler process",
        "    TokenizedRequest(rid, prompt_token_ids, params)",
        "    AbortRequest(rid)",
    ]


def test_messages_text_error():
    assert server_messages_text("error") == "\n".join([
        " 1  client           → API process       POST /v1/chat/completions                  "
        "(a prompt longer than max_model_len)",
        " 2  API process      → tokenizer worker  GenerateRequest                            "
        "(validated fields, rid assigned)",
        " 3  tokenizer worker → API process       RequestError                               "
        "(param names the field at fault)",
        " 4  API process      → client            400 {error: {message, type, param, code}}  "
        "(OpenAI JSON)",
    ])


def test_stream_messages():
    msgs = request_messages("stream", decode_steps=3)
    labels = [m.label for m in msgs if not m.is_http]
    assert labels == ["GenerateRequest", "TokenizedRequest", *["BatchOutput"] * 5,
                      "SchedulerStats"]
    abort = [m.kind for m in request_messages("abort")]
    assert abort.count(messages.AbortRequest) == 2
    with pytest.raises(ValueError, match="scenario"):
        request_messages("nope")


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_draw_processes(tp):
    fig = draw_server_processes(tp)
    assert isinstance(fig, Figure)
    assert len(by_gid(fig, "process")) == 4
    assert len(by_gid(fig, "socket")) == 3
    assert len(by_gid(fig, "channel")) == len(CHANNELS)
    assert len(by_gid(fig, "http")) == 1
    assert len(by_gid(fig, "tp_worker")) == tp - 1
    assert len(by_gid(fig, "tp_link")) == (tp > 1)
    labels = [t.get_text() for t in by_gid(fig, "channel_label")]
    assert labels[0] == "GenerateRequest\nAbortRequest"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_draw_sequence(scenario):
    fig = draw_server_sequence(scenario)
    assert len(by_gid(fig, "lifeline")) == 4
    assert len(by_gid(fig, "message")) == len(request_messages(scenario))
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {m.label for m in request_messages(scenario)} <= texts
