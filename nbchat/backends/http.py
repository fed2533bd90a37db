"""What every HTTP engine shares: the client, the requests, the errors and the reply's ending.

The Ollama engine (NDJSON) and the OpenAI-compatible one (Server-Sent Events) talk different
protocols over the same plumbing: one pooled ``httpx.Client`` per server that never waits forever
and keeps a proxy from the environment off this machine's own servers, httpx's exceptions turned
into nbchat errors that say what to do (each engine words them), and a reply stream that a cancel
from another thread ends at once in every state: before the request is sent, while connecting,
while waiting for the headers or the first byte, mid-stream. Each engine keeps its own parsing in
its own module.

Both also distrust what a server says in the same ways: a streamed line has a length limit
(``split_lines``), every statistic is checked where it is read (``nbchat.backends.figures``: a
wrong type or an absurd value is dropped, never the reply), and every error quoting the server
is cut short and scrubbed of credentials (``server_text``, with ``nbchat.redact``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import threading
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx

from nbchat.backends.base import ProgressCallback, ReplyStream
from nbchat.backends.figures import with_estimate
from nbchat.errors import (
    BackendError,
    BackendResponseError,
    BackendTimeout,
    BackendUnavailable,
    GenerationFailed,
)
from nbchat.history import estimate_tokens
from nbchat.redact import scrub_secrets
from nbchat.types import GenerationParams, GenerationStats, Message

MAX_SERVER_TEXT = 500  # of a server's words in an error: enough to act on, short enough to save
MAX_LINE_BYTES = 64 * 1024 * 1024  # of one streamed line or event: a reply's whole text fits 4 times

# The connection broke off under a request or a reply: the server died or hung up.
_BROKEN_OFF = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.StreamError)


class HttpBackend(ABC):
    """The models of one server behind an HTTP API; subclasses put its failures in their words."""

    prefix: str
    max_line_bytes = MAX_LINE_BYTES  # a longer streamed line (or event) fails the reply

    def __init__(self, url: str, server: str, *, connect_timeout: float, read_timeout: float) -> None:
        """``url``: the server's root, without a trailing slash; ``server``: how messages name
        it ("Ollama at http://…")."""
        self.read_timeout = read_timeout
        self._server = server
        settings: dict[str, Any] = {
            "base_url": url,
            "timeout": httpx.Timeout(read_timeout, connect=connect_timeout),
            # A proxy from the environment must not capture traffic to this machine.
            "trust_env": not is_loopback(url),
        }
        self._client = httpx.Client(**settings)
        # Replies get a connection each (none is kept idle for reuse): httpcore's trace then reports
        # its socket before the request is sent, which is what lets a cancel shut it down while the
        # server has not answered yet. A reply takes seconds; one connect more is nothing beside it.
        self._stream_client = httpx.Client(**settings, limits=httpx.Limits(max_keepalive_connections=0))
        self._set_header("User-Agent", "nbchat")
        self._set_header("Accept", "application/json")

    def close(self) -> None:
        self._client.close()
        self._stream_client.close()

    def _set_header(self, name: str, value: str | None) -> None:
        """Send ``name: value`` with every request from now on (None: not at all)."""
        for client in (self._client, self._stream_client):
            if value is None:
                client.headers.pop(name, None)
            else:
                client.headers[name] = value

    def count_tokens(self, model: str, messages: Sequence[Message], *, think: bool = False) -> int:
        """An estimate (``nbchat.history.estimate_tokens``): the tokenizer lives in the server."""
        return estimate_tokens(messages)

    def prepare(  # noqa: B027 - a server needs nothing, for every engine served over HTTP
        self,
        model: str,
        on_progress: ProgressCallback | None = None,
        *,
        cancel: threading.Event | None = None,
        download: bool = True,
    ) -> None:
        """Nothing to do: a server loads its models itself, on the first request."""

    @abstractmethod
    def known_context_window(self, model: str) -> int | None:
        """The context window the server states for ``model`` (may ask it), else None."""

    @abstractmethod
    def chat_request(
        self, model: str, messages: Sequence[Message], params: GenerationParams
    ) -> dict[str, Any]:
        """The JSON body that asks the server for a streamed reply."""

    # -- HTTP plumbing ---------------------------------------------------------------------

    def _get_json(
        self, method: str, path: str, *, json: dict[str, Any] | None = None, model: str | None = None
    ) -> dict[str, Any]:
        """The JSON object the server answers; anything else is a BackendResponseError."""
        with self._errors(model):
            response = self._client.request(method, path, json=json)
        if response.status_code != 200:
            raise self._status_error(response, model)
        try:
            data = parse_json(response.content)
        except ValueError:
            raise BackendResponseError(self._not_json(path), response.status_code) from None
        if not isinstance(data, dict):
            raise BackendResponseError(f"{self._server} answered {path} unexpectedly.", 200)
        return data

    @contextmanager
    def _request_stream(
        self, method: str, path: str, body: dict[str, Any], model: str | None
    ) -> Iterator[httpx.Response]:
        """The response to ``body``, open for streaming; a refusal is raised before any is read."""
        with self._errors(model), self._client.stream(method, path, json=body) as response:
            if response.status_code != 200:
                response.read()
                raise self._status_error(response, model)
            yield response

    @contextmanager
    def _errors(self, model: str | None) -> Iterator[None]:
        """Turn httpx's exceptions into nbchat errors that say what to do."""
        try:
            yield
        except httpx.ConnectError as exc:
            raise BackendUnavailable(self._unreachable(exc)) from None
        except httpx.ConnectTimeout:
            raise BackendUnavailable(self._slow_to_connect()) from None
        except httpx.TimeoutException:  # read, write or pool: the server went silent
            raise BackendTimeout(self._silent(model)) from None
        except _BROKEN_OFF as exc:
            raise GenerationFailed(self._broken_off(exc)) from None
        except httpx.HTTPError as exc:  # a proxy refusing, a body that cannot be decoded, ...
            raise BackendUnavailable(self._failed(exc)) from None

    def _failed(self, exc: httpx.HTTPError) -> str:
        """Any other failure of the request, named."""
        return f"The request to {self._server} failed ({self._said(f'{type(exc).__name__}: {exc}')})."

    def _secrets(self) -> tuple[str | None, ...]:
        """What this engine must never show (its API key): scrubbed from every error it builds."""
        return ()

    def _said(self, text: str, limit: int = MAX_SERVER_TEXT) -> str:
        """Words from the server (or about the connection), fit to quote in an error."""
        return server_text(text, self._secrets(), limit)

    # -- in the engine's own words ---------------------------------------------------------

    @abstractmethod
    def _status_error(self, response: httpx.Response, model: str | None) -> BackendError:
        """The error for an answer other than 200 (``response`` is read)."""

    @abstractmethod
    def _unreachable(self, exc: httpx.ConnectError) -> str:
        """The connection was refused: how to start the server or point nbchat at it."""

    @abstractmethod
    def _slow_to_connect(self) -> str:
        """No connection within the connect timeout."""

    @abstractmethod
    def _silent(self, model: str | None) -> str:
        """Nothing arrived within the read timeout."""

    @abstractmethod
    def _broken_off(self, exc: Exception) -> str:
        """The connection broke off in the middle."""

    @abstractmethod
    def _not_json(self, path: str) -> str:
        """``path`` answered 200 with something else than JSON: likely not the right server."""


class HttpReplyStream(ReplyStream):
    """A reply read from a streamed response; a cancel ends it at once, whatever it is waiting for.

    Subclasses read their protocol in ``_generate``: open the request with ``_open``, hand a
    ``BackendError`` to ``_read_failed`` and end with ``_ended``.
    """

    def __init__(
        self, backend: HttpBackend, model: str, messages: Sequence[Message], params: GenerationParams
    ) -> None:
        super().__init__(backend.prefix, model, messages, params)
        self._backend = backend
        self._connection = _Connection()
        self._woken = threading.Event()  # the request is open (or failed), or the reply was cancelled

    @contextmanager
    def _open(self, path: str, make_body: Callable[[], dict[str, Any]]) -> Iterator[httpx.Response]:
        """POST the body ``make_body()`` builds (it may ask the server things) to ``path``.

        Yields the streaming response. Until the server has answered, the request runs in a helper
        thread and this one waits for it or for a cancel: a cancel then returns at once, even from
        a connect that hangs, and shuts the connection down so the server sees the hang-up. Leaving
        the block closes the response, so the server stops generating too.
        """
        if self.cancelled:
            raise self._stopped()  # before anything is sent: nothing reaches the server
        handoff = _Handoff()
        threading.Thread(
            target=handoff.run,
            args=(lambda: self._send(path, make_body), self._woken),
            name=f"nbchat-{self._backend.prefix}-request",
            daemon=True,
        ).start()
        self._woken.wait()  # set when the helper is done, and by a cancel (bounded by the timeouts)
        response = handoff.take(abandon=self.cancelled)
        if response is None:
            raise self._stopped()
        self._connection.attach(response.extensions.get("network_stream"))
        try:
            with self._backend._errors(self._model):
                yield response
        finally:
            response.close()

    def _send(self, path: str, make_body: Callable[[], dict[str, Any]]) -> httpx.Response:
        """In the helper thread: the response to the request, refused (raised) unless it is a 200."""
        backend, model = self._backend, self._model
        body = make_body()
        if self.cancelled:
            raise self._stopped()
        client = backend._stream_client
        request = client.build_request("POST", path, json=body, extensions={"trace": self._connection.trace})
        with backend._errors(model):
            response = client.send(request, stream=True)
            if response.status_code != 200:
                try:
                    response.read()
                finally:
                    response.close()
                raise backend._status_error(response, model)
        return response

    def _stopped(self) -> BackendError:
        """What ends a reply cancelled before the server answered (``_read_failed`` says cancelled)."""
        return GenerationFailed(f"The reply was stopped before {self._backend._server} answered.")

    def _read_failed(self, error: BackendError, streamed: int = 0) -> GenerationStats:
        """A failed read ends as cancelled when our own cancel broke it; else ``error`` is raised.

        ``streamed``: the pieces of text read so far, a stopped reply's estimated token count.
        """
        if self.cancelled:
            return with_estimate(GenerationStats("cancelled"), streamed)
        raise error

    def _ended(self, finished: GenerationStats | None, streamed: int = 0) -> GenerationStats:
        """The stream ended: cancelled, else ``finished`` (the server said it was), else cut short."""
        if self.cancelled:
            return with_estimate(GenerationStats("cancelled"), streamed)
        if finished is not None:
            return finished
        raise GenerationFailed(
            f"{self._backend._server} closed the reply before it was finished; "
            "the text so far is kept. Is the server still running?"
        )

    def _on_cancel(self) -> None:
        """Wake the reader whatever it waits for: the helper thread's answer, or a silent socket."""
        self._woken.set()
        self._connection.shut_down()


class _Connection:
    """The socket under one streamed request, as httpcore's ``trace`` extension reports it.

    ``shut_down`` (any thread, any time) wakes a ``recv`` blocked on it, which closing would not:
    the reader then fails at once and the server sees the hang-up. A socket reported after the
    shutdown was asked for is shut down as soon as it is reported.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: Any = None  # httpcore's NetworkStream
        self._shut = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace callback: keep the stream each (TLS) connect returns."""
        if event.endswith((".connect_tcp.complete", ".start_tls.complete")):
            self.attach(info.get("return_value"))

    def attach(self, stream: Any) -> None:
        if stream is None:
            return
        with self._lock:
            self._stream, shut = stream, self._shut
        if shut:
            _shutdown(stream)

    def shut_down(self) -> None:
        with self._lock:
            self._shut, stream = True, self._stream
        if stream is not None:
            _shutdown(stream)


def _shutdown(stream: Any) -> None:
    sock = stream.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: nothing to wake
            sock.shutdown(socket.SHUT_RDWR)


class _Handoff:
    """The helper thread's response or error, handed to the reader, or closed if nobody takes it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._response: httpx.Response | None = None
        self._error: BaseException | None = None
        self._abandoned = False

    def run(self, send: Callable[[], httpx.Response], done: threading.Event) -> None:
        try:
            response = send()
        except BaseException as exc:  # handed over to the reader, which raises it
            with self._lock:
                self._error = exc
        else:
            with self._lock:
                abandoned = self._abandoned
                if not abandoned:
                    self._response = response
            if abandoned:
                response.close()
        finally:
            done.set()

    def take(self, *, abandon: bool) -> httpx.Response | None:
        """The response (the helper's error is raised); None if ``abandon``: it is closed instead."""
        with self._lock:
            response, error = self._response, self._error
            self._abandoned = abandon
            if abandon:
                self._response = None
        if abandon:
            if response is not None:
                response.close()
            return None
        if error is not None:
            raise error
        assert response is not None, "taken before the helper thread was done"
        return response


# -- a streamed body, line by line ---------------------------------------------------------


def split_lines(response: httpx.Response, max_bytes: int, server: str) -> Iterator[bytes]:
    """The lines of a streamed body without their newline, the last one even if unterminated.

    Splits raw bytes itself: httpx's text decoding and line splitting cost more per line than
    the JSON parsing, and a reply is thousands of tiny lines. Pieces without a newline are held
    in a list (joining them each time would cost the square of the line's length), and a line
    longer than ``max_bytes`` is a GenerationFailed: a server that never ends one cannot fill
    the kernel's memory.
    """
    held: list[bytes] = []
    held_bytes = 0
    for piece in response.iter_bytes():
        if b"\n" not in piece:
            held.append(piece)
            held_bytes += len(piece)
            if held_bytes > max_bytes:
                raise line_too_long(server, max_bytes)
            continue
        if held:
            piece = b"".join((*held, piece))
        lines = piece.split(b"\n")
        last = lines.pop()
        if len(piece) > max_bytes and any(len(line) > max_bytes for line in lines):
            raise line_too_long(server, max_bytes)
        yield from lines
        held, held_bytes = ([last], len(last)) if last else ([], 0)
        if held_bytes > max_bytes:
            raise line_too_long(server, max_bytes)
    if held:
        yield b"".join(held)


def line_too_long(server: str, max_bytes: int) -> GenerationFailed:
    return GenerationFailed(
        f"{server} sent a line longer than {max_bytes:,} bytes without ending it; the reply was "
        "stopped there (the text so far is kept). Is it the server you meant?"
    )


# -- what a server says, made fit for an error message ------------------------------------


def parse_json(data: bytes | str) -> Any:
    """Decoded JSON; ValueError for anything else, JSON nested too deeply to decode included."""
    try:
        return json.loads(data)
    except RecursionError:  # not a ValueError: it would escape every "is it JSON?" check
        raise ValueError("JSON nested too deeply to decode") from None


def server_text(text: str, secrets: Sequence[str | None] = (), limit: int = MAX_SERVER_TEXT) -> str:
    """A server's words as an error message may quote them: scrubbed of secrets (before it is cut,
    so no half of a key is left), then at most ``limit`` characters."""
    text = scrub_secrets(text, *secrets).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def server_message(
    response: httpx.Response,
    said: Callable[[dict[str, Any]], str | None],
    secrets: Sequence[str | None] = (),
) -> str:
    """What a refusing server said: ``said`` of its JSON object, else its body's first 500 characters
    (else its status line's reason), scrubbed of ``secrets`` and of anything like a credential.

    ``said`` reads the engine's error format; ``None`` means the object holds no error message.
    """
    try:
        data = parse_json(response.content)
    except ValueError:
        return server_text(response.text, secrets) or server_text(response.reason_phrase, secrets)
    message = said(data) if isinstance(data, dict) else None
    return server_text(response.text if message is None else message, secrets)


def is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine (``localhost`` or a loopback address)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
