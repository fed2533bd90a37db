"""The fake OpenAI-compatible server is faithful: the official ``openai`` client and plain httpx accept it.

nbchat's OpenAI backend is tested against ``nbchat.testing.openai_server`` because no vLLM or
llama.cpp server can run here. These tests hold the rig to the contract: the official client must
parse every answer (streamed chunks, whole completions, model lists) and raise the errors a real
server provokes, and the raw wire format must match, down to the SSE framing, the role chunk, the
usage chunk and ``data: [DONE]``, and the ways a stream can fail (an error event, a dropped
connection, a stall). They also prove the rig notices a client that hangs up, which is what
nbchat's cancel tests rely on.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from polling import wait_until

from nbchat.testing.openai_server import (
    FAULTS,
    MIDSTREAM_ERROR,
    REASONING_TEXT,
    STATUS_FAULT_ERROR,
    OpenAITestServer,
    ServedModel,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
QWEN, LLAMA = "Qwen/Qwen3-1.7B", "meta-llama/Llama-3.2-1B-Instruct"
THINKING = ["Let ", "me ", "think ", "about ", "that."]


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    """A fresh server with the default models: a reasoning Qwen3 and a Llama that never thinks."""
    with OpenAITestServer() as running:
        yield running
    leftovers = [t.name for t in threading.enumerate() if t.name.startswith("openai-test")]
    assert leftovers == [], "stop() must leave no server threads behind"


@pytest.fixture
def client(server: OpenAITestServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=5) as official:
        yield official


@pytest.fixture
def http(server: OpenAITestServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5) as raw:
        yield raw


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def chat_body(model: str = QWEN, text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": user(text), "stream": True, **extra}


def sse_events(http: httpx.Client, body: dict[str, Any]) -> list[str]:
    """The raw ``data:`` payloads of a streamed chat, checking the framing on the way."""
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events.pop() == "", "every event ends with a blank line"
    assert all(e.startswith("data: ") and "\n" not in e for e in events), "one data line per event"
    return [e.removeprefix("data: ") for e in events]


# --- the official client ------------------------------------------------------------------------------


def test_a_streamed_chat_sends_role_then_reasoning_then_answer_then_finish_and_usage(
    client: openai.OpenAI,
) -> None:
    chunks = list(
        client.chat.completions.create(
            model=QWEN, messages=user("hello there"), stream=True, stream_options={"include_usage": True}
        )
    )
    first, *tokens, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    reasoning = [getattr(c.choices[0].delta, "reasoning_content", None) for c in tokens]
    answer = [c.choices[0].delta.content for c in tokens]
    assert [r for r in reasoning if r] == THINKING
    assert [a for a in answer if a] == ["You ", "said: ", "hello ", "there"]
    assert all(bool(r) != bool(a) for r, a in zip(reasoning, answer, strict=True)), "one kind per chunk"
    assert all(c.choices[0].finish_reason is None for c in [first, *tokens])
    assert finish.choices[0].finish_reason == "stop" and finish.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (2, len(THINKING) + 4)
    assert usage.usage.total_tokens == 2 + len(THINKING) + 4
    assert len({(c.id, c.created, c.model, c.object) for c in chunks}) == 1, "one id for the whole reply"
    assert (
        first.id.startswith("chatcmpl-") and first.object == "chat.completion.chunk" and first.model == QWEN
    )


def test_a_whole_completion_has_the_message_reasoning_and_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=QWEN, messages=user("hi"))
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    (choice,) = reply.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content == "You said: hi"
    assert getattr(choice.message, "reasoning_content", None) == REASONING_TEXT
    assert reply.usage is not None and reply.usage.completion_tokens == len(THINKING) + 3


def test_a_model_that_does_not_reason_sends_only_content(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=LLAMA, messages=user("hi"), stream=True))
    assert all(getattr(c.choices[0].delta, "reasoning_content", None) is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said: hi"
    assert all(c.usage is None for c in chunks), "no usage chunk unless stream_options asks"


@pytest.mark.parametrize(
    ("style", "text"),
    [
        ("reasoning", None),  # vLLM 0.10 and later
        ("inline", f"<think>\n{REASONING_TEXT}\n</think>\n\nYou said: hi"),  # a server that does not split
    ],
)
def test_other_reasoning_styles_stream_as_a_real_server_would(
    server: OpenAITestServer, client: openai.OpenAI, style: str, text: str | None
) -> None:
    server.add_model(ServedModel("thinker", reasoning=style))
    chunks = list(client.chat.completions.create(model="thinker", messages=user("hi"), stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    if style == "inline":
        assert content == text
    else:
        assert "".join(getattr(c.choices[0].delta, style, None) or "" for c in chunks) == REASONING_TEXT
        assert content == "You said: hi"


def test_the_model_list_has_vllms_max_model_len_where_known(
    server: OpenAITestServer, client: openai.OpenAI
) -> None:
    server.add_model(ServedModel("gpt-like", max_model_len=None, owned_by="openai"))
    models = {m.id: m for m in client.models.list()}
    assert list(models) == [QWEN, LLAMA, "gpt-like"]
    assert getattr(models[QWEN], "max_model_len", None) == 40960
    assert getattr(models[LLAMA], "max_model_len", None) == 131072
    assert getattr(models["gpt-like"], "max_model_len", None) is None
    assert models[QWEN].object == "model" and models[QWEN].owned_by == "vllm"
    server.remove_model(LLAMA)
    assert [m.id for m in client.models.list()] == [QWEN, "gpt-like"]


def test_max_tokens_counts_reasoning_and_finishes_with_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=QWEN, messages=user("one two"), max_tokens=7)
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == "You said: "
    assert reply.usage is not None and reply.usage.completion_tokens == 7


def test_an_unknown_model_is_a_404_with_vllms_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nope", messages=user("hi"))
    assert caught.value.status_code == 404
    assert "The model `gpt-nope` does not exist." in caught.value.message
    assert caught.value.body == {
        "message": "The model `gpt-nope` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


@pytest.mark.parametrize(
    ("fault", "error", "status", "message"),
    [
        ("404", openai.NotFoundError, 404, f"The model `{QWEN}` does not exist."),
        ("500", openai.InternalServerError, 500, STATUS_FAULT_ERROR),
    ],
)
def test_status_faults_refuse_the_chat_before_any_chunk(
    server: OpenAITestServer,
    client: openai.OpenAI,
    fault: str,
    error: type[openai.APIStatusError],
    status: int,
    message: str,
) -> None:
    server.fault = fault
    with pytest.raises(error) as caught:
        list(client.chat.completions.create(model=QWEN, messages=user("hi"), stream=True))
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict) and caught.value.body["message"] == message


def test_a_midstream_error_event_reaches_the_official_client_as_an_api_error(
    server: OpenAITestServer, client: openai.OpenAI
) -> None:
    """The status is already 200 when the error comes, so the client raises a plain APIError."""
    server.fault = "midstream_error"
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model=LLAMA, messages=user("hi there"), stream=True):
            received.append(chunk.choices[0].delta.content)
    assert not isinstance(caught.value, openai.APIStatusError)
    assert caught.value.message == MIDSTREAM_ERROR
    assert received == ["", "You ", "said: ", "hi "], "the role chunk, then fault_after_chunks tokens"


def test_a_required_api_key_is_checked_like_vllm_does(server: OpenAITestServer, http: httpx.Client) -> None:
    server.api_key = "sk-right"
    with (
        openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0, timeout=5) as official,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        official.models.list()
    assert caught.value.status_code == 401 and caught.value.body == "Unauthorized"
    missing = http.post("/v1/chat/completions", json=chat_body())
    assert (missing.status_code, missing.json()) == (401, {"error": "Unauthorized"})
    with openai.OpenAI(base_url=server.base_url, api_key="sk-right", max_retries=0, timeout=5) as official:
        assert official.chat.completions.create(model=LLAMA, messages=user("hi")).choices[0].message.content
    assert server.requests[-1]["headers"]["authorization"] == "Bearer sk-right"


def test_stream_options_without_stream_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="only be defined when `stream=True`"):
        client.chat.completions.create(
            model=QWEN, messages=user("hi"), stream_options={"include_usage": True}
        )


def test_a_stopped_server_refuses_connections(server: OpenAITestServer, client: openai.OpenAI) -> None:
    server.stop()
    with pytest.raises(openai.APIConnectionError):
        client.models.list()


# --- the wire format, with plain httpx ----------------------------------------------------------------


def test_every_stream_ends_with_done_after_the_usage_chunk(http: httpx.Client) -> None:
    events = sse_events(http, chat_body(LLAMA, "hi", stream_options={"include_usage": True}))
    assert events[-1] == "[DONE]"
    *chunks, usage = [json.loads(e) for e in events[:-1]]
    assert set(usage) == {"id", "object", "created", "model", "choices", "usage"} and usage["choices"] == []
    assert set(usage["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert chunks[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert chunks[1]["choices"][0]["delta"] == {"content": "You "}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all(set(c) == {"id", "object", "created", "model", "choices"} for c in chunks)


def test_stream_options_may_leave_usage_out(http: httpx.Client) -> None:
    events = sse_events(http, chat_body(LLAMA, "hi", stream_options={"include_usage": False}))
    assert all("usage" not in json.loads(e) for e in events[:-1])
    assert events[-1] == "[DONE]"


def test_one_connection_serves_many_requests(server: OpenAITestServer, http: httpx.Client) -> None:
    """HTTP/1.1 keep-alive: streams end with the chunked terminator, so the connection is reused."""
    for _ in range(3):
        assert sse_events(http, chat_body())[-1] == "[DONE]"
        assert http.get("/v1/models").status_code == 200
    assert len(server.requests) == 6


def test_every_request_is_recorded_with_its_headers_and_body(
    server: OpenAITestServer, http: httpx.Client
) -> None:
    http.get("/v1/models", headers={"Authorization": "Bearer abc"})
    http.post("/v1/chat/completions", json=chat_body(stream=False))
    (listing, chat) = server.requests
    assert (listing["method"], listing["path"], listing["body"]) == ("GET", "/v1/models", None)
    assert listing["headers"]["authorization"] == "Bearer abc"
    assert (chat["method"], chat["path"], chat["body"]) == (
        "POST",
        "/v1/chat/completions",
        chat_body(stream=False),
    )
    assert "authorization" not in chat["headers"]


def test_reply_words_and_chunk_count_script_the_answer(server: OpenAITestServer, http: httpx.Client) -> None:
    server.reply_words = ["Hello", ", ", "world"]
    events = [json.loads(e) for e in sse_events(http, chat_body(LLAMA))[1:-2]]
    assert [e["choices"][0]["delta"]["content"] for e in events] == ["Hello", ", ", "world"]
    server.chunk_count = 5_000
    events = sse_events(http, chat_body(LLAMA))
    assert len(events) == 1 + 5_000 + 1 + 1  # role, tokens, finish, [DONE]
    assert json.loads(events[-3])["choices"][0]["delta"]["content"] == "w4999 "


def test_delays_make_a_slow_first_token_and_a_steady_stream(
    server: OpenAITestServer, http: httpx.Client
) -> None:
    server.first_chunk_delay_s, server.chunk_delay_s = 0.3, 0.05
    started = time.monotonic()
    with http.stream("POST", "/v1/chat/completions", json=chat_body(LLAMA, "a b")) as response:
        lines = response.iter_lines()
        next(lines)
        first_token_s = time.monotonic() - started
        list(lines)
    assert 0.3 <= first_token_s < 2.0
    assert time.monotonic() - started >= 0.3 + 3 * 0.05  # four answer tokens: "You ", "said: ", "a ", "b"


@pytest.mark.parametrize("chunk_delay_s", [0.0, 0.01])
def test_a_client_that_hangs_up_stops_the_generation(
    server: OpenAITestServer, http: httpx.Client, chunk_delay_s: float
) -> None:
    """Closing the response mid-stream makes the next write fail; the server stops and counts it."""
    server.chunk_count, server.chunk_delay_s = 1_000_000, chunk_delay_s
    with http.stream("POST", "/v1/chat/completions", json=chat_body(LLAMA)) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        assert server.active_streams == 1
    assert wait_until(lambda: server.active_streams == 0), "the generation must stop promptly"
    assert server.cancelled_streams == 1
    server.chunk_count = 2
    assert sse_events(http, chat_body(LLAMA))[-1] == "[DONE]"
    assert server.cancelled_streams == 1, "a stream read to its end is not a cancellation"


def test_active_streams_counts_concurrent_generations(server: OpenAITestServer) -> None:
    server.chunk_delay_s = 0.1
    results: list[int] = []
    clients = [httpx.Client(base_url=server.url, timeout=5) for _ in range(3)]
    threads = [
        threading.Thread(target=lambda c=c: results.append(len(sse_events(c, chat_body())))) for c in clients
    ]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: server.active_streams == 3)
    for thread, own in zip(threads, clients, strict=True):
        thread.join(10)
        own.close()
    assert results == [1 + len(THINKING) + 4 + 1 + 1] * 3
    # The server counts a stream done once its handler has finished, which may be just after
    # the client read the last event (CI once saw 1 still active here on a loaded machine).
    assert wait_until(lambda: server.active_streams == 0)
    assert server.cancelled_streams == 0


def test_a_midstream_error_is_an_event_followed_by_done(server: OpenAITestServer, http: httpx.Client) -> None:
    server.fault, server.fault_after_chunks = "midstream_error", 0
    events = sse_events(http, chat_body())
    assert events == [
        json.dumps(
            {
                "error": {
                    "message": MIDSTREAM_ERROR,
                    "type": "InternalServerError",
                    "param": None,
                    "code": 500,
                }
            },
            separators=(",", ":"),
        ),
        "[DONE]",
    ], "a stream's status is 200 from the start: even an error before any token is an event"
    response = http.post("/v1/chat/completions", json=chat_body(stream=False))
    assert response.status_code == 500 and response.json()["error"]["message"] == MIDSTREAM_ERROR


def test_fault_message_replaces_the_servers_text(server: OpenAITestServer, http: httpx.Client) -> None:
    server.fault, server.fault_message = "500", "CUDA out of memory"
    assert (
        http.post("/v1/chat/completions", json=chat_body()).json()["error"]["message"] == "CUDA out of memory"
    )


def test_a_dropped_connection_ends_the_stream_without_done(
    server: OpenAITestServer, http: httpx.Client
) -> None:
    server.fault, server.fault_after_chunks = "drop", 2
    received = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/v1/chat/completions", json=chat_body()) as response,
    ):
        for line in response.iter_lines():
            if line:
                received.append(line)
    assert len(received) == 1 + 2 and "[DONE]" not in "".join(received)


def test_a_stalled_stream_hangs_until_the_client_gives_up(server: OpenAITestServer) -> None:
    server.fault = "stall"
    received = []
    with (
        httpx.Client(base_url=server.url, timeout=httpx.Timeout(5, read=0.5)) as impatient,
        pytest.raises(httpx.ReadTimeout),
        impatient.stream("POST", "/v1/chat/completions", json=chat_body()) as response,
    ):
        for line in response.iter_lines():
            if line:
                received.append(line)
    assert len(received) == 1 + server.fault_after_chunks
    assert wait_until(lambda: server.active_streams == 0), "the server notices the client left"
    assert server.cancelled_streams == 1


def test_stop_ends_stalled_streams_and_idle_connections(server: OpenAITestServer, http: httpx.Client) -> None:
    server.fault = "stall"
    http.get("/v1/models")  # leaves an idle keep-alive connection open
    with http.stream("POST", "/v1/chat/completions", json=chat_body()) as response:
        lines = response.iter_lines()
        next(lines)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 3.0
        with pytest.raises(httpx.RemoteProtocolError):
            list(lines)
    assert server.cancelled_streams == 0, "the server hung up, not the client"


def test_unknown_faults_are_refused_and_refusing_connections_is_stop(server: OpenAITestServer) -> None:
    assert {
        *("404", "500", "midstream_error", "drop", "stall", "stall_headers", "stall_body"),
        *("echo_auth_event", "echo_auth_body", "echo_auth_reason"),
    } == FAULTS
    with pytest.raises(ValueError, match="stop"):
        server.fault = "refuse"
    with pytest.raises(ValueError, match="unknown fault"):
        server.fault = "slow"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "Invalid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"model": "x", "messages": []}', "messages must be a non-empty list"),
        (b'{"messages": [{"role": "robot", "content": "hi"}]}', "must be an object with a role"),
        (b'{"messages": [{"role": "user", "content": 1}]}', "content must be a string or a list"),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
            "max_tokens must be at least 1",
        ),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 3}', "temperature must be"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": 0}', "top_p must be"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "seed": "7"}', "seed must be an integer"),
    ],
)
def test_bad_chat_requests_get_a_400_error_object(http: httpx.Client, body: bytes, message: str) -> None:
    response = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "BadRequestError" and error["code"] == 400


def test_a_request_without_a_model_gets_the_first_served_one_as_in_vllm(http: httpx.Client) -> None:
    reply = http.post("/v1/chat/completions", json={"messages": user("hi")}).json()
    assert reply["model"] == QWEN and reply["choices"][0]["message"]["content"] == "You said: hi"


def test_unknown_paths_and_methods_get_fastapis_answers(http: httpx.Client) -> None:
    assert (http.get("/v1/nope").status_code, http.get("/v1/nope").json()) == (404, {"detail": "Not Found"})
    assert http.get("/models").status_code == 404, "the API lives under /v1"
    response = http.post("/v1/models")
    assert (response.status_code, response.json()) == (405, {"detail": "Method Not Allowed"})


# --- the command line, for benchmarks that run the server in its own process ----------------------------


@pytest.mark.slow
def test_the_command_line_server_prints_ready_serves_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "nbchat.testing.openai_server", "--chunk-count", "5", "--model", "m"]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        assert ready, "no READY line within 10 s"
        assert proc.stdout is not None
        word, base_url = proc.stdout.readline().split()
        assert word == "READY" and base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=5) as official:
            reply = official.chat.completions.create(model="m", messages=user("hi"))
        assert reply.choices[0].message.content == "w0 w1 w2 w3 w4 "
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert proc.stderr is not None and proc.stderr.read() == "", "nothing is logged by default"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_echo_faults_copy_the_authorization_header_where_a_careless_server_would() -> None:
    header = {"Authorization": "Bearer sk-echo-0123456789"}
    echoed = "unexpected Authorization: Bearer sk-echo-0123456789"
    body = {"model": "meta-llama/Llama-3.2-1B-Instruct", "messages": [{"role": "user", "content": "hi"}]}
    with OpenAITestServer() as server, httpx.Client(base_url=server.base_url, headers=header) as http:
        server.fault = "echo_auth_body"
        response = http.post("/chat/completions", json=body)
        assert (response.status_code, response.text) == (400, echoed)
        server.fault = "echo_auth_reason"
        response = http.post("/chat/completions", json=body)
        assert (response.status_code, response.reason_phrase) == (400, echoed)
        server.fault, server.fault_after_chunks = "echo_auth_event", 1
        response = http.post("/chat/completions", json={**body, "stream": True})
        events = [e for e in response.text.split("\n\n") if e]
        assert events[-2:] == [f"data: {echoed}", "data: [DONE]"]
