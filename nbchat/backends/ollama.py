"""Ollama over its HTTP API, with httpx.

One pooled ``httpx.Client`` per host. Unlike the official client this one
never waits forever (connect and read timeouts), turns a refused connection
into a clear ``BackendUnavailable`` on the streaming path too, checks every
streamed line for ``{"error": ...}``, and on cancel closes the response at
once, so the server stops generating instead of working for nobody.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from nbchat.backends.base import ReplyStream
from nbchat.backends.figures import duration_s, speed, token_count, whole_number, with_estimate
from nbchat.backends.http import (
    HttpBackend,
    HttpReplyStream,
    server_message,
    server_text,
    split_lines,
)
from nbchat.config import parse_ollama_host
from nbchat.errors import BackendError, BackendResponseError, GenerationFailed, ModelNotFound
from nbchat.types import Chunk, GenerationParams, GenerationStats, Message

PREFIX = "ollama"
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 120.0  # a cold model load can keep the first token waiting a while
DEFAULT_NUM_CTX = 8192  # sent explicitly: the server's own default depends on the machine
MAX_PULL_BYTES = 2**50  # a petabyte: a byte count beyond it from the server is nonsense


@dataclass(frozen=True)
class PullProgress:
    """One step of ``ollama pull``: a status line, with byte counts while downloading."""

    status: str
    completed: int | None = None
    total: int | None = None

    @property
    def fraction(self) -> float | None:
        """How much of ``total`` is ``completed``, from 0 to 1; None while either is unknown."""
        if self.total and self.completed is not None:
            return max(0.0, min(self.completed / self.total, 1.0))
        return None


@dataclass(frozen=True)
class ModelInfo:
    """What ``/api/show`` says about a model, cached per backend."""

    capabilities: frozenset[str]
    context_length: int | None

    @property
    def thinks(self) -> bool:
        return "thinking" in self.capabilities


class OllamaBackend(HttpBackend):
    """The models of one Ollama server."""

    prefix = PREFIX

    def __init__(
        self,
        host: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> None:
        # Checked and completed as OLLAMA_HOST is ("127.0.0.1" means http://127.0.0.1:11434): a
        # backend made in code gets no newline, password or port 0 past the site's rules either.
        self.host = parse_ollama_host(host)
        super().__init__(
            self.host, f"Ollama at {self.host}", connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self._info: dict[str, ModelInfo] = {}
        self._info_lock = threading.Lock()

    # -- listing and health ----------------------------------------------------------------

    def models(self) -> list[str]:
        """Model ids of every model the server has, e.g. ``ollama:qwen3:1.7b``."""
        data = self._get_json("GET", "/api/tags")
        return [
            f"{PREFIX}:{m['name']}" for m in data.get("models", []) if isinstance(m, dict) and "name" in m
        ]

    def version(self) -> str:
        return str(self._get_json("GET", "/api/version").get("version", "unknown"))

    def health(self) -> dict[str, Any]:
        """Reachable? Which version and models? Never raises: errors are reported in the dict."""
        report: dict[str, Any] = {"engine": PREFIX, "url": self.host, "reachable": False}
        try:
            report["version"] = self.version()
            report["reachable"] = True
            report["models"] = self.models()
        except BackendError as exc:
            report["error"] = str(exc)
        return report

    def model_info(self, model: str) -> ModelInfo:
        """Capabilities and context length from ``/api/show``, asked once per model."""
        with self._info_lock:
            cached = self._info.get(model)
        if cached is not None:
            return cached
        data = self._get_json("POST", "/api/show", json={"model": model}, model=model)
        details = data.get("model_info")
        stated = details.items() if isinstance(details, dict) else ()
        context = next((v for k, v in stated if k.endswith(".context_length")), None)
        capabilities = data.get("capabilities")
        info = ModelInfo(  # what makes no sense is ignored: no window stated, no capability
            capabilities=frozenset(
                c for c in (capabilities if isinstance(capabilities, list) else ()) if isinstance(c, str)
            ),
            context_length=token_count(context) or None,
        )
        with self._info_lock:
            self._info[model] = info
        return info

    def pull(self, model: str, progress: Callable[[PullProgress], None] | None = None) -> None:
        """Download ``model`` into the server, reporting each progress line to ``progress``."""
        with self._request_stream("POST", "/api/pull", {"model": model, "stream": True}, model) as response:
            try:
                for data in _ndjson(response, "the pull", self):
                    step = PullProgress(
                        str(data.get("status", "")),
                        whole_number(data.get("completed"), MAX_PULL_BYTES),  # nonsense: no count
                        whole_number(data.get("total"), MAX_PULL_BYTES),
                    )
                    if progress is not None:
                        progress(step)
                    if step.status == "success":
                        break
            except GenerationFailed as exc:  # Ollama's own words do not say which model
                if "file does not exist" in str(exc):
                    raise ModelNotFound(
                        f"Ollama at {self.host} cannot pull {model!r}: no such model in its library. "
                        "Check the name and tag (e.g. qwen3:1.7b, llama3.2:1b)."
                    ) from None
                raise GenerationFailed(f"Pulling {model!r} failed: {exc}") from None
        with self._info_lock:
            self._info.pop(model, None)

    def context_window(self, model: str) -> int:
        """The context size nbchat asks the server for (``num_ctx``): the model's, at most 8192.

        Ollama's own default is far smaller than most models allow and it cuts
        longer prompts silently, so nbchat always sends ``num_ctx`` explicitly.
        """
        info = self.model_info(model)
        return min(DEFAULT_NUM_CTX, info.context_length or DEFAULT_NUM_CTX)

    def known_context_window(self, model: str) -> int:
        """``context_window``: ``/api/show`` tells it without Ollama loading the model."""
        return self.context_window(model)

    # -- chatting --------------------------------------------------------------------------

    def stream(self, model: str, messages: Sequence[Message], params: GenerationParams) -> ReplyStream:
        return OllamaReplyStream(self, model, messages, params)

    def chat_request(
        self, model: str, messages: Sequence[Message], params: GenerationParams
    ) -> dict[str, Any]:
        """The /api/chat body. History goes back without thinking, as the model wants it."""
        info = self.model_info(model)
        options: dict[str, Any] = {
            "temperature": params.temperature,
            "num_predict": params.max_new_tokens,
            "num_ctx": params.context_size or self.context_window(model),
        }
        for name, value in (("top_p", params.top_p), ("top_k", params.top_k), ("seed", params.seed)):
            if value is not None:
                options[name] = value
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "options": options,
        }
        if info.thinks:  # sent only when supported: a non-thinking model answers 400 to any "think"
            body["think"] = params.think
        return body

    # -- its failures, in words (the shared HTTP plumbing raises them) ---------------------

    def _status_error(self, response: httpx.Response, model: str | None) -> BackendError:
        message = server_message(response, _error, self._secrets())
        if response.status_code == 404 and model is not None:
            return ModelNotFound(
                f"Ollama at {self.host} has no model {model!r} ({message}). Download it with "
                f"`ollama pull {model}`; `ollama list` shows the models you have."
            )
        return BackendResponseError(
            f"Ollama at {self.host} answered {response.status_code}: {message}", response.status_code
        )

    def _unreachable(self, exc: httpx.ConnectError) -> str:
        return (
            f"Cannot reach Ollama at {self.host} ({self._said(str(exc))}). Start it with `ollama serve` "
            "(or open the Ollama app), or set OLLAMA_HOST to the address it listens on."
        )

    def _slow_to_connect(self) -> str:
        return f"Ollama at {self.host} did not accept a connection in time; is the address right?"

    def _silent(self, model: str | None) -> str:
        return (
            f"Ollama at {self.host} sent nothing for {self.read_timeout:.0f} s"
            + (f" while running {model!r}" if model else "")
            + "; it may be overloaded or stuck. Try again, or restart Ollama."
        )

    def _broken_off(self, exc: Exception) -> str:
        return (
            f"The connection to Ollama at {self.host} broke off ({self._said(str(exc))}); "
            "is the server still running?"
        )

    def _not_json(self, path: str) -> str:
        return (
            f"Ollama at {self.host} answered {path} with something that is not JSON; "
            "is OLLAMA_HOST pointing at an Ollama server?"
        )


class OllamaReplyStream(HttpReplyStream):
    """A reply streamed from ``/api/chat`` as NDJSON."""

    _backend: OllamaBackend

    def _generate(self) -> Generator[Chunk, None, GenerationStats]:
        backend = self._backend

        def body() -> dict[str, Any]:
            return backend.chat_request(self._model, self._messages, self._params)

        streamed = 0  # lines with text: the token count if the done line has no usable one
        try:
            with self._open("/api/chat", body) as response:
                for data in _ndjson(response, "the reply", backend):
                    if self.cancelled:
                        break  # leaving the block closes the response: the server stops too
                    message = data.get("message") or {}
                    thinking, content = message.get("thinking"), message.get("content")
                    streamed += bool(thinking or content)
                    if thinking:
                        yield Chunk("thinking", thinking)
                    if content:
                        yield Chunk("text", content)
                    if data.get("done"):
                        return with_estimate(_stats(data), streamed)
        except BackendError as exc:
            return self._read_failed(exc, streamed)
        return self._ended(None, streamed)


def _ndjson(response: httpx.Response, what: str, backend: OllamaBackend) -> Iterator[dict[str, Any]]:
    """Each JSON object of an NDJSON body; an ``{"error": ...}`` line becomes GenerationFailed."""
    for line in split_lines(response, backend.max_line_bytes, backend._server):
        if line and (data := _parse_line(line, what)) is not None:
            yield data


_decode_json = json.JSONDecoder().decode  # on str: json.loads(bytes) would sniff the encoding per line


def _parse_line(line: bytes, what: str) -> dict[str, Any] | None:
    """One NDJSON line as a dict; ``None`` for a blank line (whitespace between objects)."""
    try:
        data = _decode_json(line.decode())
    except (ValueError, RecursionError):  # UnicodeDecodeError too; nor is a blank line JSON
        if not line.strip():
            return None
        raise GenerationFailed(
            f"Ollama sent a line that is not JSON during {what}: {_quoted(line)}"
        ) from None
    if not isinstance(data, dict):
        raise GenerationFailed(f"Ollama sent an unexpected line during {what}: {_quoted(line)}")
    if "error" in data:
        raise GenerationFailed(f"Ollama reported an error during {what}: {server_text(str(data['error']))}")
    return data


def _quoted(line: bytes) -> str:
    """A line the server sent, scrubbed and cut to quote in an error."""
    return repr(server_text(line.decode("utf-8", "replace"), limit=200))


def _stats(done: dict[str, Any]) -> GenerationStats:
    """Stats from the final line (durations in nanoseconds); a figure that makes no sense is dropped."""
    # Durations are left to the stream's own clock (what the user waited); the server's
    # eval figures give the pure generation speed.
    eval_count = token_count(done.get("eval_count"))
    return GenerationStats(
        finish_reason="length" if done.get("done_reason") == "length" else "stop",
        prompt_tokens=token_count(done.get("prompt_eval_count")),
        completion_tokens=eval_count,
        tokens_per_s=speed(eval_count, duration_s(done.get("eval_duration"), 1e-9)),
    )


def _error(data: dict[str, Any]) -> str | None:
    """The message of Ollama's ``{"error": "..."}``."""
    return str(data["error"]) if "error" in data else None
