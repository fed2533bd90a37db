"""A loopback server that speaks the OpenAI chat-completions API, for tests, notebooks and benchmarks.

No vLLM, llama.cpp or TGI server can run where nbchat is tested, so the OpenAI-compatible backend is
tested against this rig. It follows vLLM's OpenAI-compatible server, the common self-hosted one (its
``protocol.py``, ``serving_chat.py`` and API-key middleware), which keeps to OpenAI's wire format:

- ``GET /v1/models``: ``{"object": "list", "data": [model cards]}``, each card with vLLM's
  ``max_model_len`` (left out for a model whose ``max_model_len`` is None, as OpenAI and llama.cpp do);
- ``POST /v1/chat/completions`` with ``"stream": true``: Server-Sent Events over HTTP/1.1 chunked
  transfer, one ``data: {json}\\n\\n`` event per chunk. Every chunk is a ``chat.completion.chunk`` with
  ``choices[0].delta``: the first delta carries the role, the next ones one token each (``content``,
  or ``reasoning_content`` for a reasoning model), a last chunk has an empty delta and the
  ``finish_reason``, then a usage chunk (``choices: []``) when ``stream_options.include_usage`` asks
  for it, then ``data: [DONE]``. Without ``stream`` the reply is one ``chat.completion`` object;
- errors: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status before a stream
  starts, and the same object as a ``data:`` event (followed by ``data: [DONE]``) once it has; a
  missing or wrong API key gets vLLM's bare ``401 {"error": "Unauthorized"}``.

Replies are deterministic (``"You said: <last user message>"`` word by word, one word a token) so
tests can assert on them, and a few attributes make the server slow or make it fail in each way a
real one can. Like vLLM it stops generating as soon as the client goes away; ``cancelled_streams``
counts those generations, so a test can prove that a cancel really reached the server.

In-process::

    with OpenAITestServer() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")

In its own process (prints ``READY http://127.0.0.1:<port>/v1``, stops on SIGTERM)::

    python -m nbchat.testing.openai_server --chunk-count 20000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from itertools import chain, islice
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "FAULTS",
    "MIDSTREAM_ERROR",
    "REASONING_TEXT",
    "STATUS_FAULT_ERROR",
    "OpenAITestServer",
    "ServedModel",
    "default_models",
    "main",
]

REASONING_TEXT = "Let me think about that."
# The texts vLLM sends: EngineDeadError's before a reply starts, GenerationError's during one.
STATUS_FAULT_ERROR = "EngineCore encountered an issue. See stack trace (above) for the root cause."
MIDSTREAM_ERROR = "Internal server error"
FAULTS = frozenset({"404", "500", "midstream_error", "drop", "stall"})
REASONING_STYLES = (None, "reasoning_content", "reasoning", "inline")
_COALESCE_BYTES = 16_384  # a zero-delay stream sends its events in batches of about this size
_POLL_S = 0.05  # how often a wait looks at the client's socket and the stop flag
_ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class ServedModel:
    """A model the fake server serves, as ``/v1/models`` lists it.

    ``reasoning`` says how its thinking streams: None (it does not think), ``"reasoning_content"``
    (vLLM with a reasoning parser, DeepSeek, llama.cpp), ``"reasoning"`` (vLLM 0.10 and later), or
    ``"inline"`` (``<think>…</think>`` inside ``content``: a server that does not separate it).
    """

    id: str
    max_model_len: int | None = 40960  # None: the card has no max_model_len (OpenAI, llama.cpp)
    reasoning: str | None = None
    owned_by: str = "vllm"

    def __post_init__(self) -> None:
        if self.reasoning not in REASONING_STYLES:
            raise ValueError(f"reasoning must be one of {REASONING_STYLES}, not {self.reasoning!r}")


def default_models() -> list[ServedModel]:
    """What a fresh server serves: a reasoning model (vLLM's qwen3 parser) and one that never thinks."""
    return [
        ServedModel("Qwen/Qwen3-1.7B", 40960, "reasoning_content"),
        ServedModel("meta-llama/Llama-3.2-1B-Instruct", 131072),
    ]


# --- small pure helpers -------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """Split text into words that keep their following whitespace, so joining them gives the text back."""
    return re.findall(r"\S+\s*", text)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def _text_of(content: Any) -> str:
    """A message's text: a string, or the ``text`` parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _HTTPError(Exception):
    """Ends a request with this status and vLLM's error object (or ``body`` verbatim)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        err_type: str = "BadRequestError",
        param: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body if body is not None else _error_object(status, message, err_type, param)


def _error_object(status: int, message: str, err_type: str, param: str | None = None) -> dict[str, Any]:
    """vLLM's ErrorResponse: OpenAI's ``{"error": {...}}`` with the status as an integer code."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


class _ClientGone(Exception):
    """The client closed its connection (a write failed, or its socket reached EOF)."""


class _ServerStopping(Exception):
    """stop() was called; the connection is being torn down."""


# --- request checks ---------------------------------------------------------------------------------------


def _check_chat_request(body: Any) -> None:
    """Refuse what vLLM's request model refuses, with short messages naming the field."""
    if not isinstance(body, dict):
        raise _HTTPError(400, "The request body must be a JSON object.")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise _HTTPError(400, "model must be a string.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _HTTPError(400, "messages must be a non-empty list of messages.", param="messages")
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _HTTPError(
                400,
                f"messages[{number}] must be an object with a role of {', '.join(_ROLES)}.",
                param="messages",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _HTTPError(400, f"messages[{number}].content must be a string or a list.", param="messages")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _HTTPError(400, "stream must be true or false.", param="stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise _HTTPError(
            400, "Stream options can only be defined when `stream=True`.", param="stream_options"
        )
    if options is not None and not isinstance(options, dict):
        raise _HTTPError(400, "stream_options must be an object.", param="stream_options")
    for name in ("max_tokens", "max_completion_tokens", "seed"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _HTTPError(400, f"{name} must be an integer, not {value!r}.", param=name)
    for name in ("max_tokens", "max_completion_tokens"):
        if body.get(name) is not None and body[name] < 1:
            raise _HTTPError(400, f"{name} must be at least 1, got {body[name]}.", param=name)
    temperature = body.get("temperature")
    if temperature is not None and (not _is_number(temperature) or not 0 <= temperature <= 2):
        raise _HTTPError(
            400, f"temperature must be a number from 0 to 2, not {temperature!r}.", param="temperature"
        )
    top_p = body.get("top_p")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise _HTTPError(400, f"top_p must be in (0, 1], got {top_p!r}.", param="top_p")


# --- the HTTP side ---------------------------------------------------------------------------------------

_ROUTES: dict[str, dict[str, str]] = {
    "/v1/models": {"GET": "_models"},
    "/v1/chat/completions": {"POST": "_chat"},
}


class _Handler(BaseHTTPRequestHandler):
    """One connection: HTTP/1.1 keep-alive, SSE streams in chunked transfer encoding."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # every event leaves at once: latency measurements stay honest
    server: _HTTPServer

    # Replaced per request in _dispatch.
    _stream_started = False
    _pending: list[bytes]
    _pending_bytes = 0

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.rig.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    # Every method goes through the route table, so an unknown one gets FastAPI's 404/405, not a 501.
    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    @property
    def rig(self) -> OpenAITestServer:
        return self.server.rig

    def _dispatch(self) -> None:
        self._stream_started = False
        path = urlsplit(self.path).path
        try:
            raw = self._read_body()
            self.rig._record(self.command, path, {k.lower(): v for k, v in self.headers.items()}, raw)
            self._check_key(path)
            methods = _ROUTES.get(path)
            if methods is None:
                raise _HTTPError(404, "Not Found", body={"detail": "Not Found"})
            if self.command not in methods:
                raise _HTTPError(405, "Method Not Allowed", body={"detail": "Method Not Allowed"})
            getattr(self, methods[self.command])(raw)
        except _HTTPError as exc:
            self._send_error(exc)
        except (_ClientGone, _ServerStopping):
            self.close_connection = True
        except Exception as exc:
            # A bug in the rig itself: say so loudly rather than let a test fail somewhere obscure.
            traceback.print_exc()
            self.close_connection = True
            if not self._stream_started:
                with contextlib.suppress(_ClientGone, _ServerStopping):
                    self._send_json(
                        500, _error_object(500, f"test server bug: {exc!r}", "InternalServerError")
                    )

    def _check_key(self, path: str) -> None:
        """vLLM's ``--api-key`` middleware: every /v1 request needs ``Authorization: Bearer <key>``."""
        key = self.rig.api_key
        if key is None or not path.startswith("/v1") or self.command == "OPTIONS":
            return
        if self.headers.get("Authorization") != f"Bearer {key}":
            raise _HTTPError(401, "Unauthorized", body={"error": "Unauthorized"})

    def _send_error(self, error: _HTTPError) -> None:
        """An error event if a stream has begun (status 200 is gone already), else a JSON error reply."""
        try:
            if self._stream_started:
                self._event(error.body)
                self._event_bytes(b"data: [DONE]\n\n")
                self._end_stream()
            else:
                self._send_json(error.status, error.body)
        except (_ClientGone, _ServerStopping):
            self.close_connection = True

    # -- reading and writing --------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            try:
                return self.rfile.read(int(length))
            except ValueError:
                self.close_connection = True
                raise _HTTPError(400, "invalid Content-Length") from None
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            try:
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            except ValueError:
                self.close_connection = True
                raise _HTTPError(400, "invalid chunked request body") from None
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        return b""

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError:
            raise self._gone() from None

    def _gone(self) -> Exception:
        """Why the connection failed: our own stop(), or the client going away."""
        return _ServerStopping() if self.rig._stopping.is_set() else _ClientGone()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
        except OSError:
            raise self._gone() from None
        if self.command != "HEAD":
            self._write(body)

    def _send_json(self, status: int, value: Any) -> None:
        self._send(status, _dumps(value), "application/json")

    def _event(self, value: dict[str, Any], *, flush: bool = True) -> None:
        """One SSE event, ``data: {json}`` and a blank line, as one HTTP chunk."""
        self._event_bytes(b"data: " + _dumps(value) + b"\n\n", flush=flush)

    def _event_bytes(self, event: bytes, *, flush: bool = True) -> None:
        """The first event sends the headers, as uvicorn does with the first body chunk.

        flush=False lets events wait (up to _COALESCE_BYTES) to go out in one send: a zero-delay
        stream is then limited by the client, not by a system call per chunk.
        """
        if not self._stream_started:
            self._stream_started = True
            self._pending, self._pending_bytes = [], 0
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
            except OSError:
                raise self._gone() from None
        self._pending.append(b"%x\r\n%b\r\n" % (len(event), event))
        self._pending_bytes += len(event)
        if flush or self._pending_bytes >= _COALESCE_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._stream_started and self._pending:
            data = b"".join(self._pending)
            self._pending, self._pending_bytes = [], 0
            self._write(data)

    def _end_stream(self) -> None:
        self._flush()
        self._write(b"0\r\n\r\n")

    def _drop(self) -> None:
        """Close the connection mid-response, without [DONE] or the chunked terminator."""
        if self._stream_started:
            with contextlib.suppress(_ClientGone, _ServerStopping):
                self._flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _peer_closed(self, timeout: float) -> bool:
        """Wait up to timeout for the client's socket to reach EOF; True if it did (or broke)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], timeout)
            if not readable:
                return False
            if self.connection.recv(1, socket.MSG_PEEK) == b"":
                return True
        except (OSError, ValueError):
            return True
        time.sleep(timeout)  # the client sent bytes early (a pipelined request): not a disconnect
        return False

    def _wait(self, seconds: float) -> None:
        """Sleep, but notice at once a client that hangs up and a server that stops."""
        if self.rig._stopping.is_set():
            raise _ServerStopping
        if seconds <= 0:
            return
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            closed = self._peer_closed(min(remaining, _POLL_S))
            if self.rig._stopping.is_set():
                raise _ServerStopping
            if closed:
                raise _ClientGone

    # -- endpoints ------------------------------------------------------------------------------------

    def _models(self, raw: bytes) -> None:
        self._send_json(200, {"object": "list", "data": self.rig._cards()})

    def _chat(self, raw: bytes) -> None:
        rig = self.rig
        try:
            body = json.loads(raw) if raw.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _HTTPError(400, f"Invalid JSON in the request body: {exc}") from None
        _check_chat_request(body)
        name = body.get("model") or rig._first_model_id()
        model = rig._lookup(name)
        if model is None or rig.fault == "404":
            message = rig.fault_message or f"The model `{name}` does not exist."
            raise _HTTPError(404, message, err_type="NotFoundError", param="model")
        if rig.fault == "500":
            raise _HTTPError(500, rig.fault_message or STATUS_FAULT_ERROR, err_type="InternalServerError")
        with rig._generation():
            try:
                self._generate(model, body)
            except _ClientGone:
                rig._count_cancelled()
                raise

    def _generate(self, model: ServedModel, body: dict[str, Any]) -> None:
        """Stream (or collect) the scripted reply, honouring delays, max_tokens and the fault script."""
        rig = self.rig
        stream = body.get("stream") is True
        messages = body["messages"]
        answer, answer_len = rig._answer(messages)
        thinking = _thinking_pieces(model.reasoning)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        pieces: Iterator[tuple[str, str]] = chain(thinking, (("content", word) for word in answer))
        finish_reason = "stop"
        if limit is not None and limit < len(thinking) + answer_len:  # vLLM counts reasoning tokens too
            pieces, finish_reason = islice(pieces, limit), "length"
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        header = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model.id,
        }
        fault, fault_after = rig.fault, rig.fault_after_chunks
        first_delay, delay = rig.first_chunk_delay_s, rig.chunk_delay_s
        collected: dict[str, list[str]] = {}
        sent = 0
        for field, text in pieces:
            if fault in ("midstream_error", "drop", "stall") and sent >= fault_after:
                break
            self._wait(first_delay if sent == 0 else delay)
            if stream:
                if sent == 0:  # vLLM sends the role with the first token, once the prompt is processed
                    self._event({**header, "choices": [_choice({"role": "assistant", "content": ""})]})
                self._event({**header, "choices": [_choice({field: text})]}, flush=sent == 0 or delay > 0)
            else:
                collected.setdefault(field, []).append(text)
            sent += 1
        if fault == "midstream_error":
            message = rig.fault_message or MIDSTREAM_ERROR
            if not stream:
                raise _HTTPError(500, message, err_type="InternalServerError")
            # A stream's status is 200 from the start, so even an error before any token is an event.
            self._event(_error_object(500, message, "InternalServerError"))
            self._event_bytes(b"data: [DONE]\n\n")
            self._end_stream()
            return
        if fault == "stall":
            if self._stream_started:
                self._flush()
            self._wait(math.inf)  # until the client hangs up (_ClientGone) or stop() (_ServerStopping)
        if fault in ("drop", "stall"):
            self._drop()
            return
        prompt_tokens = sum(len(_text_of(m.get("content")).split()) for m in messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + sent,
            "completion_tokens": sent,
        }
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(collected.get("content", []))}
            field = model.reasoning if model.reasoning in ("reasoning_content", "reasoning") else None
            if field is not None:
                message[field] = "".join(collected.get(field, [])) or None
            message["tool_calls"] = []
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
            self._send_json(200, {**header, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        if sent == 0:
            self._event({**header, "choices": [_choice({"role": "assistant", "content": ""})]})
        self._event({**header, "choices": [_choice({}, finish_reason)]}, flush=False)
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage", True) is not False:
            self._event({**header, "choices": [], "usage": usage}, flush=False)
        self._event_bytes(b"data: [DONE]\n\n", flush=False)
        self._end_stream()


def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _thinking_pieces(style: str | None) -> list[tuple[str, str]]:
    """The reasoning tokens of a model, as (delta field, text); Qwen3's own shape when inline."""
    if style is None:
        return []
    words = _words(REASONING_TEXT)
    if style == "inline":
        return [("content", t) for t in ("<think>", "\n", *words, "\n", "</think>", "\n\n")]
    return [(style, word) for word in words]


class _HTTPServer(HTTPServer):
    """A thread per connection, each tracked, so that stop() can close them all and wait for them."""

    request_queue_size = 128  # many users' streams at once
    daemon_threads = True

    def __init__(self, address: tuple[str, int], rig: OpenAITestServer) -> None:
        self.rig = rig
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, a DNS query that can stall; we need none.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name="openai-test-conn",
            daemon=True,
        )
        with self._lock:
            self._connections[request] = thread
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._lock:
                self._connections.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connections reset by clients are routine here; anything else is a bug in the rig.
        if self.rig.verbose or not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection (idle keep-alive ones too) and wait for their threads."""
        with self._lock:
            connections = dict(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in connections.values():
            thread.join(max(0.0, deadline - time.monotonic()))


class OpenAITestServer:
    """A fake OpenAI-compatible server (vLLM's flavour) on 127.0.0.1 and a free port; see the module doc.

    ``url`` is the server's root, ``base_url`` the API root (``url + "/v1"``) that clients and
    ``OPENAI_BASE_URL`` take. By default a chat is answered with the words of ``f"You said: {last user
    message}"``, one word (with its following whitespace) a token; a reasoning model first streams
    ``"Let me think about that."`` word by word in its reasoning style. The attributes below, read at the
    start of each request, change that:

    - ``reply_words``: the answer tokens, verbatim.
    - ``chunk_count``: the answer is exactly this many tokens ``"w0 ", "w1 ", ...`` (wins over reply_words).
    - ``first_chunk_delay_s`` / ``chunk_delay_s``: sleep before the first token / between tokens.
    - ``api_key``: when set, every /v1 request needs ``Authorization: Bearer <api_key>`` (else 401).
    - ``fault``: None, or one of ``FAULTS``: ``"404"`` and ``"500"`` refuse the chat with that status;
      ``"midstream_error"``, ``"drop"``, ``"stall"`` let ``fault_after_chunks`` tokens (reasoning ones
      included) through, then end with an error event / cut the connection without ``[DONE]`` / hang
      until the client hangs up or the server stops. A refused connection is what stop() gives.
    - ``fault_message``: the error text a fault sends instead of vLLM's usual one.

    ``max_tokens`` (or ``max_completion_tokens``) caps the tokens, reasoning included, with
    finish_reason "length".
    """

    def __init__(
        self, models: list[ServedModel] | None = None, *, port: int = 0, verbose: bool = False
    ) -> None:
        self.verbose = verbose  # log requests and connection errors to stderr
        self.url = ""
        self.base_url = ""
        self.reply_words: list[str] | None = None
        self.chunk_count: int | None = None
        self.chunk_delay_s = 0.0
        self.first_chunk_delay_s = 0.0
        self.fault_after_chunks = 3
        self.fault_message: str | None = None
        self.api_key: str | None = None
        # {"method", "path", "headers" (names in lower case), "body"} per request; append-only.
        self.requests: list[dict[str, Any]] = []
        self._fault: str | None = None
        self._port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._active = 0
        self._cancelled = 0
        self._models: dict[str, ServedModel] = {}
        self._created = int(time.time())
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        for model in default_models() if models is None else models:
            self.add_model(model)

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> OpenAITestServer:
        if self._httpd is not None:
            raise RuntimeError("this OpenAITestServer was already started; make a new one")
        self._httpd = _HTTPServer(("127.0.0.1", self._port), self)
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        self.base_url = f"{self.url}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": _POLL_S},
            name="openai-test-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the port (connections are then refused), end every stream and join every thread."""
        if self._httpd is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections(timeout=5.0)
        if self._thread is not None:
            self._thread.join(5.0)

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- script and observations ----------------------------------------------------------------------

    @property
    def fault(self) -> str | None:
        return self._fault

    @fault.setter
    def fault(self, value: str | None) -> None:
        if value == "refuse":
            raise ValueError("to refuse connections, stop() the server: its port then refuses them")
        if value is not None and value not in FAULTS:
            raise ValueError(f"unknown fault {value!r}; expected None or one of {sorted(FAULTS)}")
        self._fault = value

    @property
    def active_streams(self) -> int:
        """Chat generations in progress now."""
        with self._lock:
            return self._active

    @property
    def cancelled_streams(self) -> int:
        """Chat generations that stopped early because the client went away."""
        with self._lock:
            return self._cancelled

    def add_model(self, model: ServedModel) -> None:
        """Serve a model (replacing one with the same id)."""
        with self._lock:
            self._models[model.id] = model

    def remove_model(self, model_id: str) -> None:
        """Stop serving a model; KeyError if there is none with that id."""
        with self._lock:
            del self._models[model_id]

    # -- state used by the handler --------------------------------------------------------------------

    def _record(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> None:
        try:
            body: Any = json.loads(raw) if raw.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = raw.decode("utf-8", "replace")
        with self._lock:
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body})

    def _lookup(self, model_id: str) -> ServedModel | None:
        with self._lock:
            return self._models.get(model_id)  # vLLM matches served model names exactly

    def _first_model_id(self) -> str:
        with self._lock:
            return next(iter(self._models), "")

    def _cards(self) -> list[dict[str, Any]]:
        """vLLM's ModelCards; ``max_model_len`` only where the model has one."""
        with self._lock:
            models = list(self._models.values())
        cards = []
        for model in models:
            card: dict[str, Any] = {
                "id": model.id,
                "object": "model",
                "created": self._created,
                "owned_by": model.owned_by,
                "root": model.id,
                "parent": None,
            }
            if model.max_model_len is not None:
                card["max_model_len"] = model.max_model_len
            card["permission"] = [
                {
                    "id": f"modelperm-{uuid.uuid5(uuid.NAMESPACE_URL, model.id).hex}",
                    "object": "model_permission",
                    "created": self._created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ]
            cards.append(card)
        return cards

    @contextlib.contextmanager
    def _generation(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    def _count_cancelled(self) -> None:
        with self._lock:
            self._cancelled += 1

    def _answer(self, messages: list[dict[str, Any]]) -> tuple[Iterator[str], int]:
        """The answer tokens (lazily: a benchmark may ask for millions) and how many there are."""
        count = self.chunk_count
        if count is not None:
            return (f"w{i} " for i in range(count)), count
        words = self.reply_words
        if words is None:
            users = [m for m in messages if m.get("role") == "user"]
            last = _text_of(users[-1].get("content")) if users else ""
            words = _words(f"You said: {last}")
        words = list(words)
        return iter(words), len(words)


# --- command line ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print ``READY <base url>`` once listening, for the parent process."""
    parser = argparse.ArgumentParser(
        prog="python -m nbchat.testing.openai_server",
        description="A loopback fake OpenAI-compatible (vLLM-like) server.",
    )
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--chunk-count", type=int, default=None, help="answer with exactly N tokens")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--first-chunk-delay", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument(
        "--model", action="append", default=[], metavar="ID", help="a model that never thinks"
    )
    parser.add_argument(
        "--reasoning-model", action="append", default=[], metavar="ID", help="a model with reasoning_content"
    )
    parser.add_argument("--api-key", default=None, help="require this key (Authorization: Bearer ...)")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)

    models = [ServedModel(m) for m in args.model] + [
        ServedModel(m, reasoning="reasoning_content") for m in args.reasoning_model
    ]
    server = OpenAITestServer(models or None, port=args.port, verbose=args.verbose)
    server.chunk_count = args.chunk_count
    server.chunk_delay_s = args.chunk_delay
    server.first_chunk_delay_s = args.first_chunk_delay
    server.api_key = args.api_key

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    try:
        print(f"READY {server.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
