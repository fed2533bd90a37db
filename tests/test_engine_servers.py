"""What both loopback servers (fake Ollama, fake vLLM) do alike, seen from a plain HTTP client.

The engines' tests trust these fakes to stall where a real server does (a cold model load before
the status line or before the first token) and to notice the client hanging up.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from polling import wait_until

from nbchat.testing.loopback import LoopbackServer, hanging_port
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.testing.openai_server import OpenAITestServer

CHATS: dict[str, tuple[str, dict[str, Any]]] = {
    "ollama": ("/api/chat", {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}),
    "openai": (
        "/v1/chat/completions",
        {
            "model": "meta-llama/Llama-3.2-1B-Instruct",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        },
    ),
}


@pytest.fixture(params=["ollama", "openai"])
def rig(request: pytest.FixtureRequest) -> Iterator[tuple[LoopbackServer, str, dict[str, Any]]]:
    server: LoopbackServer = OllamaTestServer() if request.param == "ollama" else OpenAITestServer()
    with server:
        yield (server, *CHATS[request.param])


def test_stall_headers_sends_no_status_line_until_the_client_hangs_up(rig) -> None:
    server, path, body = rig
    server.fault = "stall_headers"
    with httpx.Client(base_url=server.url, timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post(path, json=body)
    assert wait_until(lambda: server.cancelled_streams == 1 and server.active_streams == 0)


def test_stall_body_sends_the_headers_then_nothing_until_the_client_hangs_up(rig) -> None:
    server, path, body = rig
    server.fault = "stall_body"
    client = httpx.Client(base_url=server.url, timeout=0.5)
    with client, client.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            r.read()
    assert wait_until(lambda: server.cancelled_streams == 1 and server.active_streams == 0)


def test_a_hanging_port_accepts_no_connection() -> None:
    with hanging_port() as url:
        host, port = url.removeprefix("http://").split(":")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            socket.create_connection((host, int(port)), timeout=0.5)
        assert time.monotonic() - started >= 0.4
