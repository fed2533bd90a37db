"""The OpenAI-compatible backend against the loopback server that speaks vLLM's flavour of the API."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from nbchat import Config, Message
from nbchat.backends import available_models, backend_for, parse_model_id, resolve
from nbchat.backends.chat import ThinkParser
from nbchat.backends.http import MAX_LINE_BYTES
from nbchat.backends.openai import DEFAULT_CONTEXT_WINDOW, OpenAIBackend, _chunks, _events, _Reply, _sse
from nbchat.errors import (
    BackendError,
    BackendResponseError,
    BackendUnavailable,
    ConfigError,
    GenerationFailed,
    InvalidValue,
    ModelNotFound,
)
from nbchat.history import estimate_tokens
from nbchat.testing.openai_server import (
    REASONING_TEXT,
    STATUS_FAULT_ERROR,
    OpenAITestServer,
    ServedModel,
)
from nbchat.types import Chunk, GenerationParams

QWEN, LLAMA = "Qwen/Qwen3-1.7B", "meta-llama/Llama-3.2-1B-Instruct"
HELLO = [Message("user", "Hello there")]
KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    with OpenAITestServer() as running:
        yield running


@pytest.fixture
def backend(server: OpenAITestServer) -> Iterator[OpenAIBackend]:
    client = OpenAIBackend(server.base_url, read_timeout=5.0)
    yield client
    client.close()


def chat_requests(server: OpenAITestServer) -> list[dict]:
    return [r for r in server.requests if r["path"] == "/v1/chat/completions"]


def chat_bodies(server: OpenAITestServer) -> list[dict]:
    return [r["body"] for r in chat_requests(server)]


def stopped_server_url() -> str:
    server = OpenAITestServer().start()
    server.stop()
    return server.base_url


# -- listing, health and the context window ---------------------------------------------------


def test_models_are_listed_with_the_engine_prefix(backend: OpenAIBackend) -> None:
    assert backend.models() == [f"openai:{QWEN}", f"openai:{LLAMA}"]


def test_health_reports_the_url_and_the_models(backend: OpenAIBackend, server: OpenAITestServer) -> None:
    assert backend.health() == {
        "engine": "openai",
        "url": server.base_url,
        "reachable": True,
        "models": [f"openai:{QWEN}", f"openai:{LLAMA}"],
    }


def test_health_of_a_stopped_server_names_the_url_and_never_raises() -> None:
    url = stopped_server_url()
    report = OpenAIBackend(url).health()
    assert report["reachable"] is False and "models" not in report
    assert url in report["error"] and "OPENAI_BASE_URL" in report["error"]


def test_the_context_window_is_vllms_max_model_len_asked_once(backend, server) -> None:
    assert backend.context_window(QWEN) == 40960
    assert backend.context_window(LLAMA) == 131072
    assert backend.context_window(QWEN) == 40960
    assert sum(r["path"] == "/v1/models" for r in server.requests) == 1


def test_without_max_model_len_the_context_window_is_the_documented_default(backend, server) -> None:
    server.add_model(ServedModel("gpt-like", max_model_len=None))
    assert backend.context_window("gpt-like") == DEFAULT_CONTEXT_WINDOW == 8192
    assert backend.context_window("not-listed") == 8192, "llama-server answers to any model name"


def test_a_server_without_a_model_list_still_has_a_context_window(server) -> None:
    backend = OpenAIBackend(server.url)  # no /v1: every path is a 404 {"detail": "Not Found"}
    assert backend.context_window("anything") == 8192


def test_tokens_are_estimated_as_for_ollama(backend: OpenAIBackend) -> None:
    history = [Message("system", "Be brief."), *HELLO]
    assert backend.count_tokens(QWEN, history) == estimate_tokens(history)


# -- streaming --------------------------------------------------------------------------------


def test_reasoning_content_streams_as_thinking_apart_from_the_answer(backend, server) -> None:
    server.reply_words = ["Four", " it", " is."]
    stream = backend.stream(QWEN, HELLO, GenerationParams(think=True))
    kinds = [c.kind for c in stream]
    assert kinds == ["thinking"] * 5 + ["text"] * 3
    assert stream.thinking == REASONING_TEXT and stream.text == "Four it is."
    assert stream.model_id == f"openai:{QWEN}"


@pytest.mark.parametrize("style", ["reasoning", "inline"])
def test_thinking_is_split_out_whichever_way_the_server_sends_it(backend, server, style) -> None:
    """vLLM 0.10+ names the field ``reasoning``; a server without a reasoning parser leaves the tags in."""
    server.add_model(ServedModel("thinker", reasoning=style))
    stream = backend.stream("thinker", HELLO, GenerationParams()).wait()
    assert stream.thinking == REASONING_TEXT
    assert stream.text == "You said: Hello there"


def test_think_tags_cut_between_chunks_are_still_split(backend, server) -> None:
    server.reply_words = ["<thi", "nk>\nHmm", ", easy.", "\n</th", "ink>\n\n", "Four", " <", "3"]
    stream = backend.stream(LLAMA, HELLO, GenerationParams()).wait()
    assert (stream.thinking, stream.text) == ("Hmm, easy.", "Four <3")


def test_options_are_mapped_to_openais_names(backend, server) -> None:
    params = GenerationParams(temperature=0.3, max_new_tokens=99, seed=7, top_p=0.9, top_k=20, think=True)
    backend.stream(LLAMA, HELLO, params).wait()
    assert chat_bodies(server)[-1] == {
        "model": LLAMA,
        "messages": [{"role": "user", "content": "Hello there"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.3,
        "max_tokens": 99,
        "top_p": 0.9,
        "seed": 7,
    }, "top_k and think are not OpenAI parameters: a strict server would refuse them"


def test_unset_options_are_left_to_the_server(backend, server) -> None:
    backend.stream(LLAMA, HELLO, GenerationParams()).wait()
    body = chat_bodies(server)[-1]
    assert "top_p" not in body and "seed" not in body
    assert (body["temperature"], body["max_tokens"]) == (0.7, 512)


def test_history_goes_back_without_thinking(backend, server) -> None:
    history = [
        Message("system", "Be brief."),
        Message("user", "2+2?"),
        Message("assistant", "4", thinking="Arithmetic, easy."),
        Message("user", "And 3+3?"),
    ]
    backend.stream(QWEN, history, GenerationParams()).wait()
    assert chat_bodies(server)[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]


def test_final_stats_come_from_the_usage_chunk_and_this_sides_clock(backend, server) -> None:
    server.chunk_delay_s = 0.01
    stream = backend.stream(QWEN, HELLO, GenerationParams()).wait()
    stats = stream.stats
    assert stats is not None and stats.finish_reason == "stop"
    assert (stats.prompt_tokens, stats.completion_tokens) == (2, 5 + 4)  # reasoning words + the answer
    assert stats.ttft_s is not None and stats.duration_s is not None and stats.duration_s >= stats.ttft_s
    assert stats.tokens_per_s is not None and 0 < stats.tokens_per_s < 1000


# -- the API key ------------------------------------------------------------------------------


def test_no_authorization_header_is_sent_without_a_key(backend, server) -> None:
    backend.models()
    backend.stream(LLAMA, HELLO, GenerationParams()).wait()
    assert all("authorization" not in r["headers"] for r in server.requests)


def test_the_key_is_sent_as_a_bearer_token_everywhere(server) -> None:
    server.api_key = KEY
    backend = OpenAIBackend(server.base_url, KEY)
    assert backend.models()
    assert backend.stream(LLAMA, HELLO, GenerationParams()).wait().text == "You said: Hello there"
    assert {r["headers"]["authorization"] for r in server.requests} == {f"Bearer {KEY}"}


def test_a_missing_key_is_a_401_that_says_to_set_it(server) -> None:
    server.api_key = KEY
    with pytest.raises(BackendResponseError, match="set OPENAI_API_KEY") as error:
        OpenAIBackend(server.base_url).stream(LLAMA, HELLO, GenerationParams()).wait()
    assert error.value.status_code == 401 and "Unauthorized" in str(error.value)


def test_a_wrong_key_is_a_401_that_never_shows_the_key(server) -> None:
    server.api_key = "sk-the-right-one"
    backend = OpenAIBackend(server.base_url, KEY)
    with pytest.raises(BackendResponseError, match="OPENAI_API_KEY is wrong") as error:
        backend.stream(LLAMA, HELLO, GenerationParams()).wait()
    report = backend.health()
    assert report["reachable"] is True and "OPENAI_API_KEY is wrong" in report["error"]
    for text in (str(error.value), repr(error.value), repr(backend), str(report)):
        assert KEY not in text


def test_a_server_that_echoes_the_key_has_it_scrubbed_from_errors(backend, server) -> None:
    backend.use_api_key(KEY)
    server.fault, server.fault_message = "500", f"bad request from key {KEY}"
    with pytest.raises(BackendResponseError) as error:
        backend.stream(LLAMA, HELLO, GenerationParams()).wait()
    assert KEY not in str(error.value) and "bad request from key ***" in str(error.value)
    server.fault = "midstream_error"
    with pytest.raises(GenerationFailed) as error:
        backend.stream(LLAMA, HELLO, GenerationParams()).wait()
    assert KEY not in str(error.value) and "***" in str(error.value)


def test_a_new_key_is_used_from_the_next_request_on(backend, server) -> None:
    backend.use_api_key(KEY)
    backend.models()
    backend.use_api_key(None)
    backend.models()
    first, second = server.requests
    assert first["headers"]["authorization"] == f"Bearer {KEY}" and "authorization" not in second["headers"]


# -- errors (what both engines do alike, stopping too, is in test_engine_contract.py) --------


def test_an_unreachable_server_is_a_clear_error_naming_the_url() -> None:
    url = stopped_server_url()
    with pytest.raises(BackendUnavailable, match="OPENAI_BASE_URL") as error:
        OpenAIBackend(url).stream(QWEN, HELLO, GenerationParams()).wait()
    assert url in str(error.value)


def test_an_unknown_model_names_itself_and_points_at_the_model_list(backend) -> None:
    with pytest.raises(ModelNotFound, match=r"no model 'gpt-9'.*does not exist.*model list"):
        backend.stream("gpt-9", HELLO, GenerationParams()).wait()


def test_a_404_fault_on_a_listed_model_is_model_not_found_too(backend, server) -> None:
    server.fault = "404"
    with pytest.raises(ModelNotFound, match=re.escape(repr(QWEN))):
        backend.stream(QWEN, HELLO, GenerationParams()).wait()


def test_a_base_url_without_the_api_path_says_so(server) -> None:
    backend = OpenAIBackend(server.url)  # forgot the /v1
    with pytest.raises(BackendResponseError, match="ending in /v1") as error:
        backend.stream(QWEN, HELLO, GenerationParams()).wait()
    assert error.value.status_code == 404 and not isinstance(error.value, ModelNotFound)
    with pytest.raises(BackendResponseError, match="ending in /v1"):
        backend.models()


def test_an_error_status_carries_the_servers_message(backend, server) -> None:
    server.fault = "500"
    with pytest.raises(BackendResponseError) as error:
        backend.stream(QWEN, HELLO, GenerationParams()).wait()
    assert error.value.status_code == 500
    assert str(error.value) == f"The server at {server.base_url} answered 500: {STATUS_FAULT_ERROR}"


def test_a_mid_stream_error_keeps_the_thinking_so_far_too(backend, server) -> None:
    server.fault, server.fault_after_chunks = "midstream_error", 2
    with pytest.raises(GenerationFailed) as error:
        backend.stream(QWEN, HELLO, GenerationParams()).wait()
    assert (error.value.partial_thinking, error.value.partial_text) == ("Let me ", "")


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:8000/v1",
        "ftp://host/v1",
        "http://host:port/v1",
        "http:///v1",
        "http://a\nb/v1",
        "http://host/v1\r\nX-Injected: 1",
        "http://ho st/v1",
    ],
)
def test_an_unusable_base_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
        OpenAIBackend(url)


def test_a_base_url_with_a_password_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY") as error:
        OpenAIBackend("http://me:sk-in-the-url-0123456789@127.0.0.1:8000/v1")
    assert "sk-in-the-url" not in str(error.value)


# -- the SSE decoder, on bytes a real server might send ---------------------------------------


class Pieces(httpx.SyncByteStream):
    """A response body that arrives in the given pieces, as a network would cut it."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        yield from self.pieces


def sse_of(raw: bytes, size: int = 7) -> list[tuple[str, bytes]]:
    """Decode ``raw`` read ``size`` bytes at a time: framing edge cases need no server."""
    pieces = [raw[i : i + size] for i in range(0, len(raw), size)]
    return list(_sse(httpx.Response(200, stream=Pieces(pieces)), MAX_LINE_BYTES, "the server"))


def test_sse_framing_edge_cases_are_decoded() -> None:
    raw = (
        b": OPENROUTER PROCESSING\r\n\r\n"  # a keep-alive comment
        b'data: {"a": 1}\r\n\r\n'  # CRLF line ends
        b"event: error\ndata: {\ndata: }\n\n"  # a named event, data over two lines
        b'data:{"b":2}\n\n'  # no space after the colon
        b'error: {"code": 500, "message": "boom"}\n\n'  # llama-server's error line
        b"data: [DONE]"  # no blank line at the very end
    )
    assert sse_of(raw) == [
        ("", b'{"a": 1}'),
        ("error", b"{\n}"),
        ("", b'{"b":2}'),
        ("error", b'{"code": 500, "message": "boom"}'),
        ("", b"[DONE]"),
    ]


def test_a_server_that_ignores_stream_and_sends_one_object_is_read_whole() -> None:
    completion = {"choices": [{"index": 0, "message": {"content": "Hi", "reasoning_content": "Hmm"}}]}
    events = list(_events(httpx.Response(200, json=completion), OpenAIBackend("http://127.0.0.1:9/v1")))
    assert events[0] == completion and len(events) == 2, "then the end of the reply"
    reply = _Reply()
    assert list(_chunks(events[0], ThinkParser(), reply)) == [Chunk("thinking", "Hmm"), Chunk("text", "Hi")]


# -- the registry -----------------------------------------------------------------------------


def test_openai_model_ids_resolve_to_the_backend_of_the_base_url(server, tmp_path) -> None:
    config = Config(data_dir=tmp_path, openai_base_url=server.base_url + "/")
    assert parse_model_id(f"openai:{QWEN}").name == QWEN
    backend, name = resolve(f"openai:{QWEN}", config)
    assert isinstance(backend, OpenAIBackend) and name == QWEN
    assert backend is backend_for("openai", Config(data_dir=tmp_path, openai_base_url=server.base_url))
    assert backend.stream(name, HELLO, GenerationParams()).wait().text == "You said: Hello there"


def test_the_registry_reads_the_api_key_each_time(server, tmp_path) -> None:
    server.api_key = KEY
    resolve("openai:foo", Config(data_dir=tmp_path, openai_base_url=server.base_url))
    backend, _ = resolve(
        "openai:foo", Config(data_dir=tmp_path, openai_base_url=server.base_url, openai_api_key=KEY)
    )
    assert backend.models() and server.requests[-1]["headers"]["authorization"] == f"Bearer {KEY}"


def test_openai_models_without_a_base_url_say_to_set_it(tmp_path) -> None:
    with pytest.raises(ConfigError, match="openai: models need OPENAI_BASE_URL"):
        resolve("openai:foo", Config(data_dir=tmp_path))


def test_unknown_model_ids_mention_the_openai_form() -> None:
    with pytest.raises(InvalidValue, match="openai:<model>"):
        parse_model_id("gpt-4")


def test_available_models_include_the_openai_servers_sorted(server, tmp_path) -> None:
    dead_ollama = stopped_server_url().removesuffix("/v1")
    config = Config(data_dir=tmp_path, ollama_host=dead_ollama, openai_base_url=server.base_url)
    server.add_model(ServedModel("a-model"))  # listed last by the server, offered in order
    assert available_models(config) == [f"openai:{QWEN}", "openai:a-model", f"openai:{LLAMA}", "qwen3"]


def test_available_models_leave_out_an_unreachable_or_unset_openai_server(tmp_path) -> None:
    dead = stopped_server_url()
    dead_ollama = dead.removesuffix("/v1")
    assert available_models(Config(data_dir=tmp_path, ollama_host=dead_ollama, openai_base_url=dead)) == [
        "qwen3"
    ]
    assert available_models(Config(data_dir=tmp_path, ollama_host=dead_ollama)) == ["qwen3"]
    bad = Config(data_dir=tmp_path, ollama_host=dead_ollama, openai_base_url="not a url")
    assert available_models(bad) == ["qwen3"]


# -- the thinking switch ------------------------------------------------------------------------


def test_think_first_is_not_sent_unless_the_site_says_the_server_takes_it(backend, server) -> None:
    reply = backend.stream(QWEN, HELLO, GenerationParams(think=False)).wait()
    assert "chat_template_kwargs" not in chat_bodies(server)[-1]
    assert reply.thinking == REASONING_TEXT  # the server decides on its own


@pytest.mark.parametrize("think", [False, True])
def test_with_the_switch_think_first_goes_as_chat_template_kwargs(server, think: bool) -> None:
    switched = OpenAIBackend(server.base_url, think_switch=True)
    reply = switched.stream(QWEN, HELLO, GenerationParams(think=think)).wait()
    assert chat_bodies(server)[-1]["chat_template_kwargs"] == {"enable_thinking": think}
    assert reply.thinking == (REASONING_TEXT if think else "")
    assert reply.text == "You said: Hello there"
    switched.close()


def test_the_switch_comes_from_the_environment_or_the_site_file(server, tmp_path) -> None:
    from nbchat import load_config

    config = Config(data_dir=tmp_path, openai_base_url=server.base_url, openai_think_switch=True)
    backend, _ = resolve(f"openai:{QWEN}", config)
    assert isinstance(backend, OpenAIBackend) and backend.think_switch
    assert load_config({"NBCHAT_OPENAI_THINK_SWITCH": "1"}).openai_think_switch is True
    assert load_config({}).openai_think_switch is False
    site = tmp_path / "config.toml"
    site.write_text("[nbchat]\nopenai_think_switch = true\n")
    assert load_config({"NBCHAT_CONFIG": str(site)}).openai_think_switch is True


def test_a_model_without_max_model_len_has_no_known_window_but_the_default_to_send(backend, server) -> None:
    server.add_model(ServedModel("llama-server-model", max_model_len=None))
    assert backend.known_context_window("llama-server-model") is None
    assert backend.known_context_window("not-listed") is None
    assert backend.known_context_window("not-listed") is None
    assert backend.context_window("llama-server-model") == DEFAULT_CONTEXT_WINDOW
    assert sum(r["path"] == "/v1/models" for r in server.requests) == 2, "each answer is remembered"


def test_a_server_without_a_model_list_knows_no_window(server) -> None:
    assert OpenAIBackend(server.url).known_context_window("anything") is None


# -- the key never leaves in an error ---------------------------------------------------------


@pytest.mark.parametrize("fault", ["echo_auth_event", "echo_auth_body", "echo_auth_reason"])
def test_a_server_echoing_the_authorization_header_never_puts_the_key_in_an_error(server, fault) -> None:
    server.api_key, server.fault, server.fault_after_chunks = KEY, fault, 2
    backend = OpenAIBackend(server.base_url, api_key=KEY)
    stream = backend.stream(LLAMA, HELLO, GenerationParams())
    with pytest.raises(BackendError) as error:
        stream.wait()
    assert "unexpected Authorization" in str(error.value), "the server's words are still quoted"
    for text in (str(error.value), repr(error.value), error.value.partial_text, str(stream.stats)):
        assert KEY not in text and "Bearer sk" not in text


@pytest.mark.parametrize(
    "said",
    [
        "Bearer sk-someone-elses-key-0123456789",
        "authorization: Bearer abc.def.ghi",
        "key sk-proj-AbCdEf0123456789xyz rejected",
        '{"headers": {"Authorization": "Bearer tok_9f8e7d6c5b4a"}}',
    ],
)
def test_any_bearer_or_sk_token_a_server_quotes_is_scrubbed_too(backend, server, said) -> None:
    server.fault, server.fault_message = "500", said
    with pytest.raises(BackendResponseError) as error:
        backend.stream(LLAMA, HELLO, GenerationParams()).wait()
    for secret in ("sk-someone", "abc.def.ghi", "AbCdEf0123456789xyz", "tok_9f8e7d6c5b4a"):
        assert secret not in str(error.value)


def test_a_key_cut_in_half_by_the_length_limit_is_still_scrubbed(server) -> None:
    key = "my-very-own-secret-" + "k" * 600  # a key with no telltale prefix, longer than the limit
    server.fault, server.fault_message = "500", f"rejected {key}"
    with pytest.raises(BackendResponseError) as error:
        OpenAIBackend(server.base_url, api_key=key).stream(LLAMA, HELLO, GenerationParams()).wait()
    assert "my-very-own-secret" not in str(error.value)
