"""Statistics a server reports can never cost the reply: nonsense is dropped, the text is kept.

Each odd value goes through the real loopback server's final line (Ollama's done line, vLLM's usage
chunk, llama-server's ``timings``), and the reply must end complete with statistics that a saved
message accepts: every number finite and in range.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from nbchat import Message
from nbchat.backends.ollama import OllamaBackend, PullProgress
from nbchat.backends.openai import OpenAIBackend
from nbchat.errors import BackendResponseError, GenerationFailed
from nbchat.testing.loopback import RawJSON
from nbchat.testing.ollama_server import FakeModel, OllamaTestServer
from nbchat.testing.openai_server import OpenAITestServer
from nbchat.types import GenerationParams, GenerationStats

HELLO = [Message("user", "Hello there")]
TEXT = "You said: Hello there"


def assert_sane(stats: GenerationStats | None) -> dict[str, Any]:
    """Every statistic a usable number (or absent), and the whole fit to be saved with the message."""
    assert stats is not None and stats.finish_reason == "stop" and stats.error is None
    saved = stats.to_dict()
    for name, value in saved.items():
        if isinstance(value, float):
            assert math.isfinite(value) and value >= 0, f"{name} = {value!r}"
        if isinstance(value, int) and not isinstance(value, bool):
            assert 0 <= value < 10**9, f"{name} = {value!r}"
    Message("assistant", TEXT, stats=saved)  # what the session saves: it must not refuse these
    return saved


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt_eval_count": [1]},
        {"prompt_eval_count": "12"},
        {"prompt_eval_count": True},
        {"eval_duration": RawJSON("1e-320")},
        {"eval_duration": RawJSON("NaN")},
        {"eval_duration": -5},
        {"eval_duration": 0},
        {"eval_count": RawJSON("1e400")},
        {"eval_count": RawJSON("-Infinity")},
        {"eval_count": 10**40},
        {"eval_count": -1},
        {"eval_count": {"n": 1}},
        {"eval_count": None, "eval_duration": None, "prompt_eval_count": None},
    ],
    ids=repr,
)
def test_ollama_nonsense_in_the_done_line_is_dropped_and_the_reply_kept(fields: dict[str, Any]) -> None:
    with OllamaTestServer() as server:
        server.final_fields = fields
        stream = OllamaBackend(server.url).stream("llama3.2:1b", HELLO, GenerationParams())
        assert stream.wait().text == TEXT
        saved = assert_sane(stream.stats)
    for name, stat in (("prompt_eval_count", "prompt_tokens"), ("eval_count", "completion_tokens")):
        if fields.get(name) is not None:
            assert saved.get(stat) != fields[name], f"{name} = {fields[name]!r} was taken as {stat}"


def test_ollama_sane_figures_are_still_used() -> None:
    with OllamaTestServer() as server:
        server.final_fields = {"prompt_eval_count": 7, "eval_count": 4, "eval_duration": 2_000_000_000}
        stream = OllamaBackend(server.url).stream("llama3.2:1b", HELLO, GenerationParams())
        stream.wait()
    saved = assert_sane(stream.stats)
    assert (saved["prompt_tokens"], saved["completion_tokens"], saved["tokens_per_s"]) == (7, 4, 2.0)


@pytest.mark.parametrize(
    "fields",
    [
        {"timings": RawJSON('{"predicted_per_second": NaN}')},
        {"timings": RawJSON('{"predicted_per_second": Infinity}')},
        {"timings": RawJSON('{"predicted_per_second": -Infinity}')},
        {"timings": RawJSON('{"predicted_per_second": 1e400}')},
        {"timings": RawJSON('{"predicted_per_second": 1e300}')},
        {"timings": {"predicted_per_second": -3.5}},
        {"timings": {"predicted_per_second": True}},
        {"timings": {"predicted_per_second": "fast"}},
        {"timings": [1, 2]},
        {"usage": RawJSON('{"prompt_tokens": [1], "completion_tokens": 1e400}')},
        {"usage": {"prompt_tokens": 10**40, "completion_tokens": -2}},
        {"usage": {"prompt_tokens": True, "completion_tokens": "5"}},
        {"usage": "lots"},
    ],
    ids=repr,
)
def test_openai_nonsense_in_usage_or_timings_is_dropped_and_the_reply_kept(fields: dict[str, Any]) -> None:
    with OpenAITestServer() as server:
        server.final_fields = fields
        backend = OpenAIBackend(server.base_url)
        stream = backend.stream("meta-llama/Llama-3.2-1B-Instruct", HELLO, GenerationParams())
        assert stream.wait().text == TEXT
        saved = assert_sane(stream.stats)
    assert saved.get("tokens_per_s", 0) < 1e6, "an absurd speed from the server is not shown"


def test_llama_servers_own_speed_is_used_when_it_is_a_number() -> None:
    with OpenAITestServer() as server:
        server.final_fields = {"timings": {"predicted_per_second": 42.5, "predicted_n": 4}}
        backend = OpenAIBackend(server.base_url)
        stream = backend.stream("meta-llama/Llama-3.2-1B-Instruct", HELLO, GenerationParams())
        stream.wait()
    assert assert_sane(stream.stats)["tokens_per_s"] == 42.5


# -- what else a server describes: the model's context and capabilities -------------------------


@pytest.mark.parametrize(
    ("model_info", "window"),
    [
        ({"llama.context_length": True}, 8192),
        ({"llama.context_length": -5}, 8192),
        ({"llama.context_length": 0}, 8192),
        ({"llama.context_length": "4096"}, 8192),
        ({"llama.context_length": 2048.0}, 2048),
        ({"llama.context_length": 2048}, 2048),
        ("not a mapping", 8192),
    ],
    ids=repr,
)
def test_an_odd_context_length_from_show_is_ignored(model_info: Any, window: int) -> None:
    model = FakeModel("odd:1b", thinking=False, show_fields={"model_info": model_info})
    with OllamaTestServer([model]) as server:
        backend = OllamaBackend(server.url)
        assert backend.known_context_window("odd:1b") == backend.context_window("odd:1b") == window
        assert backend.stream("odd:1b", HELLO, GenerationParams()).wait().text == TEXT
        assert server.requests[-1]["body"]["options"]["num_ctx"] == window


@pytest.mark.parametrize("capabilities", [5, "thinking", {"thinking": 1}, [1, None]], ids=repr)
def test_odd_capabilities_from_show_mean_no_thinking(capabilities: Any) -> None:
    model = FakeModel("odd:1b", thinking=False, show_fields={"capabilities": capabilities})
    with OllamaTestServer([model]) as server:
        backend = OllamaBackend(server.url)
        assert backend.model_info("odd:1b").thinks is False
        assert backend.stream("odd:1b", HELLO, GenerationParams()).wait().text == TEXT


# -- JSON nested too deeply to decode is one bad answer, not a crash ---------------------------

DEEP = RawJSON("[" * 100_000 + "]" * 100_000)


def test_a_too_deeply_nested_done_line_fails_the_reply_keeping_its_text() -> None:
    with OllamaTestServer() as server:
        server.final_fields = {"eval_count": DEEP}
        stream = OllamaBackend(server.url).stream("llama3.2:1b", HELLO, GenerationParams())
        with pytest.raises(GenerationFailed, match="not JSON") as error:
            stream.wait()
    assert error.value.partial_text == TEXT


def test_a_too_deeply_nested_event_fails_the_reply_keeping_its_text() -> None:
    with OpenAITestServer() as server:
        server.final_fields = {"usage": DEEP}
        stream = OpenAIBackend(server.base_url).stream(
            "meta-llama/Llama-3.2-1B-Instruct", HELLO, GenerationParams()
        )
        with pytest.raises(GenerationFailed, match="not JSON") as error:
            stream.wait()
    assert error.value.partial_text == TEXT


def test_a_too_deeply_nested_answer_to_show_is_a_clear_error_and_health_still_reports() -> None:
    with OllamaTestServer([FakeModel("deep:1b", show_fields={"model_info": DEEP})]) as server:
        backend = OllamaBackend(server.url)
        with pytest.raises(BackendResponseError, match="not JSON"):
            backend.model_info("deep:1b")
        assert backend.health()["reachable"] is True


# -- an error's text stays short enough to be saved with the reply -----------------------------


def test_a_huge_error_message_mid_stream_is_cut_so_the_reply_can_be_saved() -> None:
    with OpenAITestServer() as server:
        server.fault, server.fault_after_chunks = "midstream_error", 2
        server.fault_message = "x" * 50_000
        stream = OpenAIBackend(server.base_url).stream(
            "meta-llama/Llama-3.2-1B-Instruct", HELLO, GenerationParams()
        )
        with pytest.raises(GenerationFailed):
            stream.wait()
    assert stream.stats is not None and stream.stats.error is not None
    assert len(stream.stats.error) <= 1_000
    Message("assistant", stream.text, stats=stream.stats.to_dict())


# -- a server that tells no token counts: counted from the stream, and said to be an estimate -----


def test_without_usage_the_streamed_tokens_are_counted_as_an_estimate() -> None:
    with OpenAITestServer() as server:
        server.sends_usage = False  # llama-server sends no usage chunk
        server.chunk_delay_s = 0.01
        backend = OpenAIBackend(server.base_url)
        stream = backend.stream("Qwen/Qwen3-1.7B", HELLO, GenerationParams())
        stream.wait()
    saved = assert_sane(stream.stats)
    assert saved["completion_tokens"] == 5 + 4, "5 reasoning tokens and 4 of the answer, one per event"
    assert saved["tokens_estimated"] is True
    assert 0 < saved["tokens_per_s"] < 1e6


def test_llama_servers_own_count_of_predicted_tokens_is_exact() -> None:
    with OpenAITestServer() as server:
        server.sends_usage = False
        server.final_fields = {"timings": {"predicted_n": 12, "predicted_per_second": 30.0}}
        stream = OpenAIBackend(server.base_url).stream(
            "meta-llama/Llama-3.2-1B-Instruct", HELLO, GenerationParams()
        )
        stream.wait()
    saved = assert_sane(stream.stats)
    assert (saved["completion_tokens"], saved["tokens_per_s"]) == (12, 30.0)
    assert "tokens_estimated" not in saved


def test_with_usage_the_servers_count_is_used_and_not_called_an_estimate() -> None:
    with OpenAITestServer() as server:
        stream = OpenAIBackend(server.base_url).stream(
            "meta-llama/Llama-3.2-1B-Instruct", HELLO, GenerationParams()
        )
        stream.wait()
    saved = assert_sane(stream.stats)
    assert saved["completion_tokens"] == 4 and "tokens_estimated" not in saved


def test_an_ollama_done_line_without_a_usable_eval_count_is_counted_as_an_estimate() -> None:
    with OllamaTestServer() as server:
        server.final_fields = {"eval_count": RawJSON("1e400")}
        stream = OllamaBackend(server.url).stream("llama3.2:1b", HELLO, GenerationParams())
        stream.wait()
    saved = assert_sane(stream.stats)
    assert (saved["completion_tokens"], saved["tokens_estimated"]) == (4, True)


# -- a pull's byte counts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"completed": "half"},
        {"total": RawJSON("1e400"), "completed": 5},
        {"completed": -5},
        {"total": [1]},
        {"total": 0, "completed": 3},
        {"completed": True, "total": True},
    ],
    ids=repr,
)
def test_odd_byte_counts_in_a_pull_give_no_fraction_and_the_pull_completes(fields: dict[str, Any]) -> None:
    with OllamaTestServer() as server:
        server.pull_fields = fields
        backend = OllamaBackend(server.url)
        steps: list[PullProgress] = []
        backend.pull("qwen3:0.6b", steps.append)
        assert "ollama:qwen3:0.6b" in backend.models()
    for step in steps:
        assert step.fraction is None or 0 <= step.fraction <= 1
        for count in (step.completed, step.total):
            assert count is None or (isinstance(count, int) and not isinstance(count, bool) and count >= 0)
