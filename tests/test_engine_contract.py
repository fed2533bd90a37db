"""The contract both HTTP engines keep, Ollama and OpenAI-compatible, each against its loopback server.

Every test here runs once per engine: what the session relies on (the protocol's methods, stopping a
reply in any state, statistics that can never break a save, secrets kept out of errors) must hold
whichever server answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from nbchat import Message
from nbchat.backends.base import Backend
from nbchat.backends.http import HttpBackend
from nbchat.backends.ollama import OllamaBackend
from nbchat.backends.openai import OpenAIBackend
from nbchat.testing.loopback import LoopbackServer
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.testing.openai_server import OpenAITestServer
from nbchat.types import GenerationParams

HELLO = [Message("user", "Hello there")]


@dataclass
class Engine:
    """One engine under test: its loopback server, a way to make backends for it, and its model names."""

    name: str
    server: LoopbackServer
    connect: Callable[..., HttpBackend]  # connect(**timeouts) -> a backend for ``server``
    model: str  # a model that does not think: its reply is only the echoed words
    window: int  # what known_context_window says for ``model``

    def __post_init__(self) -> None:
        self.backend = self.connect()  # the default timeouts; tests needing others connect their own


def _ollama() -> Engine:
    server = OllamaTestServer().start()
    return Engine(
        "ollama",
        server,
        lambda **kw: OllamaBackend(server.url, **kw),
        "llama3.2:1b",
        8192,  # nbchat asks Ollama for at most 8192 (the model allows 131072)
    )


def _openai() -> Engine:
    server = OpenAITestServer().start()
    return Engine(
        "openai",
        server,
        lambda **kw: OpenAIBackend(server.base_url, **kw),
        "meta-llama/Llama-3.2-1B-Instruct",
        131072,  # vLLM's max_model_len
    )


@pytest.fixture(params=[_ollama, _openai], ids=["ollama", "openai"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    made: Engine = request.param()
    try:
        yield made
    finally:
        made.backend.close()
        made.server.stop()


def chat_requests(server: LoopbackServer) -> list[dict[str, Any]]:
    return [r for r in server.requests if r["path"].endswith(("/api/chat", "/chat/completions"))]


# -- the protocol's methods -------------------------------------------------------------------


def test_both_engines_implement_the_whole_protocol(engine: Engine) -> None:
    backend: Backend = engine.backend  # mypy checks the protocol here
    for method in ("models", "health", "context_window", "known_context_window", "prepare", "stream"):
        assert callable(getattr(backend, method))


def test_the_known_context_window_comes_from_the_server_without_loading(engine: Engine) -> None:
    backend = engine.backend
    assert backend.known_context_window(engine.model) == engine.window
    assert backend.context_window(engine.model) == engine.window
    assert chat_requests(engine.server) == [], "nothing was generated (or loaded) to learn it"


def test_prepare_has_nothing_to_do_for_a_server(engine: Engine) -> None:
    progress: list[object] = []
    before = len(engine.server.requests)
    engine.backend.prepare(engine.model, on_progress=progress.append)
    assert progress == [] and len(engine.server.requests) == before
    reply = engine.backend.stream(engine.model, HELLO, GenerationParams()).wait()
    assert reply.text == "You said: Hello there"
