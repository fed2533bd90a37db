"""The contract both HTTP engines keep, Ollama and OpenAI-compatible, each against its loopback server.

Every test here runs once per engine: what the session relies on (the protocol's methods, stopping a
reply in any state, statistics that can never break a save, secrets kept out of errors) must hold
whichever server answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from polling import wait_until

from nbchat import Message
from nbchat.backends.base import Backend
from nbchat.backends.http import HttpBackend
from nbchat.backends.ollama import OllamaBackend
from nbchat.backends.openai import OpenAIBackend
from nbchat.errors import BackendTimeout, GenerationFailed
from nbchat.testing import ollama_server, openai_server
from nbchat.testing.loopback import LoopbackServer, hanging_port
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.testing.openai_server import OpenAITestServer
from nbchat.types import GenerationParams

HELLO = [Message("user", "Hello there")]


@dataclass
class Engine:
    """One engine under test: its loopback server, a way to make backends for it, and its model names."""

    name: str
    server: LoopbackServer
    connect_to: Callable[..., HttpBackend]  # connect_to(server_url, **timeouts) -> a backend
    url: str  # what connect_to takes for ``server``
    model: str  # a model that does not think: its reply is only the echoed words
    window: int  # what known_context_window says for ``model``
    midstream_error: str  # what the server says when a reply fails midway

    def __post_init__(self) -> None:
        self.backend = self.connect()  # the default timeouts; tests needing others connect their own

    def connect(self, **timeouts: float) -> HttpBackend:
        return self.connect_to(self.url, **timeouts)


def _ollama() -> Engine:
    server = OllamaTestServer().start()
    return Engine(
        "ollama",
        server,
        OllamaBackend,
        server.url,
        "llama3.2:1b",
        8192,  # nbchat asks Ollama for at most 8192 (the model allows 131072)
        ollama_server.MIDSTREAM_ERROR,
    )


def _openai() -> Engine:
    server = OpenAITestServer().start()
    return Engine(
        "openai",
        server,
        OpenAIBackend,
        server.base_url,
        "meta-llama/Llama-3.2-1B-Instruct",
        131072,  # vLLM's max_model_len
        openai_server.MIDSTREAM_ERROR,
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
    engine.backend.prepare(engine.model, on_progress=progress.append, cancel=threading.Event())
    assert progress == [] and len(engine.server.requests) == before
    reply = engine.backend.stream(engine.model, HELLO, GenerationParams()).wait()
    assert reply.text == "You said: Hello there"


# -- streaming --------------------------------------------------------------------------------


def test_hitting_max_new_tokens_finishes_with_length(engine: Engine) -> None:
    engine.server.chunk_count = 50
    stream = engine.backend.stream(engine.model, HELLO, GenerationParams(max_new_tokens=5)).wait()
    assert stream.text == "w0 w1 w2 w3 w4 "
    assert stream.stats is not None and stream.stats.finish_reason == "length"


def test_a_proxy_in_the_environment_does_not_capture_loopback(monkeypatch, engine: Engine) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    backend = engine.connect()  # made after the environment changed, as in a fresh kernel
    assert f"{engine.name}:{engine.model}" in backend.models()
    assert backend.stream(engine.model, HELLO, GenerationParams()).wait().text == "You said: Hello there"


# -- failures keep what streamed --------------------------------------------------------------


def test_a_mid_stream_error_keeps_the_text_so_far(engine: Engine) -> None:
    engine.server.fault, engine.server.fault_after_chunks = "midstream_error", 3
    stream = engine.backend.stream(engine.model, HELLO, GenerationParams())
    with pytest.raises(GenerationFailed, match=engine.midstream_error) as error:
        stream.wait()
    assert error.value.partial_text == stream.text == "You said: Hello "
    assert stream.stats is not None and stream.stats.finish_reason == "error"


def test_a_dropped_connection_keeps_the_text_so_far(engine: Engine) -> None:
    engine.server.fault, engine.server.fault_after_chunks = "drop", 2
    stream = engine.backend.stream(engine.model, HELLO, GenerationParams())
    with pytest.raises(GenerationFailed, match=r"closed the reply|broke off") as error:
        stream.wait()
    assert error.value.partial_text == "You said: "


def test_a_stalled_server_ends_with_a_read_timeout_error_keeping_the_text(engine: Engine) -> None:
    engine.server.fault, engine.server.fault_after_chunks = "stall", 2
    stream = engine.connect(read_timeout=0.5).stream(engine.model, HELLO, GenerationParams())
    started = time.monotonic()
    with pytest.raises(BackendTimeout, match="sent nothing for") as error:
        stream.wait()
    assert time.monotonic() - started < PROMPT_S
    assert error.value.partial_text == "You said: "


def test_after_an_error_the_next_prompt_works(engine: Engine) -> None:
    engine.server.fault = "midstream_error"
    with pytest.raises(GenerationFailed):
        engine.backend.stream(engine.model, HELLO, GenerationParams()).wait()
    engine.server.fault = None
    reply = engine.backend.stream(engine.model, HELLO, GenerationParams()).wait()
    assert reply.text == "You said: Hello there"


# -- stopping, in every state ------------------------------------------------------------------

STALL_S = 30.0  # the read/connect timeout of these tests: a stop must never wait for it
PROMPT_S = 3.0  # a stop takes effect well within a second; this is generous for a loaded machine


def stopped_after(stream: Any, delay_s: float = 0.3) -> float:
    """Cancel ``stream`` from another thread after ``delay_s``; seconds until it ended, from the cancel."""
    timer = threading.Timer(delay_s, stream.cancel)
    started = time.monotonic()
    timer.start()
    stream.wait()
    timer.join()
    return time.monotonic() - started - delay_s


def assert_cancelled(stream: Any, text: str = "") -> None:
    assert stream.error is None, f"a stop is not an error: {stream.error}"
    assert stream.stats is not None and stream.stats.finish_reason == "cancelled"
    assert stream.stats.error is None and stream.text == text


def test_stop_mid_stream_stops_the_server_generating_too(engine: Engine) -> None:
    engine.server.chunk_count, engine.server.chunk_delay_s = 10_000, 0.005
    stream = engine.backend.stream(engine.model, HELLO, GenerationParams(max_new_tokens=10_000))
    received = []
    for chunk in stream:
        received.append(chunk)
        if len(received) == 20:
            threading.Thread(target=stream.cancel).start()
    assert 20 <= len(received) < 400
    assert_cancelled(stream, text=stream.text)
    assert stream.text.startswith("w0 w1 ")
    stats = stream.stats
    assert stats is not None and (stats.completion_tokens, stats.tokens_estimated) == (len(received), True)
    assert stats.tokens_per_s is not None and 0 < stats.tokens_per_s < 1e6, "a stopped reply has a speed"
    assert wait_until(lambda: engine.server.cancelled_streams == 1 and engine.server.active_streams == 0)


def test_a_reply_stopped_before_it_is_read_sends_nothing(engine: Engine) -> None:
    stream = engine.backend.stream(engine.model, HELLO, GenerationParams())
    stream.cancel()
    stream.wait()
    assert_cancelled(stream)
    assert chat_requests(engine.server) == []


def test_stop_ends_a_reply_at_once_while_the_connect_hangs(engine: Engine) -> None:
    with hanging_port() as url:
        api_root = url + engine.url.removeprefix(engine.server.url)  # "/v1" for OpenAI's
        backend = engine.connect_to(api_root, connect_timeout=STALL_S, read_timeout=STALL_S)
        stream = backend.stream(engine.model, HELLO, GenerationParams())
        took = stopped_after(stream)
        assert took < PROMPT_S, f"the stop took {took:.1f} s: it must not wait for the connect timeout"
        assert_cancelled(stream)


@pytest.mark.parametrize(
    "fault",
    ["stall_headers", "stall_body"],
    ids=["waiting for the headers", "waiting for the first byte"],
)
def test_stop_ends_a_reply_at_once_while_the_server_has_not_answered(engine: Engine, fault: str) -> None:
    engine.server.fault = fault
    stream = engine.connect(read_timeout=STALL_S).stream(engine.model, HELLO, GenerationParams())
    took = stopped_after(stream)
    assert took < PROMPT_S, f"the stop took {took:.1f} s: it must not wait for the 30 s read timeout"
    assert_cancelled(stream)
    assert wait_until(lambda: engine.server.cancelled_streams == 1 and engine.server.active_streams == 0)


def test_stop_ends_a_reply_at_once_mid_stream_and_keeps_the_text(engine: Engine) -> None:
    engine.server.fault, engine.server.fault_after_chunks = "stall", 2
    stream = engine.connect(read_timeout=STALL_S).stream(engine.model, HELLO, GenerationParams())
    took = stopped_after(stream)
    assert took < PROMPT_S, f"the stop took {took:.1f} s: it must not wait for the 30 s read timeout"
    assert_cancelled(stream, text="You said: ")
    assert wait_until(lambda: engine.server.cancelled_streams == 1 and engine.server.active_streams == 0)


def test_after_a_stop_while_waiting_the_next_reply_streams(engine: Engine) -> None:
    engine.server.fault = "stall_headers"
    stream = engine.backend.stream(engine.model, HELLO, GenerationParams())
    assert stopped_after(stream, 0.2) < PROMPT_S
    engine.server.fault = None
    reply = engine.backend.stream(engine.model, HELLO, GenerationParams()).wait()
    assert reply.text == "You said: Hello there"


# -- a server that never ends a line ----------------------------------------------------------


def test_a_line_longer_than_the_limit_fails_the_reply_keeping_its_text(engine: Engine) -> None:
    engine.backend.max_line_bytes = 1_000_000  # 64 MiB by default; a server must not fill memory
    engine.server.final_fields = {"padding": "x" * 1_500_000}
    stream = engine.backend.stream(engine.model, HELLO, GenerationParams())
    with pytest.raises(GenerationFailed, match="longer than 1,000,000 bytes") as error:
        stream.wait()
    assert error.value.partial_text == "You said: Hello there"


def test_a_long_line_within_the_limit_is_read(engine: Engine) -> None:
    engine.server.final_fields = {"padding": "x" * 1_500_000}
    reply = engine.backend.stream(engine.model, HELLO, GenerationParams()).wait()
    assert reply.text == "You said: Hello there"
