"""The Ollama backend against the loopback server that implements Ollama's documented contract."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nbchat import Config, Message
from nbchat.backends import resolve
from nbchat.backends.ollama import OllamaBackend, PullProgress
from nbchat.errors import (
    BackendResponseError,
    BackendUnavailable,
    ConfigError,
    ModelNotFound,
)
from nbchat.testing.ollama_server import FakeModel, OllamaTestServer
from nbchat.types import GenerationParams

HELLO = [Message("user", "Hello there")]


@pytest.fixture
def server() -> Iterator[OllamaTestServer]:
    with OllamaTestServer() as running:
        yield running


@pytest.fixture
def backend(server: OllamaTestServer) -> Iterator[OllamaBackend]:
    client = OllamaBackend(server.url, read_timeout=5.0)
    yield client
    client.close()


def chat_bodies(server: OllamaTestServer) -> list[dict]:
    return [r["body"] for r in server.requests if r["path"] == "/api/chat"]


# -- listing and health ---------------------------------------------------------------------


def test_models_are_listed_with_the_engine_prefix(backend: OllamaBackend) -> None:
    assert sorted(backend.models()) == ["ollama:llama3.2:1b", "ollama:qwen3:1.7b"]


def test_health_reports_version_and_models(backend: OllamaBackend, server: OllamaTestServer) -> None:
    report = backend.health()
    assert report["reachable"] is True and report["version"] == server.version
    assert "ollama:qwen3:1.7b" in report["models"] and report["url"] == server.url


def test_health_of_a_stopped_server_says_how_to_start_it() -> None:
    server = OllamaTestServer().start()
    server.stop()
    report = OllamaBackend(server.url).health()
    assert report["reachable"] is False
    assert server.url in report["error"] and "ollama serve" in report["error"]


def test_capabilities_and_context_length_come_from_show_once(backend, server) -> None:
    info = backend.model_info("qwen3:1.7b")
    assert info.thinks and info.context_length == 40960
    backend.stream("qwen3:1.7b", HELLO, GenerationParams()).wait()
    backend.stream("qwen3:1.7b", HELLO, GenerationParams()).wait()
    assert sum(r["path"] == "/api/show" for r in server.requests) == 1


# -- streaming ------------------------------------------------------------------------------


def test_thinking_and_answer_stream_apart(backend: OllamaBackend, server: OllamaTestServer) -> None:
    server.reply_words = ["Four", " it", " is."]
    stream = backend.stream("qwen3:1.7b", HELLO, GenerationParams(think=True))
    chunks = list(stream)
    kinds = [c.kind for c in chunks]
    assert kinds == sorted(kinds, key=lambda k: k != "thinking"), "thinking comes first"
    assert stream.thinking == "Let me think about that."
    assert stream.text == "Four it is."
    assert chat_bodies(server)[-1]["think"] is True


def test_thinking_off_is_sent_to_a_thinking_model(backend, server) -> None:
    stream = backend.stream("qwen3:1.7b", HELLO, GenerationParams(think=False))
    assert all(c.kind == "text" for c in stream)
    assert stream.text == "You said: Hello there" and stream.thinking == ""
    assert chat_bodies(server)[-1]["think"] is False


def test_think_is_never_sent_to_a_model_without_the_capability(backend, server) -> None:
    stream = backend.stream("llama3.2:1b", HELLO, GenerationParams(think=True))
    assert stream.wait().text == "You said: Hello there"
    assert "think" not in chat_bodies(server)[-1]


def test_options_are_mapped_to_ollamas_names(backend, server) -> None:
    params = GenerationParams(
        temperature=0.3, max_new_tokens=99, seed=7, top_p=0.9, top_k=20, context_size=4096
    )
    backend.stream("qwen3:1.7b", HELLO, params).wait()
    assert chat_bodies(server)[-1]["options"] == {
        "temperature": 0.3,
        "num_predict": 99,
        "num_ctx": 4096,
        "seed": 7,
        "top_p": 0.9,
        "top_k": 20,
    }


def test_context_size_is_always_explicit(backend, server) -> None:
    backend.stream("qwen3:1.7b", HELLO, GenerationParams()).wait()
    assert chat_bodies(server)[-1]["options"]["num_ctx"] == 8192
    server.add_model(FakeModel("tiny:ctx", thinking=False, context_length=2048))
    backend.stream("tiny:ctx", HELLO, GenerationParams()).wait()
    assert chat_bodies(server)[-1]["options"]["num_ctx"] == 2048


def test_history_goes_back_without_thinking(backend, server) -> None:
    history = [
        Message("system", "Be brief."),
        Message("user", "2+2?"),
        Message("assistant", "4", thinking="Arithmetic, easy."),
        Message("user", "And 3+3?"),
    ]
    backend.stream("qwen3:1.7b", history, GenerationParams()).wait()
    assert chat_bodies(server)[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]


def test_final_stats_come_from_the_done_line(backend, server) -> None:
    stream = backend.stream("qwen3:1.7b", HELLO, GenerationParams(think=True)).wait()
    stats = stream.stats
    assert stats is not None and stats.finish_reason == "stop"
    assert stats.completion_tokens == 5 + 4  # thinking words + "You said: Hello there"
    assert stats.prompt_tokens == 2
    assert stats.tokens_per_s and stats.tokens_per_s > 0
    assert stats.ttft_s is not None and stats.duration_s is not None and stats.duration_s >= stats.ttft_s


def test_the_model_id_registry_reaches_the_configured_host(server, tmp_path) -> None:
    bare = server.url.removeprefix("http://")  # OLLAMA_HOST may be a bare host:port
    from nbchat import load_config

    config = load_config({"OLLAMA_HOST": bare, "NBCHAT_DATA_DIR": str(tmp_path)})
    backend, name = resolve("ollama:llama3.2:1b", config)
    assert backend.stream(name, HELLO, GenerationParams()).wait().text == "You said: Hello there"


# -- errors (what both engines do alike, stopping too, is in test_engine_contract.py) --------


def test_an_unreachable_server_is_a_clear_error_when_streaming_too() -> None:
    server = OllamaTestServer().start()
    server.stop()
    with pytest.raises(BackendUnavailable, match="ollama serve") as error:
        OllamaBackend(server.url).stream("qwen3:1.7b", HELLO, GenerationParams()).wait()
    assert server.url in str(error.value) and "OLLAMA_HOST" in str(error.value)


def test_an_unknown_model_names_itself_and_the_pull_command(backend) -> None:
    with pytest.raises(ModelNotFound, match=r"`ollama pull phi`;.*`ollama list`"):
        backend.stream("phi", HELLO, GenerationParams()).wait()


@pytest.mark.parametrize("status", ["500", "503"])
def test_an_error_status_carries_the_servers_message(backend, server, status) -> None:
    server.fault = status
    with pytest.raises(BackendResponseError) as error:
        backend.stream("qwen3:1.7b", HELLO, GenerationParams()).wait()
    assert error.value.status_code == int(status)
    assert f"answered {status}" in str(error.value)


def test_a_404_from_chat_is_model_not_found(backend, server) -> None:
    backend.model_info("qwen3:1.7b")  # known to /api/show, then the chat itself says 404
    server.fault = "404"
    with pytest.raises(ModelNotFound, match=r"ollama pull qwen3:1\.7b"):
        backend.stream("qwen3:1.7b", HELLO, GenerationParams()).wait()


# -- pulling --------------------------------------------------------------------------------


def test_pull_reports_progress_then_the_model_is_there(backend) -> None:
    steps: list[PullProgress] = []
    backend.pull("qwen3:0.6b", steps.append)
    statuses = [s.status for s in steps]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    downloading = [s for s in steps if s.total]
    assert downloading and downloading[-1].fraction == 1.0
    assert "ollama:qwen3:0.6b" in backend.models()


def test_pulling_an_unknown_model_is_a_clear_error_naming_it(backend) -> None:
    with pytest.raises(ModelNotFound, match="cannot pull 'does-not-exist': no such model"):
        backend.pull("does-not-exist")


def test_stream_against_the_real_config(server, tmp_path) -> None:
    config = Config(data_dir=tmp_path, ollama_host=server.url)
    backend, _ = resolve("ollama:qwen3:1.7b", config)
    assert "ollama:qwen3:1.7b" in backend.models()


@pytest.mark.parametrize("host", ["http://a\nb:11434", "http://me:pw@127.0.0.1:11434", "//h", "host:0"])
def test_a_host_given_in_code_is_checked_as_ollama_host_is(host: str) -> None:
    with pytest.raises(ConfigError, match="OLLAMA_HOST"):
        OllamaBackend(host)


def test_a_short_host_given_in_code_means_what_ollama_host_would() -> None:
    assert OllamaBackend("127.0.0.1").host == "http://127.0.0.1:11434"
