"""What the loopback test servers share: a threaded fake HTTP server on 127.0.0.1 with switchable faults.

``ollama_server`` and ``openai_server`` fake two different APIs, but a fake that tests can trust needs
the same machinery under either: a thread per keep-alive connection that stop() can close and wait
for; streams in HTTP/1.1 chunked transfer whose first chunk carries the headers, as real servers send
them; generations that notice at once a client hanging up (so ``cancelled_streams`` proves a cancel
reached the server) or the server stopping; a fault switch; a log of every request; and a
``python -m`` mode that prints ``READY <url>`` for a parent process. That lives here, once.

Each server keeps its own protocol in its own module: routes, payloads, error shapes and wire format,
by subclassing ``LoopbackHandler`` (the hooks ``_route``, ``_error`` and ``_stream_error``) and
``LoopbackServer``.
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
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar, Generic, TypeVar, cast
from urllib.parse import urlsplit

__all__ = [
    "COALESCE_BYTES",
    "POLL_S",
    "STALL_FAULTS",
    "ClientGone",
    "HTTPError",
    "LoopbackHTTPServer",
    "LoopbackHandler",
    "LoopbackServer",
    "RawJSON",
    "dumps",
    "dumps_with",
    "hanging_port",
    "message_text",
    "script_parser",
    "serve_until_signalled",
    "words",
]

COALESCE_BYTES = 16_384  # a zero-delay stream sends its chunks in batches of about this size
POLL_S = 0.05  # how often a wait looks at the client's socket and the stop flag

# Faults both servers know: a reply that hangs before its status line (a cold model load behind a
# server that answers only once generating) / after its headers, before the first chunk.
STALL_FAULTS = frozenset({"stall_headers", "stall_body"})

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> bytes:
    """Compact JSON with raw UTF-8, as Go's encoding/json and Python's ASGI servers write it."""
    return _ENCODER.encode(value).encode()


class RawJSON(str):
    """JSON text sent as it is: a value Python's encoder cannot write (``1e400``, ``1e-320`` as typed)
    or a server's nonsense (``NaN`` deep inside an object)."""


def dumps_with(value: dict[str, Any], fields: dict[str, Any] | None) -> bytes:
    """``value`` as compact JSON with ``fields`` set on it (replacing its own); RawJSON goes verbatim."""
    if not fields:
        return dumps(value)
    merged = {**value, **fields}
    items = [
        dumps(k) + b":" + (v.encode() if isinstance(v, RawJSON) else dumps(v)) for k, v in merged.items()
    ]
    return b"{" + b",".join(items) + b"}"


def words(text: str) -> list[str]:
    """Split text into words that keep their following whitespace, so joining them gives the text back."""
    return re.findall(r"\S+\s*", text)


def message_text(content: Any) -> str:
    """A message's text: a string, or the ``text`` parts of a content-part list; anything else is ""."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class HTTPError(Exception):
    """Ends a request with this status and JSON body, or in-band once a stream has begun.

    Each protocol subclasses it to build its own error ``body`` from a status and a message.
    """

    def __init__(self, status: int, message: str, body: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body


class ClientGone(Exception):
    """The client closed its connection (a write failed, or its socket reached EOF)."""


class ServerStopping(Exception):
    """stop() was called; the connection is being torn down."""


RigT = TypeVar("RigT", bound="LoopbackServer")
ServerT = TypeVar("ServerT", bound="LoopbackServer")


class LoopbackHandler(BaseHTTPRequestHandler, Generic[RigT]):
    """One connection: HTTP/1.1 keep-alive, JSON replies, streams in chunked transfer encoding.

    A protocol implements ``_route`` (record the request, then answer it), ``_error`` (its error for a
    status and a message) and ``_stream_error`` (how an error is said once a stream's 200 is gone), and
    sets ``stream_content_type`` (and ``json_content_type`` if its server adds a charset).
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # every chunk leaves at once: latency measurements stay honest
    stream_content_type: ClassVar[str] = "application/octet-stream"
    json_content_type: ClassVar[str] = "application/json"
    server: LoopbackHTTPServer

    # Replaced per request in _dispatch.
    _stream_started = False
    _pending: list[bytes]
    _pending_bytes = 0

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.rig.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    # Every method goes through the protocol's routes, so an unknown one gets that server's own
    # answer (404 or 405), not http.server's 501.
    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    @property
    def rig(self) -> RigT:
        return cast(RigT, self.server.rig)

    # -- what a protocol provides ---------------------------------------------------------------------

    def _route(self, path: str, raw: bytes) -> None:
        """Record the request on the rig, then answer it (raising HTTPError for an error reply)."""
        raise NotImplementedError

    def _error(self, status: int, message: str) -> HTTPError:
        """The protocol's error for a request the rig itself refuses (400) or fails on (500)."""
        raise NotImplementedError

    def _stream_error(self, error: HTTPError) -> None:
        """Say the error inside a stream that has begun; the stream is ended after it."""
        raise NotImplementedError

    # -- the frame of every request -------------------------------------------------------------------

    def _dispatch(self) -> None:
        self._stream_started = False
        path = urlsplit(self.path).path
        try:
            raw = self._read_body()
            self._route(path, raw)
        except HTTPError as exc:
            self._send_error(exc)
        except (ClientGone, ServerStopping):
            self.close_connection = True
        except Exception as exc:
            # A bug in the rig itself: say so loudly rather than let a test fail somewhere obscure.
            traceback.print_exc()
            self.close_connection = True
            if not self._stream_started:
                with contextlib.suppress(ClientGone, ServerStopping):
                    self._send_json(500, self._error(500, f"test server bug: {exc!r}").body)

    def _send_error(self, error: HTTPError) -> None:
        """In-band if a stream has begun (status 200 is gone already), else a JSON error reply."""
        try:
            if self._stream_started:
                self._stream_error(error)
                self._end_stream()
            else:
                self._send_json(error.status, error.body)
        except (ClientGone, ServerStopping):
            self.close_connection = True

    # -- reading and writing --------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            try:
                return self.rfile.read(int(length))
            except ValueError:
                self.close_connection = True
                raise self._error(400, "invalid Content-Length") from None
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            try:
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            except ValueError:
                self.close_connection = True
                raise self._error(400, "invalid chunked request body") from None
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
        return ServerStopping() if self.rig._stopping.is_set() else ClientGone()

    def _send(self, status: int, body: bytes, content_type: str, reason: str | None = None) -> None:
        try:
            self.send_response(status, reason)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
        except OSError:
            raise self._gone() from None
        if self.command != "HEAD":
            self._write(body)

    def _send_json(self, status: int, value: Any) -> None:
        self._send(status, dumps(value), self.json_content_type)

    def _chunk(self, data: bytes, *, flush: bool = True) -> None:
        """One stream item as one HTTP chunk; the first one sends the headers, as Go's http and uvicorn do.

        flush=False lets chunks wait (up to COALESCE_BYTES) to go out in one send: a zero-delay
        stream is then limited by the client, not by a system call per chunk.
        """
        self._start_stream()
        self._pending.append(b"%x\r\n%b\r\n" % (len(data), data))
        self._pending_bytes += len(data)
        if flush or self._pending_bytes >= COALESCE_BYTES:
            self._flush()

    def _start_stream(self) -> None:
        """Send the 200 and a stream's headers, once (the first chunk does it if this was not called)."""
        if self._stream_started:
            return
        self._stream_started = True
        self._pending, self._pending_bytes = [], 0
        try:
            self.send_response(200)
            self.send_header("Content-Type", self.stream_content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
        except OSError:
            raise self._gone() from None

    def _stall(self, fault: str | None) -> None:
        """One of ``STALL_FAULTS``: hang before the status line, or after the headers, until the client
        hangs up (ClientGone, counted as a cancelled generation) or stop(); any other fault: return."""
        if fault == "stall_body":
            self._start_stream()
        if fault in STALL_FAULTS:
            self._wait(math.inf)

    def _flush(self) -> None:
        if self._stream_started and self._pending:
            data = b"".join(self._pending)
            self._pending, self._pending_bytes = [], 0
            self._write(data)

    def _end_stream(self) -> None:
        self._flush()
        self._write(b"0\r\n\r\n")

    def _drop(self, *, ignore_gone: bool = False) -> None:
        """Close the connection mid-response, without the stream's end or the chunked terminator.

        What was held back is sent first; ignore_gone: a client already gone then is not reported
        (a ClientGone would count the generation as cancelled).
        """
        if ignore_gone:
            with contextlib.suppress(ClientGone, ServerStopping):
                self._flush()
        else:
            self._flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- waiting ----------------------------------------------------------------------------------------

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
            raise ServerStopping
        if seconds <= 0:
            return
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            closed = self._peer_closed(min(remaining, POLL_S))
            if self.rig._stopping.is_set():
                raise ServerStopping
            if closed:
                raise ClientGone


@contextlib.contextmanager
def hanging_port() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` where a TCP connect hangs, as to an overloaded or firewalled host.

    A listener with a backlog of one that never accepts, its queue filled by one connection: the
    kernel drops every further SYN, so a connect waits for its own timeout. Closed on exit.
    """
    listener = socket.socket()
    filler: socket.socket | None = None
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port), timeout=5)
        yield f"http://127.0.0.1:{port}"
    finally:
        if filler is not None:
            filler.close()
        listener.close()


class LoopbackHTTPServer(HTTPServer):
    """A thread per connection, each tracked, so that stop() can close them all and wait for them."""

    request_queue_size = 128  # many users' streams at once
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], rig: LoopbackServer, handler: type[LoopbackHandler[Any]]
    ) -> None:
        self.rig = rig
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, a DNS query that can stall; we need none.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"{self.rig._thread_name}-conn",
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


class LoopbackServer:
    """A fake server's lifecycle, script and observations; a protocol module subclasses it.

    The script attributes are read at the start of each request: ``reply_words``, ``chunk_count``,
    ``first_chunk_delay_s``, ``chunk_delay_s``, ``fault`` (None or one of the class's ``_faults``),
    ``fault_after_chunks`` and ``final_fields`` (set on a stream's last JSON item, before its end marker:
    odd statistics, say; see ``RawJSON``). ``requests`` logs every request; ``active_streams`` and
    ``cancelled_streams`` count generations. A subclass sets ``_handler_class``, ``_faults`` and
    ``_thread_name``.
    """

    _handler_class: ClassVar[type[LoopbackHandler[Any]]]
    _faults: ClassVar[frozenset[str]] = frozenset()
    _thread_name: ClassVar[str] = "loopback-test"

    def __init__(self, *, port: int = 0, verbose: bool = False) -> None:
        self.verbose = verbose  # log requests and connection errors to stderr
        self.url = ""
        self.reply_words: list[str] | None = None
        self.chunk_count: int | None = None
        self.chunk_delay_s = 0.0
        self.first_chunk_delay_s = 0.0
        self.fault_after_chunks = 3
        self.final_fields: dict[str, Any] | None = None
        self.requests: list[dict[str, Any]] = []  # {"method", "path", "body"} per request; append-only
        self._fault: str | None = None
        self._port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._active = 0
        self._cancelled = 0
        self._httpd: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self: ServerT) -> ServerT:
        if self._httpd is not None:
            raise RuntimeError(f"this {type(self).__name__} was already started; make a new one")
        self._httpd = LoopbackHTTPServer(("127.0.0.1", self._port), self, self._handler_class)
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": POLL_S},
            name=f"{self._thread_name}-server",
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

    def __enter__(self: ServerT) -> ServerT:
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
        if value is not None and value not in self._faults:
            raise ValueError(f"unknown fault {value!r}; expected None or one of {sorted(self._faults)}")
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

    # -- state used by the handler --------------------------------------------------------------------

    def _record(self, method: str, path: str, raw: bytes, headers: dict[str, str] | None = None) -> None:
        """Log a request, its body parsed as JSON where it is JSON (and its headers, if given)."""
        try:
            body: Any = json.loads(raw) if raw.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = raw.decode("utf-8", "replace")
        entry: dict[str, Any] = {"method": method, "path": path}
        if headers is not None:
            entry["headers"] = headers
        entry["body"] = body
        with self._lock:
            self.requests.append(entry)

    @contextlib.contextmanager
    def _generation(self) -> Iterator[None]:
        """Count a generation as active while it runs, and as cancelled if the client goes away."""
        with self._lock:
            self._active += 1
        try:
            yield
        except ClientGone:
            with self._lock:
                self._cancelled += 1
            raise
        finally:
            with self._lock:
                self._active -= 1

    def _answer(self, messages: list[dict[str, Any]]) -> tuple[Iterator[str], int]:
        """The answer chunks (lazily: a benchmark may ask for millions) and how many there are."""
        count = self.chunk_count
        if count is not None:
            return (f"w{i} " for i in range(count)), count
        reply = self.reply_words
        if reply is None:
            users = [m for m in messages if m.get("role") == "user"]
            last = message_text(users[-1].get("content")) if users else ""
            reply = words(f"You said: {last}")
        reply = list(reply)
        return iter(reply), len(reply)


# --- command line ----------------------------------------------------------------------------------------


def script_parser(prog: str, description: str, unit: str) -> argparse.ArgumentParser:
    """A parser with the options every server takes (port and reply script); ``unit`` names a chunk."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--chunk-count", type=int, default=None, help=f"answer with exactly N {unit}s")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help=f"seconds between {unit}s")
    parser.add_argument(
        "--first-chunk-delay", type=float, default=0.0, help=f"seconds before the first {unit}"
    )
    return parser


def serve_until_signalled(server: LoopbackServer, args: argparse.Namespace, ready: Callable[[], str]) -> int:
    """Apply the script options, serve until SIGTERM or SIGINT; print ``READY <ready()>`` once listening."""
    server.chunk_count = args.chunk_count
    server.chunk_delay_s = args.chunk_delay
    server.first_chunk_delay_s = args.first_chunk_delay

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    try:
        print(f"READY {ready()}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0
