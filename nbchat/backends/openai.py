"""OpenAI-compatible chat servers (vLLM, llama.cpp's llama-server, TGI, Ollama's /v1), with httpx.

Model ids are ``openai:<model>``, the model as the server at ``OPENAI_BASE_URL`` names it (e.g.
``openai:Qwen/Qwen3-1.7B``). The ``openai`` package is not used: importing it costs more than the
whole backend, it retries on its own (a stuck server would cost three timeouts) and its errors
would need translating anyway. Like the Ollama backend this one keeps one pooled ``httpx.Client``
per base URL, never waits forever (connect and read timeouts), turns every failure into an nbchat
error that says what to do, keeps the text that streamed before an error, and on cancel closes the
response at once so the server stops generating too.

Thinking arrives in one of two ways: as ``delta.reasoning_content`` / ``delta.reasoning`` (vLLM with
a reasoning parser, DeepSeek, llama.cpp), or as ``<think>…</think>`` inside the content (a server
that does not separate it); both become thinking chunks. The API key is sent as a Bearer token only
when one is set, and never appears in a message, a repr or a health report.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from nbchat.backends.base import ReplyStream
from nbchat.backends.chat import ThinkParser, chat_messages
from nbchat.backends.figures import token_count, tokens_per_s, with_estimate
from nbchat.backends.http import (
    HttpBackend,
    HttpReplyStream,
    line_too_long,
    parse_json,
    server_message,
    split_lines,
)
from nbchat.config import check_openai_base_url
from nbchat.errors import (
    BackendError,
    BackendResponseError,
    ConfigError,
    GenerationFailed,
    ModelNotFound,
)
from nbchat.types import Chunk, GenerationParams, GenerationStats, Message

PREFIX = "openai"
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 120.0  # a busy server can keep the first token waiting a while
# What context_window() says when the server does not: vLLM lists max_model_len, OpenAI, llama.cpp
# and TGI do not. 8192 is what every current chat model allows, and what the Ollama backend asks for.
DEFAULT_CONTEXT_WINDOW = 8192
REASONING_FIELDS = ("reasoning_content", "reasoning")
_NO_MODEL_LIST = frozenset({404, 405, 501})  # a server without GET /models
_DONE = object()
_EXAMPLE_URL = "http://127.0.0.1:8000/v1"


def check_base_url(raw: str | None) -> str:
    """``OPENAI_BASE_URL`` as a base URL without its trailing slash; a clear ConfigError if unusable.

    The same check as the site's settings get at load (``config.check_openai_base_url``), for a
    backend made in code: no control character or space, no user name or password (it would be
    shown wherever the address is), a host and a port that parse.
    """
    text = check_openai_base_url(raw)
    if text is None:
        raise ConfigError(
            "openai: models need OPENAI_BASE_URL, the API root of an OpenAI-compatible server, "
            f"e.g. {_EXAMPLE_URL} for vLLM or http://127.0.0.1:8080/v1 for llama-server. Set it "
            "(and OPENAI_API_KEY if the server wants a key), then try again."
        )
    try:
        split = urllib.parse.urlsplit(text)
        _ = split.port  # parsing the port is the check: "host:abc" raises here
    except ValueError as exc:
        raise ConfigError(f"OPENAI_BASE_URL {text!r} is not a usable address: {exc}.") from None
    if split.scheme not in ("http", "https") or not split.hostname:
        raise ConfigError(
            f"OPENAI_BASE_URL {text!r} must be an http:// or https:// address with the API's path, "
            f"e.g. {_EXAMPLE_URL}."
        )
    return text.rstrip("/")


@dataclass
class _Reply:
    """What the stream has said about the reply besides its text."""

    done: bool = False
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # usage's, else llama-server's timings.predicted_n
    tokens_per_s: float | None = None
    streamed: int = 0  # deltas with text, one token each: the estimate when the server counts none

    def stats(self) -> GenerationStats:
        # Durations are left to the stream's own clock (what the user waited), as for Ollama.
        stats = GenerationStats(
            finish_reason="length" if self.finish_reason == "length" else "stop",
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            tokens_per_s=self.tokens_per_s,
        )
        return with_estimate(stats, self.streamed)


class OpenAIBackend(HttpBackend):
    """The models of one OpenAI-compatible server."""

    prefix = PREFIX

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        think_switch: bool = False,
    ) -> None:
        self.base_url = check_base_url(base_url)
        # Send "think first" as chat_template_kwargs.enable_thinking (vLLM, SGLang, llama-server
        # with Qwen3's template); off by default, as OpenAI itself refuses unknown parameters.
        self.think_switch = think_switch
        self._api_key: str | None = None
        super().__init__(
            self.base_url,
            f"The server at {self.base_url}",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._windows: dict[str, int | None] = {}  # max_model_len per listed model, None: not stated
        self._windows_lock = threading.Lock()
        self.use_api_key(api_key)

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.base_url!r}, api_key={'<set>' if self._api_key else None})"

    def use_api_key(self, api_key: str | None) -> None:
        """Send ``api_key`` from the next request on (None: no Authorization header at all)."""
        api_key = (api_key or "").strip() or None
        if api_key == self._api_key:
            return
        self._api_key = api_key
        self._set_header("Authorization", None if api_key is None else f"Bearer {api_key}")

    # -- listing and health ----------------------------------------------------------------

    def models(self) -> list[str]:
        """Model ids of every model the server lists, e.g. ``openai:Qwen/Qwen3-1.7B``."""
        data = self._get_json("GET", "/models")
        entries = [m for m in data.get("data") or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        windows = {m["id"]: _positive_int(m.get("max_model_len")) for m in entries}
        with self._windows_lock:
            self._windows.update(windows)
        return [f"{PREFIX}:{m['id']}" for m in entries]

    def health(self) -> dict[str, Any]:
        """Reachable? Which models? Never raises: errors are reported in the dict."""
        report: dict[str, Any] = {"engine": PREFIX, "url": self.base_url, "reachable": False}
        try:
            report["models"] = self.models()
            report["reachable"] = True
        except BackendResponseError as exc:  # it answered, but refused (a wrong key, say)
            report["reachable"] = True
            report["error"] = str(exc)
        except BackendError as exc:
            report["error"] = str(exc)
        return report

    def context_window(self, model: str) -> int:
        """The model's ``max_model_len`` from ``GET /models`` (vLLM lists it), else 8192.

        Asked once per listed model. A model the server does not list (llama-server answers to
        any name) or a server without a model list gets the default too.
        """
        return self.known_context_window(model) or DEFAULT_CONTEXT_WINDOW

    def known_context_window(self, model: str) -> int | None:
        """The ``max_model_len`` the server lists for ``model`` (asking once), else None."""
        with self._windows_lock:
            if model in self._windows:
                return self._windows[model]
        try:
            self.models()
        except BackendResponseError as exc:
            if exc.status_code not in _NO_MODEL_LIST:
                raise
        with self._windows_lock:  # not listed: not asked again until the list is read anew
            return self._windows.setdefault(model, None)

    # -- chatting --------------------------------------------------------------------------

    def stream(self, model: str, messages: Sequence[Message], params: GenerationParams) -> ReplyStream:
        return OpenAIReplyStream(self, model, messages, params)

    def chat_request(
        self, model: str, messages: Sequence[Message], params: GenerationParams
    ) -> dict[str, Any]:
        """The /chat/completions body. History goes back as roles and answers only, never thinking.

        Only OpenAI's own parameters are sent (``top_k`` is not: OpenAI itself refuses unknown
        ones), and ``think`` only as ``chat_template_kwargs`` when ``think_switch`` is on;
        ``include_usage`` asks for the token counts at the end.
        """
        body: dict[str, Any] = {
            "model": model,
            "messages": chat_messages(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": params.temperature,
            "max_tokens": params.max_new_tokens,
        }
        for name, value in (("top_p", params.top_p), ("seed", params.seed)):
            if value is not None:
                body[name] = value
        if self.think_switch:
            body["chat_template_kwargs"] = {"enable_thinking": params.think}
        return body

    # -- its failures, in words (the shared HTTP plumbing raises them) ---------------------

    def _unreachable(self, exc: httpx.ConnectError) -> str:
        return (
            f"Cannot reach the OpenAI-compatible server at {self.base_url} ({self._said(str(exc))}). "
            "Start it (e.g. `vllm serve <model>` or `llama-server -m <file>`), or set OPENAI_BASE_URL to "
            f"the API root it listens on, e.g. {_EXAMPLE_URL}."
        )

    def _slow_to_connect(self) -> str:
        return f"The server at {self.base_url} did not accept a connection in time; is OPENAI_BASE_URL right?"

    def _silent(self, model: str | None) -> str:
        return (
            f"The server at {self.base_url} sent nothing for {self.read_timeout:g} s"
            + (f" while running {model!r}" if model else "")
            + "; it may be overloaded or stuck. Try again, or restart it."
        )

    def _broken_off(self, exc: Exception) -> str:
        return (
            f"The connection to the server at {self.base_url} broke off ({self._said(str(exc))}); "
            "is it still running?"
        )

    def _not_json(self, path: str) -> str:
        return (
            f"The server at {self.base_url} answered {path} with something that is not JSON; "
            f"is OPENAI_BASE_URL the API root of an OpenAI-compatible server (e.g. {_EXAMPLE_URL})?"
        )

    def _status_error(self, response: httpx.Response, model: str | None) -> BackendError:
        status, message = response.status_code, server_message(response, _error_text, self._secrets())
        if status == 401:
            problem = (
                "the API key in OPENAI_API_KEY is wrong"
                if self._api_key
                else "it wants an API key: set OPENAI_API_KEY"
            )
            return BackendResponseError(
                f"The server at {self.base_url} refused the request (401 {message}): {problem}.", status
            )
        if status == 404 and _is_missing_route(response):
            return BackendResponseError(
                f"The server at {self.base_url} has no {response.request.url.path} endpoint (404); "
                f"OPENAI_BASE_URL must be the API root, usually ending in /v1 (e.g. {_EXAMPLE_URL}).",
                status,
            )
        if status == 404 and model is not None:
            return ModelNotFound(
                f"The server at {self.base_url} has no model {model!r} ({message}). Check the server's "
                "model list (nbchat's model menu shows it as openai:<name>) and choose one of those."
            )
        return BackendResponseError(f"The server at {self.base_url} answered {status}: {message}", status)

    def _secrets(self) -> tuple[str | None, ...]:
        """The API key, scrubbed from every error should a server or a library ever echo it."""
        return (self._api_key,)


class OpenAIReplyStream(HttpReplyStream):
    """A reply streamed from ``/chat/completions`` as Server-Sent Events."""

    _backend: OpenAIBackend

    def _generate(self) -> Generator[Chunk, None, GenerationStats]:
        backend = self._backend
        body = backend.chat_request(self._model, self._messages, self._params)  # asks nothing
        parser = ThinkParser()  # for a server that leaves <think>…</think> in the content
        reply = _Reply()
        try:
            with self._open("/chat/completions", lambda: body) as response:
                for data in _events(response, backend):
                    if self.cancelled:
                        break  # leaving the block closes the response: the server stops too
                    if data is _DONE:
                        reply.done = True
                        break
                    yield from _chunks(data, parser, reply)
        except BackendError as exc:
            yield from parser.flush()  # a held-back "<" that never became a tag is text, kept
            return self._read_failed(exc, reply.streamed)
        yield from parser.flush()
        finished = reply.done or reply.finish_reason is not None  # a server may end without [DONE]
        return self._ended(reply.stats() if finished else None, reply.streamed)


def _chunks(data: dict[str, Any], parser: ThinkParser, reply: _Reply) -> Iterator[Chunk]:
    """The chunks of one ``chat.completion.chunk`` (or a whole ``chat.completion``), noting the rest."""
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue  # nbchat asks for one choice
        delta = choice.get("delta") or choice.get("message") or {}
        if isinstance(delta, dict):
            # vLLM 0.10+ may send both names with the same text: take one.
            reasoning = next((delta[f] for f in REASONING_FIELDS if isinstance(delta.get(f), str)), "")
            if reasoning:
                yield Chunk("thinking", reasoning)
            content = delta.get("content")
            if isinstance(content, str) and content:
                yield from parser.feed(content)
            if "delta" in choice and (reasoning or content):
                reply.streamed += 1  # a token a delta; a whole message (stream ignored) counts none
        if choice.get("finish_reason"):
            reply.finish_reason = str(choice["finish_reason"])
    timings = data.get("timings")  # llama-server's own measurement of the generation
    if isinstance(timings, dict):
        reply.tokens_per_s = tokens_per_s(timings.get("predicted_per_second"))
        reply.completion_tokens = token_count(timings.get("predicted_n"))
    usage = data.get("usage")  # every figure is checked: nonsense is dropped, never the reply
    if isinstance(usage, dict):
        reply.prompt_tokens = token_count(usage.get("prompt_tokens"))
        reply.completion_tokens = token_count(usage.get("completion_tokens")) or reply.completion_tokens


def _events(response: httpx.Response, backend: OpenAIBackend) -> Iterator[Any]:
    """Each event's JSON object, then ``_DONE`` at ``data: [DONE]``; an error event raises.

    A server that ignored ``"stream": true`` and sent one JSON object is read as a one-event stream.
    """
    if response.headers.get("content-type", "").startswith("application/json"):
        yield _parse_event(response.read(), "", backend)
        yield _DONE
        return
    for event, payload in _sse(response, backend.max_line_bytes, backend._server):
        if payload.strip() == b"[DONE]":
            yield _DONE
            return
        yield _parse_event(payload, event, backend)


def _sse(response: httpx.Response, max_bytes: int, server: str) -> Iterator[tuple[str, bytes]]:
    """(event name, data) of each Server-Sent Event; comments (``: keep-alive``) are skipped.

    llama-server's nonstandard ``error: {...}`` line counts as an error event. An event whose data
    grows past ``max_bytes`` is a GenerationFailed, as a line that long is.
    """
    event = ""
    data: list[bytes] = []
    size = 0
    for line in split_lines(response, max_bytes, server):
        line = line.removesuffix(b"\r")
        if not line:
            if data:
                yield event, b"\n".join(data)
            data, event, size = [], "", 0
            continue
        if line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"data":
            data.append(value)
            size += len(value)
            if size > max_bytes:
                raise line_too_long(server, max_bytes)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
        elif name == b"error":
            event, data = "error", [value]
    if data:
        yield event, b"\n".join(data)


def _parse_event(payload: bytes, event: str, backend: OpenAIBackend) -> dict[str, Any]:
    try:
        data = parse_json(payload)
    except ValueError:
        if event == "error":
            data = {"error": payload.decode("utf-8", "replace")}
        else:
            raise GenerationFailed(
                f"The server at {backend.base_url} sent an event that is not JSON: "
                + _quoted(payload, backend)
            ) from None
    if not isinstance(data, dict):
        raise GenerationFailed(
            f"The server at {backend.base_url} sent an unexpected event: {_quoted(payload, backend)}"
        )
    if event == "error" or data.get("error"):
        message = backend._said(_error_text(data))
        raise GenerationFailed(
            f"The server at {backend.base_url} reported an error during the reply: {message}"
        )
    return data


def _quoted(payload: bytes, backend: OpenAIBackend) -> str:
    """An event the server sent, scrubbed and cut to quote in an error."""
    return repr(backend._said(payload.decode("utf-8", "replace"), limit=200))


def _error_text(data: dict[str, Any]) -> str:
    """The message of OpenAI's ``{"error": {"message": ...}}``, a bare ``{"error": "..."}``, older
    vLLM's top-level ``{"message": ...}`` or FastAPI's ``{"detail": ...}``."""
    error = data.get("error", data)
    if isinstance(error, dict):
        for key in ("message", "detail"):
            if error.get(key):
                return str(error[key])
        return json.dumps(error)[:500]
    return str(error)


def _is_missing_route(response: httpx.Response) -> bool:
    """A 404 for the path itself (FastAPI's ``{"detail": "Not Found"}``, a plain page), not the model."""
    try:
        data = parse_json(response.content)
    except ValueError:
        return True
    return not (isinstance(data, dict) and "error" in data)


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
