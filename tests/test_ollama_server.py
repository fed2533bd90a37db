"""The fake Ollama server is faithful: the official ``ollama`` client and plain httpx both accept it.

nbchat's Ollama backend is tested against ``nbchat.testing.ollama_server`` because no real Ollama can
run here. These tests hold the rig to the contract (shared/reference/ollama-api.md): the official
client must parse every answer, raise the same errors a real server provokes, and the raw wire
format must match, down to the chunked NDJSON stream, the done line's metrics, and the ways a
stream can fail (an error line, a dropped connection, a stall). They also prove the rig notices a
client that hangs up, which is what nbchat's cancel tests rely on.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from nbchat.testing.ollama_server import FAULTS, MIDSTREAM_ERROR, FakeModel, OllamaTestServer

REPO_ROOT = Path(__file__).resolve().parent.parent
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z")
THINKING = ["Let ", "me ", "think ", "about ", "that."]
METRICS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@pytest.fixture
def server() -> Iterator[OllamaTestServer]:
    """A fresh server with the default models: qwen3:1.7b (thinking) and llama3.2:1b (no thinking)."""
    with OllamaTestServer() as running:
        yield running
    leftovers = [t.name for t in threading.enumerate() if t.name.startswith("ollama-test")]
    assert leftovers == [], "stop() must leave no server threads behind"


@pytest.fixture
def client(server: OllamaTestServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.url, timeout=5) as official:
        yield official


@pytest.fixture
def http(server: OllamaTestServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5) as raw:
        yield raw


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def chat_body(model: str = "qwen3:1.7b", text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": user(text), **extra}


def stream_lines(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in response.iter_lines()]


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- the official client ------------------------------------------------------------------------------


def test_streamed_chat_sends_thinking_first_then_the_answer_then_metrics(client: ollama.Client) -> None:
    """A thinking model streams reasoning and answer in separate chunks; only the last one has metrics."""
    chunks = list(client.chat(model="qwen3:1.7b", messages=user("hello there"), stream=True))
    *parts, done = chunks
    thinking = [c.message.thinking for c in parts if c.message.thinking]
    answer = [c.message.content for c in parts if c.message.content]
    assert thinking == THINKING
    assert answer == ["You ", "said: ", "hello ", "there"]
    assert all(not (c.message.thinking and c.message.content) for c in parts), "never both in one chunk"
    assert parts.index(next(c for c in parts if c.message.content)) == len(THINKING), "thinking comes first"
    assert all(not c.done and c.eval_count is None and c.done_reason is None for c in parts)
    assert all(c.model == "qwen3:1.7b" and RFC3339_UTC.fullmatch(c.created_at or "") for c in chunks)

    assert done.done and done.done_reason == "stop"
    assert done.message.content == "" and done.message.role == "assistant"
    assert done.eval_count == len(THINKING) + len(answer)
    assert done.prompt_eval_count == 2  # the words of all messages' contents
    assert all(getattr(done, metric) > 0 for metric in METRICS)
    assert done.total_duration >= done.load_duration + done.prompt_eval_duration + done.eval_duration


def test_non_streamed_chat_is_one_object_with_the_whole_message(client: ollama.Client) -> None:
    reply = client.chat(model="qwen3:1.7b", messages=user("hi"), stream=False)
    assert reply.done and reply.done_reason == "stop"
    assert reply.message.content == "You said: hi"
    assert reply.message.thinking == "Let me think about that."
    assert reply.eval_count == len(THINKING) + 3


def test_think_false_on_a_thinking_model_streams_no_thinking(client: ollama.Client) -> None:
    chunks = list(client.chat(model="qwen3:1.7b", messages=user("hi"), think=False, stream=True))
    assert all(c.message.thinking is None for c in chunks)
    assert "".join(c.message.content for c in chunks) == "You said: hi"
    assert chunks[-1].eval_count == 3


def test_a_model_without_the_capability_never_thinks_unasked(client: ollama.Client) -> None:
    reply = client.chat(model="llama3.2:1b", messages=user("hi"))
    assert reply.message.thinking is None and reply.message.content == "You said: hi"


def test_think_true_on_a_model_without_the_capability_is_a_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="llama3.2:1b", messages=user("hi"), think=True)
    assert caught.value.status_code == 400
    assert caught.value.error == '"llama3.2:1b" does not support thinking'


def test_an_unknown_model_is_a_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        list(client.chat(model="nope:1b", messages=user("hi"), stream=True))
    assert caught.value.status_code == 404
    assert caught.value.error == 'model "nope:1b" not found, try pulling it first'


def test_a_midstream_error_line_reaches_the_official_client_as_status_minus_one(
    server: OllamaTestServer, client: ollama.Client
) -> None:
    """The status is already 200 when the error comes, so the client can only raise with code -1."""
    server.fault = "midstream_error"
    received = []
    with pytest.raises(ollama.ResponseError) as caught:
        for chunk in client.chat(model="qwen3:1.7b", messages=user("hi"), stream=True):
            received.append(chunk)
    assert len(received) == server.fault_after_chunks
    assert caught.value.status_code == -1
    assert caught.value.error == MIDSTREAM_ERROR


def test_list_shows_the_installed_models(server: OllamaTestServer, client: ollama.Client) -> None:
    server.add_model(FakeModel("qwen3:4b", parameter_size="4.0B", size=2_500_000_000))
    server.remove_model("llama3.2:1b")
    models = {m.model: m for m in client.list().models}
    assert set(models) == {"qwen3:1.7b", "qwen3:4b"}
    qwen = models["qwen3:1.7b"]
    assert qwen.size == 1_400_000_000 and qwen.modified_at is not None and len(qwen.digest or "") == 64
    assert qwen.details is not None
    assert (qwen.details.family, qwen.details.parameter_size, qwen.details.format) == (
        "qwen3",
        "1.7B",
        "gguf",
    )


def test_show_reports_capabilities_and_the_context_length(client: ollama.Client) -> None:
    qwen = client.show("qwen3:1.7b")
    assert qwen.capabilities == ["completion", "thinking"]
    assert qwen.modelinfo is not None and qwen.modelinfo["qwen3.context_length"] == 40960
    assert qwen.details is not None and qwen.details.family == "qwen3"


def test_show_matches_names_like_ollama_and_404s_unknown_ones(client: ollama.Client) -> None:
    assert client.show("QWEN3:1.7B").capabilities == ["completion", "thinking"]
    assert client.show("llama3.2:1b").capabilities == ["completion"]
    with pytest.raises(ollama.ResponseError) as caught:
        client.show("llama3.2")  # no tag means :latest, which is not installed
    assert caught.value.status_code == 404


def test_ps_lists_the_models_a_chat_loaded(client: ollama.Client) -> None:
    assert client.ps().models == []
    client.chat(model="qwen3:1.7b", messages=user("hi"), options={"num_ctx": 8192})
    (loaded,) = client.ps().models
    assert loaded.model == "qwen3:1.7b" and loaded.context_length == 8192
    assert loaded.expires_at is not None and loaded.size_vram == loaded.size


def test_pull_streams_progress_and_then_the_model_is_installed(client: ollama.Client) -> None:
    progress = list(client.pull("qwen3:4b", stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [p for p in progress if p.digest]
    first = layers[0]
    assert first.status == f"pulling {first.digest[7:19]}" and first.digest.startswith("sha256:")
    assert first.total and first.completed is None, "completed is missing before the first byte"
    same_layer = [p.completed for p in layers if p.digest == first.digest][1:]
    assert same_layer == sorted(same_layer) and same_layer[-1] == first.total
    assert "qwen3:4b" in {m.model for m in client.list().models}


def test_pull_without_streaming_answers_success_once(client: ollama.Client) -> None:
    assert client.pull("gemma3:1b").status == "success"
    assert client.show("gemma3:1b").capabilities == ["completion"]


def test_pulling_an_unknown_model_fails_as_ollama_does(client: ollama.Client) -> None:
    """Streaming: "pulling manifest", then an error line (status -1). Not streaming: a 500."""
    received = []
    with pytest.raises(ollama.ResponseError) as streamed:
        for progress in client.pull("does-not-exist", stream=True):
            received.append(progress.status)
    assert received == ["pulling manifest"]
    assert (streamed.value.status_code, streamed.value.error) == (
        -1,
        "pull model manifest: file does not exist",
    )
    with pytest.raises(ollama.ResponseError) as whole:
        client.pull("does-not-exist")
    assert (whole.value.status_code, whole.value.error) == (500, "pull model manifest: file does not exist")


def test_a_stopped_server_refuses_connections(server: OllamaTestServer, client: ollama.Client) -> None:
    server.stop()
    with pytest.raises(ConnectionError, match="Failed to connect to Ollama"):
        client.list()


# --- the wire format, with plain httpx ----------------------------------------------------------------


def test_version_and_root_are_cheap_health_probes(server: OllamaTestServer, http: httpx.Client) -> None:
    assert http.get("/api/version").json() == {"version": "0.12.3"}
    assert http.get("/").text == "Ollama is running"
    head = http.head("/")
    assert head.status_code == 200 and head.content == b""
    with OllamaTestServer(version="0.5.1") as other:
        assert httpx.get(f"{other.url}/api/version", timeout=5).json() == {"version": "0.5.1"}


def test_stream_lines_have_exactly_the_documented_keys(http: httpx.Client) -> None:
    thought, *_, said, done = stream_lines(http, chat_body(text="hi"))
    assert set(thought) == {"model", "created_at", "message", "done"}
    assert thought["message"] == {"role": "assistant", "content": "", "thinking": "Let "}
    assert said["message"] == {"role": "assistant", "content": "hi"}
    counts = {"prompt_eval_count", "eval_count"}
    assert set(done) == {"model", "created_at", "message", "done", "done_reason", *counts, *METRICS}
    assert all(isinstance(done[metric], int) for metric in METRICS)


def test_one_connection_serves_many_requests(server: OllamaTestServer, http: httpx.Client) -> None:
    """HTTP/1.1 keep-alive: streams end with the chunked terminator, so the connection is reused."""
    for _ in range(3):
        assert stream_lines(http, chat_body())[-1]["done"] is True
        assert http.get("/api/tags").status_code == 200
    assert len(server.requests) == 6


def test_every_request_is_recorded_with_its_path_and_body(
    server: OllamaTestServer, http: httpx.Client
) -> None:
    http.get("/api/tags")
    http.post("/api/chat", json=chat_body(stream=False, keep_alive="10m"))
    assert server.requests == [
        {"method": "GET", "path": "/api/tags", "body": None},
        {"method": "POST", "path": "/api/chat", "body": chat_body(stream=False, keep_alive="10m")},
    ]


def test_reply_words_replace_the_echo(server: OllamaTestServer, http: httpx.Client) -> None:
    server.reply_words = ["Hello", ", ", "world"]
    lines = stream_lines(http, chat_body(think=False))
    assert [line["message"]["content"] for line in lines[:-1]] == ["Hello", ", ", "world"]


def test_chunk_count_streams_exactly_that_many_answer_chunks(
    server: OllamaTestServer, http: httpx.Client
) -> None:
    """The benchmark setting: 20,000 chunks "w0 ", "w1 ", ... as fast as the client reads them."""
    server.chunk_count = 20_000
    *chunks, done = stream_lines(http, chat_body("llama3.2:1b"))
    assert len(chunks) == 20_000 == done["eval_count"]
    assert chunks[0]["message"]["content"] == "w0 " and chunks[-1]["message"]["content"] == "w19999 "
    assert done["done_reason"] == "stop"


def test_num_predict_caps_the_answer_but_not_the_thinking(http: httpx.Client) -> None:
    *chunks, done = stream_lines(http, chat_body(text="one two three four", options={"num_predict": 2}))
    answer = [c["message"]["content"] for c in chunks if c["message"]["content"]]
    assert answer == ["You ", "said: "]
    assert len(chunks) == len(THINKING) + 2 == done["eval_count"]
    assert done["done_reason"] == "length"
    uncapped = stream_lines(http, chat_body(text="one", options={"num_predict": 50}))
    assert uncapped[-1]["done_reason"] == "stop"


def test_delays_make_a_slow_first_token_and_a_steady_stream(
    server: OllamaTestServer, http: httpx.Client
) -> None:
    server.first_chunk_delay_s, server.chunk_delay_s = 0.3, 0.05
    started = time.monotonic()
    with http.stream("POST", "/api/chat", json=chat_body("llama3.2:1b", "a b")) as response:
        lines = response.iter_lines()
        next(lines)
        first_token_s = time.monotonic() - started
        rest = list(lines)
    total_s = time.monotonic() - started
    assert 0.3 <= first_token_s < 1.5
    assert total_s >= 0.3 + 3 * 0.05  # four answer chunks: "You ", "said: ", "a ", "b"
    done = json.loads(rest[-1])
    assert done["prompt_eval_duration"] >= 0.3e9, "the slow first token is measured as prompt evaluation"
    assert done["eval_duration"] >= 3 * 0.05e9


@pytest.mark.parametrize("chunk_delay_s", [0.0, 0.01])
def test_a_client_that_hangs_up_stops_the_generation(
    server: OllamaTestServer, http: httpx.Client, chunk_delay_s: float
) -> None:
    """Closing the response mid-stream makes the next write fail; the server stops and counts it."""
    server.chunk_count, server.chunk_delay_s = 1_000_000, chunk_delay_s
    with http.stream("POST", "/api/chat", json=chat_body("llama3.2:1b")) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        assert server.active_streams == 1
    assert wait_until(lambda: server.active_streams == 0), "the generation must stop promptly"
    assert server.cancelled_streams == 1
    assert stream_lines(http, chat_body("llama3.2:1b", options={"num_predict": 1}))[-1]["done"]
    assert server.cancelled_streams == 1, "a stream read to its end is not a cancellation"


def test_active_streams_counts_concurrent_generations(server: OllamaTestServer) -> None:
    """Each connection has its own thread, so several users' streams run side by side."""
    server.chunk_delay_s = 0.1
    results: list[int] = []
    clients = [httpx.Client(base_url=server.url, timeout=5) for _ in range(3)]
    threads = [
        threading.Thread(target=lambda c=c: results.append(len(stream_lines(c, chat_body()))))
        for c in clients
    ]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: server.active_streams == 3)
    for thread, own in zip(threads, clients, strict=True):
        thread.join(5)
        own.close()
    assert results == [len(THINKING) + 5] * 3
    assert wait_until(lambda: server.active_streams == 0)  # counted done once each handler finished
    assert server.cancelled_streams == 0


def test_a_dropped_connection_ends_the_stream_without_a_done_line(
    server: OllamaTestServer, http: httpx.Client
) -> None:
    server.fault, server.fault_after_chunks = "drop", 2
    received = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/api/chat", json=chat_body()) as response,
    ):
        for line in response.iter_lines():
            received.append(json.loads(line))
    assert len(received) == 2 and not any(line["done"] for line in received)


def test_a_stalled_stream_hangs_until_the_client_gives_up(server: OllamaTestServer) -> None:
    server.fault = "stall"
    received = []
    with (
        httpx.Client(base_url=server.url, timeout=httpx.Timeout(5, read=0.5)) as impatient,
        pytest.raises(httpx.ReadTimeout),
        impatient.stream("POST", "/api/chat", json=chat_body()) as response,
    ):
        for line in response.iter_lines():
            received.append(line)
    assert len(received) == server.fault_after_chunks
    assert wait_until(lambda: server.active_streams == 0), "the server notices the client left"
    assert server.cancelled_streams == 1


def test_stop_ends_stalled_streams_and_idle_connections(server: OllamaTestServer, http: httpx.Client) -> None:
    server.fault = "stall"
    http.get("/api/tags")  # leaves an idle keep-alive connection open
    with http.stream("POST", "/api/chat", json=chat_body()) as response:
        lines = response.iter_lines()
        next(lines)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2.0
        with pytest.raises(httpx.RemoteProtocolError):
            list(lines)
    assert server.cancelled_streams == 0, "the server hung up, not the client"


@pytest.mark.parametrize(
    ("fault", "status", "error"),
    [
        ("404", 404, 'model "qwen3:1.7b" not found, try pulling it first'),
        ("500", 500, "llama runner process has terminated: exit status 2"),
        ("503", 503, "server busy, please try again.  maximum pending requests exceeded"),
    ],
)
def test_status_faults_refuse_the_chat_before_any_chunk(
    server: OllamaTestServer, client: ollama.Client, fault: str, status: int, error: str
) -> None:
    server.fault = fault
    with pytest.raises(ollama.ResponseError) as caught:
        list(client.chat(model="qwen3:1.7b", messages=user("hi"), stream=True))
    assert (caught.value.status_code, caught.value.error) == (status, error)


def test_a_midstream_error_before_any_chunk_is_a_plain_500(
    server: OllamaTestServer, http: httpx.Client
) -> None:
    """Ollama sets the status with its first write, so an error that comes first is still a 500."""
    server.fault, server.fault_after_chunks = "midstream_error", 0
    response = http.post("/api/chat", json=chat_body())
    assert (response.status_code, response.json()) == (500, {"error": MIDSTREAM_ERROR})


def test_unknown_faults_are_refused_and_refusing_connections_is_stop(server: OllamaTestServer) -> None:
    assert {"404", "500", "503", "midstream_error", "drop", "stall", "stall_headers", "stall_body"} == FAULTS
    with pytest.raises(ValueError, match="stop"):
        server.fault = "refuse"
    with pytest.raises(ValueError, match="unknown fault"):
        server.fault = "slow"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, "invalid JSON in request body"),
        (b"", 400, "missing request body"),
        (b"[]", 400, "json: cannot unmarshal array into Go value of type api.ChatRequest"),
        (b'{"messages": []}', 400, "model is required"),
        (b'{"model": "qwen3:1.7b", "messages": "hi"}', 400, "json: cannot unmarshal string into Go struct"),
        (b'{"model": "qwen3:1.7b", "messages": [{"role": 1}]}', 400, "json: cannot unmarshal number"),
        (b'{"model": "qwen3:1.7b", "messages": [], "think": "max"}', 400, "invalid think value"),
        (
            b'{"model": "qwen3:1.7b", "messages": [], "options": {"num_predict": "2"}}',
            500,
            'option "num_predict" must be',
        ),
    ],
)
def test_bad_chat_requests_get_an_error_object(
    http: httpx.Client, body: bytes, status: int, error: str
) -> None:
    response = http.post("/api/chat", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"].startswith(error)


def test_unknown_paths_are_404(http: httpx.Client) -> None:
    assert http.get("/api/nope").status_code == 404
    assert http.post("/api/tags").status_code == 404


def test_empty_messages_load_the_model_and_keep_alive_zero_unloads_it(http: httpx.Client) -> None:
    loaded = http.post("/api/chat", json={"model": "qwen3:1.7b", "messages": []}).json()
    assert (loaded["done"], loaded["done_reason"], loaded["message"]) == (
        True,
        "load",
        {"role": "assistant", "content": ""},
    )
    assert [m["model"] for m in http.get("/api/ps").json()["models"]] == ["qwen3:1.7b"]
    unloaded = http.post("/api/chat", json={"model": "qwen3:1.7b", "messages": [], "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload"
    assert http.get("/api/ps").json() == {"models": []}


# --- the command line, for benchmarks that run the server in its own process ----------------------------


@pytest.mark.slow
def test_the_command_line_server_prints_ready_serves_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "nbchat.testing.ollama_server", "--chunk-count", "5", "--model", "m:1b"]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 4.0)
        assert ready, "no READY line within 4 s"
        assert proc.stdout is not None
        word, url = proc.stdout.readline().split()
        assert word == "READY" and url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/api/version", timeout=2).json() == {"version": "0.12.3"}
        with httpx.Client(base_url=url, timeout=2) as http:
            lines = stream_lines(http, chat_body("m:1b", think=False))
        assert [line["message"]["content"] for line in lines[:-1]] == [f"w{i} " for i in range(5)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=3) == 0
        assert proc.stderr is not None and proc.stderr.read() == "", "nothing is logged by default"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
