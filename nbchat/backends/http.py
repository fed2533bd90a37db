"""What every HTTP engine shares: the client, the requests, the errors and the reply's ending.

The Ollama engine (NDJSON) and the OpenAI-compatible one (Server-Sent Events) talk different
protocols over the same plumbing: one pooled ``httpx.Client`` per server that never waits forever
and keeps a proxy from the environment off this machine's own servers, httpx's exceptions turned
into nbchat errors that say what to do (each engine words them), and a reply stream that a cancel
from another thread interrupts at once. Each engine keeps its own parsing in its own module.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx

from nbchat.backends.base import ProgressCallback, ReplyStream
from nbchat.errors import (
    BackendError,
    BackendResponseError,
    BackendTimeout,
    BackendUnavailable,
    GenerationFailed,
)
from nbchat.history import estimate_tokens
from nbchat.types import GenerationParams, GenerationStats, Message

# The connection broke off under a request or a reply: the server died or hung up.
_BROKEN_OFF = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.StreamError)


class HttpBackend(ABC):
    """The models of one server behind an HTTP API; subclasses put its failures in their words."""

    prefix: str

    def __init__(self, url: str, server: str, *, connect_timeout: float, read_timeout: float) -> None:
        """``url``: the server's root, without a trailing slash; ``server``: how messages name
        it ("Ollama at http://…")."""
        self.read_timeout = read_timeout
        self._server = server
        self._client = httpx.Client(
            base_url=url,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            # A proxy from the environment must not capture traffic to this machine.
            trust_env=not is_loopback(url),
            headers={"User-Agent": "nbchat", "Accept": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    def count_tokens(self, model: str, messages: Sequence[Message], *, think: bool = False) -> int:
        """An estimate (``nbchat.history.estimate_tokens``): the tokenizer lives in the server."""
        return estimate_tokens(messages)

    def prepare(self, model: str, on_progress: ProgressCallback | None = None) -> None:  # noqa: B027
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
            data = response.json()
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
        """Any other failure of the request, named (engines holding secrets scrub them here)."""
        return f"The request to {self._server} failed ({type(exc).__name__}: {exc})."

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
    """A reply read from a streamed response; a cancel shuts its socket down.

    Subclasses read their protocol in ``_generate``: open the request with ``_open``, hand a
    ``BackendError`` to ``_read_failed`` and end with ``_ended``.
    """

    def __init__(
        self, backend: HttpBackend, model: str, messages: Sequence[Message], params: GenerationParams
    ) -> None:
        super().__init__(backend.prefix, model, messages, params)
        self._backend = backend
        self._response: httpx.Response | None = None

    @contextmanager
    def _open(self, path: str, body: dict[str, Any]) -> Iterator[httpx.Response]:
        """POST ``body`` to ``path``: the streaming response, kept for ``_on_cancel``.

        Leaving the block closes the response, so the server stops generating too.
        """
        with self._backend._request_stream("POST", path, body, self._model) as response:
            self._response = response
            yield response

    def _read_failed(self, error: BackendError) -> GenerationStats:
        """A failed read ends as cancelled when our own cancel broke it; else ``error`` is raised."""
        if self.cancelled:
            return GenerationStats("cancelled")
        raise error

    def _ended(self, finished: GenerationStats | None) -> GenerationStats:
        """The stream ended: cancelled, else ``finished`` (the server said it was), else cut short."""
        if self.cancelled:
            return GenerationStats("cancelled")
        if finished is not None:
            return finished
        raise GenerationFailed(
            f"{self._backend._server} closed the reply before it was finished; "
            "the text so far is kept. Is the server still running?"
        )

    def _on_cancel(self) -> None:
        """Wake a read blocked on a silent server: shut the socket down under it.

        Closing the response from this thread would not interrupt ``recv`` in the
        reading thread; ``shutdown`` does, and the server sees the hang-up at once.
        """
        response = self._response
        if response is None:
            return  # not connected yet: the reader checks ``cancelled`` first thing
        network = response.extensions.get("network_stream")
        sock = network.get_extra_info("socket") if network is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing to wake
                sock.shutdown(socket.SHUT_RDWR)


def server_message(response: httpx.Response, said: Callable[[dict[str, Any]], str | None]) -> str:
    """What a refusing server said: ``said`` of its JSON object, else its body's first 500 characters.

    ``said`` reads the engine's error format; ``None`` means the object holds no error message.
    """
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    message = said(data) if isinstance(data, dict) else None
    return response.text.strip()[:500] if message is None else message


def is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine (``localhost`` or a loopback address)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
