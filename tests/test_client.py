"""`minillm.client.Client` and `minillm chat --url` against a live server (tests/test_server.py
starts it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from minillm.client import Client, ServerError
from tests.test_server import start_server
from tests.tiny import make_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = make_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "qwen3"), "qwen3")
    s = start_server(model, str(tmp_path_factory.mktemp("logs")), "--served-model-name", "tiny")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def client(server):
    with Client(server.url) as c:
        yield c


def test_models_and_health(client):
    assert client.models() == ["tiny"]  # --served-model-name
    health = client.health()
    assert health["status"] == "ok" and health["engine"]["device"].startswith("cpu")


def test_generate_equals_the_joined_stream(client):
    params = dict(max_tokens=12, temperature=0, ignore_eos=True)
    text = client.generate("The capital of France is", **params)
    pieces = list(client.stream("The capital of France is", **params))
    assert pieces and "".join(pieces) == text  # how many pieces depends on timing: outputs
    # that pile up while the API process is busy go out joined
    assert client.generate([5, 6, 7, 8], **params)  # token ids work too


def test_chat_equals_the_joined_chat_stream(client):
    messages = [{"role": "user", "content": "Hi"}]
    reply = client.chat(messages, max_tokens=10, temperature=0)
    assert "".join(client.chat_stream(messages, max_tokens=10, temperature=0)) == reply
    assert client.chat("Hi", max_tokens=10, temperature=0) == reply  # a string: one user turn


def test_errors_carry_status_and_param(client, server):
    with pytest.raises(ServerError) as e:
        client.generate("Hi", temperature=-1)
    assert e.value.status == 400 and e.value.param == "temperature"
    with pytest.raises(ServerError) as e:
        list(client.chat_stream([]))
    assert e.value.status == 400 and e.value.param == "messages"
    with pytest.raises(ServerError) as e:
        Client(server.url, model="other").chat("Hi")
    assert e.value.status == 404


def test_chat_shell_against_the_server_through_stdin(server, client):
    """`minillm chat --url`: two turns, a reset, exit; replies as the server's own."""
    run = subprocess.run([sys.executable, "-m", "minillm", "chat", "--url", server.url,
                          "--max-tokens", "6", "--temperature", "0"],
                         input="Hi\nHow are you?\n/reset\nHi\n/exit\n", text=True,
                         capture_output=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("minillm chat:")
    assert run.stdout.count(">>> ") == 5 and "(conversation cleared)" in run.stdout
    first = client.chat("Hi", max_tokens=6, temperature=0)
    turns = run.stdout.split(">>> ")
    assert turns[1] == first + "\n" and turns[4] == first + "\n"  # after /reset: same answer
