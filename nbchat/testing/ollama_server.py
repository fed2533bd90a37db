"""A loopback server that speaks Ollama's HTTP API, for tests, notebooks and benchmarks.

No real Ollama server can run where nbchat is tested, so the Ollama backend is tested against this
rig. It keeps to the contract in ``shared/reference/ollama-api.md`` (taken from Ollama's
``docs/api.md``, ``server/routes.go`` and ``api/types.go``): the same paths, JSON shapes, status codes
and error texts; NDJSON streams over HTTP/1.1 keep-alive with chunked transfer, headers sent with the
first chunk as Ollama does; the ``{"error": ...}`` line that ends a stream failing midway.

Replies are deterministic (the last user message echoed back, word by word) so tests can assert on
them, and a few attributes make the server slow or make it fail in each way a real one can. Like
Ollama, it stops generating as soon as the client goes away; ``cancelled_streams`` counts those
generations, so a test can prove that a cancel really reached the server.

In-process::

    with OllamaTestServer() as server:
        client = ollama.Client(host=server.url)

In its own process, e.g. for a benchmark (prints ``READY http://127.0.0.1:<port>``, stops on SIGTERM)::

    python -m nbchat.testing.ollama_server --chunk-count 20000
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import chain, islice
from typing import Any

from nbchat.testing.loopback import (
    STALL_FAULTS,
    HTTPError,
    LoopbackHandler,
    LoopbackServer,
    dumps,
    dumps_with,
    script_parser,
    serve_until_signalled,
    words,
)

__all__ = [
    "FAULTS",
    "MIDSTREAM_ERROR",
    "THINKING_TEXT",
    "FakeModel",
    "OllamaTestServer",
    "default_library",
    "default_models",
    "main",
]

THINKING_TEXT = "Let me think about that."
MIDSTREAM_ERROR = "an error was encountered while running the model"
FAULTS = frozenset({"404", "500", "503", "midstream_error", "drop", "stall"}) | STALL_FAULTS
_STATUS_FAULT_ERRORS = {
    # The texts Ollama 0.12 sends with these statuses (server/sched.go, llm/server.go).
    "500": "llama runner process has terminated: exit status 2",
    "503": "server busy, please try again.  maximum pending requests exceeded",
}
_DEFAULT_NUM_CTX = 4096  # what Ollama 0.12 loads a model with when the request sets no num_ctx
_KEEP_ALIVE = timedelta(minutes=5)  # Ollama's default keep_alive
_INT_OPTIONS = ("num_predict", "num_ctx", "top_k", "seed", "num_keep", "repeat_last_n")
_FLOAT_OPTIONS = ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty")


@dataclass
class FakeModel:
    """A model the fake server has installed (or can pull), as /api/tags and /api/show describe it."""

    name: str  # e.g. "qwen3:1.7b"
    thinking: bool = True  # has the "thinking" capability (listed in /api/show capabilities)
    context_length: int = 40960  # reported as model_info["<family>.context_length"]
    family: str = "qwen3"
    parameter_size: str = "1.7B"
    size: int = 1_400_000_000
    show_fields: dict[str, Any] | None = None  # set on its /api/show answer (odd values: see RawJSON)


def default_models() -> list[FakeModel]:
    """What a fresh server has installed: one thinking model, one without the capability."""
    return [
        FakeModel("qwen3:1.7b"),
        FakeModel(
            "llama3.2:1b",
            thinking=False,
            context_length=131072,
            family="llama",
            parameter_size="1.2B",
            size=1_300_000_000,
        ),
    ]


def default_library() -> list[FakeModel]:
    """What /api/pull can fetch, standing in for the ollama.com library; any other name is unknown."""
    return [
        FakeModel("qwen3:0.6b", parameter_size="751.63M", size=522_000_000),
        FakeModel("qwen3:1.7b"),
        FakeModel("qwen3:4b", parameter_size="4.0B", size=2_500_000_000),
        FakeModel("qwen3:8b", parameter_size="8.2B", size=5_200_000_000),
        FakeModel("qwen3:latest", parameter_size="8.2B", size=5_200_000_000),
        FakeModel("llama3.2:1b", False, 131072, "llama", "1.2B", 1_300_000_000),
        FakeModel("llama3.2:3b", False, 131072, "llama", "3.2B", 2_000_000_000),
        FakeModel("llama3.2:latest", False, 131072, "llama", "3.2B", 2_000_000_000),
        FakeModel("gemma3:1b", False, 32768, "gemma3", "999.89M", 815_000_000),
    ]


# --- small pure helpers -------------------------------------------------------------------------------


def _rfc3339(moment: datetime | None = None) -> str:
    """Ollama's timestamps: RFC 3339 in UTC with fractional seconds and a Z."""
    if moment is None:
        return _now_rfc3339()
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_clock_cache: tuple[int, str] = (-1, "")


def _now_rfc3339() -> str:
    """Now, as _rfc3339 writes it, cheaply: a 20,000-chunk stream stamps every chunk."""
    global _clock_cache
    now_us = time.time_ns() // 1000
    seconds, micros = divmod(now_us, 1_000_000)
    cached_seconds, prefix = _clock_cache
    if seconds != cached_seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _clock_cache = (seconds, prefix)
    return f"{prefix}.{micros:06d}Z"


def _model_key(name: str) -> str:
    """Ollama's name matching: case-insensitive, and a name without a tag means ``:latest``."""
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _display_name(name: str) -> str:
    """The name as /api/tags lists it: always with its tag."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _digest(*parts: str) -> str:
    """A stable, realistic-looking sha256 digest (64 hex digits), derived from the parts."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _parameter_count(parameter_size: str) -> int:
    """ "1.7B" → 1_700_000_000, "751.63M" → 751_630_000 (what model_info's general.parameter_count holds)."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMBT]?)\s*", parameter_size.upper())
    if not match:
        return 0
    scale = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}[match.group(2)]
    return round(float(match.group(1)) * scale)


def _json_type(value: Any) -> str:
    """The JSON type name Go's encoding/json uses in its unmarshal errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _is_zero_duration(keep_alive: Any) -> bool:
    """Whether keep_alive asks to unload now: 0 (seconds) or a zero Go duration such as "0" or "0s"."""
    if isinstance(keep_alive, bool):
        return False
    if isinstance(keep_alive, (int, float)):
        return keep_alive == 0
    return (
        isinstance(keep_alive, str) and re.fullmatch(r"0+(\.0*)?(ns|us|µs|ms|s|m|h)?", keep_alive) is not None
    )


class _HTTPError(HTTPError):
    """Ends a request with ``{"error": message}`` and this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message, {"error": message})


# --- request checks, mirroring what Go's encoding/json and Ollama's handlers refuse ----------------------


def _parse_object(raw: bytes, go_type: str) -> dict[str, Any]:
    if not raw.strip():
        raise _HTTPError(400, "missing request body")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _HTTPError(400, f"invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise _HTTPError(400, f"json: cannot unmarshal {_json_type(body)} into Go value of type {go_type}")
    return body


def _check_field(
    body: dict[str, Any], struct: str, field: str, kind: type | tuple[type, ...], go: str
) -> None:
    """Refuse a field of the wrong JSON type, with Go's message; null counts as absent, as in Go."""
    value = body.get(field)
    if value is not None and not isinstance(value, kind):
        raise _HTTPError(
            400,
            f"json: cannot unmarshal {_json_type(value)} into Go struct field {struct}.{field} of type {go}",
        )


def _check_chat_request(body: dict[str, Any]) -> None:
    struct = "ChatRequest"
    _check_field(body, struct, "model", str, "string")
    _check_field(body, struct, "messages", list, "[]api.Message")
    _check_field(body, struct, "stream", bool, "bool")
    _check_field(body, struct, "options", dict, "map[string]interface {}")
    for message in body.get("messages") or []:
        if message is None:
            continue
        if not isinstance(message, dict):
            raise _HTTPError(
                400,
                f"json: cannot unmarshal {_json_type(message)} into Go struct field "
                f"{struct}.messages of type api.Message",
            )
        for field in ("role", "content", "thinking"):
            _check_field(message, f"{struct}.messages", field, str, "string")
    think = body.get("think")
    if isinstance(think, str) and think not in ("high", "medium", "low"):
        raise _HTTPError(
            400, f'invalid think value: "{think}" (must be "high", "medium", "low", true, or false)'
        )
    if think is not None and not isinstance(think, (bool, str)):
        raise _HTTPError(400, 'think must be a boolean or string ("high", "medium", "low")')


def _check_options(options: dict[str, Any]) -> None:
    """Ollama turns options into its Options struct after scheduling; a wrong type is a 500 there."""
    for key, value in options.items():
        if value is None:
            continue
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in _INT_OPTIONS and not numeric:
            raise _HTTPError(500, f'option "{key}" must be of type integer')
        if key in _FLOAT_OPTIONS and not numeric:
            raise _HTTPError(500, f'option "{key}" must be of type float32')
        if key == "stop":
            if not isinstance(value, list):
                raise _HTTPError(500, f'option "{key}" must be of type array')
            if not all(isinstance(item, str) for item in value):
                raise _HTTPError(500, f'option "{key}" must be of an array of strings')


# --- model descriptions ------------------------------------------------------------------------------


@dataclass
class _Installed:
    model: FakeModel
    modified_at: str


@dataclass
class _Loaded:
    model: FakeModel
    expires_at: str
    context_length: int


def _details(model: FakeModel) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": "Q4_K_M",
    }


def _show(installed: _Installed) -> dict[str, Any]:
    model = installed.model
    name = _display_name(model.name)
    template = (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n"
    )
    parameters = "\n".join(
        f"{key:<31}{value}" for key, value in [("temperature", 0.6), ("top_k", 20), ("top_p", 0.95)]
    )
    return {
        "license": "Apache License\nVersion 2.0, January 2004",
        "modelfile": (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this one, replace the FROM line with:\n"
            f"# FROM {name}\n\n"
            f"FROM /root/.ollama/models/blobs/sha256-{_digest(name, 'model')}\n"
            f'TEMPLATE """{template}"""\n'
        ),
        "parameters": parameters,
        "template": template,
        "details": _details(model),
        "model_info": {
            "general.architecture": model.family,
            "general.file_type": 15,
            "general.parameter_count": _parameter_count(model.parameter_size),
            "general.quantization_version": 2,
            f"{model.family}.context_length": model.context_length,
        },
        "capabilities": ["completion", "thinking"] if model.thinking else ["completion"],
        "modified_at": installed.modified_at,
    }


# --- the HTTP side ---------------------------------------------------------------------------------------

_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/"): "_root",
    ("HEAD", "/"): "_root",
    ("GET", "/api/version"): "_version",
    ("HEAD", "/api/version"): "_version",
    ("GET", "/api/tags"): "_tags",
    ("HEAD", "/api/tags"): "_tags",
    ("GET", "/api/ps"): "_ps",
    ("POST", "/api/chat"): "_chat",
    ("POST", "/api/show"): "_show",
    ("POST", "/api/pull"): "_pull",
}


class _Handler(LoopbackHandler["OllamaTestServer"]):
    """Ollama's side of a connection: Gin's routes and errors, NDJSON streams."""

    stream_content_type = "application/x-ndjson"  # the first line sends the headers, as Go's http does
    json_content_type = "application/json; charset=utf-8"

    _started_at_ns = 0  # replaced per request in _dispatch

    def _dispatch(self) -> None:
        self._started_at_ns = time.perf_counter_ns()
        super()._dispatch()

    def _route(self, path: str, raw: bytes) -> None:
        self.rig._record(self.command, path, raw)
        route = _ROUTES.get((self.command, path))
        if route is None:
            self._send(404, b"404 page not found", "text/plain")  # Gin's answer to an unknown route
            return
        getattr(self, route)(raw)

    def _error(self, status: int, message: str) -> HTTPError:
        return _HTTPError(status, message)

    def _stream_error(self, error: HTTPError) -> None:
        self._stream_line(error.body)

    def _stream_line(self, value: dict[str, Any], *, flush: bool = True) -> None:
        """One NDJSON line as one HTTP chunk (see LoopbackHandler._chunk for flush)."""
        self._chunk(dumps(value) + b"\n", flush=flush)

    def _stream_ndjson(self, lines: Iterable[dict[str, Any]]) -> None:
        """Ollama's streamResponse: an error before anything was sent is a plain 500, later it is a line."""
        for line in lines:
            if "error" in line and not self._stream_started:
                raise _HTTPError(500, line["error"])
            fields = self.rig.pull_fields if "total" in line else None
            self._chunk(dumps_with(line, fields) + b"\n")
            if "error" in line:
                break
        self._end_stream()

    # -- endpoints ------------------------------------------------------------------------------------

    def _root(self, raw: bytes) -> None:
        self._send(200, b"Ollama is running", "text/plain; charset=utf-8")

    def _version(self, raw: bytes) -> None:
        self._send_json(200, {"version": self.rig.version})

    def _tags(self, raw: bytes) -> None:
        self._send_json(200, {"models": self.rig._tags()})

    def _ps(self, raw: bytes) -> None:
        self._send_json(200, {"models": self.rig._ps()})

    def _show(self, raw: bytes) -> None:
        body = _parse_object(raw, "api.ShowRequest")
        _check_field(body, "ShowRequest", "model", str, "string")
        _check_field(body, "ShowRequest", "name", str, "string")
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise _HTTPError(400, "model is required")
        installed = self.rig._lookup(name)
        if installed is None:
            raise _HTTPError(404, f"model '{name}' not found")
        self._send(200, dumps_with(_show(installed), installed.model.show_fields), self.json_content_type)

    def _pull(self, raw: bytes) -> None:
        body = _parse_object(raw, "api.PullRequest")
        for field in ("model", "name"):
            _check_field(body, "PullRequest", field, str, "string")
        for field in ("stream", "insecure"):
            _check_field(body, "PullRequest", field, bool, "bool")
        name = body.get("model") or body.get("name") or ""
        if not re.fullmatch(r"[\w][\w.\-/]*(:[\w][\w.\-]*)?", name):
            raise _HTTPError(400, "invalid model name")
        lines = self.rig._pull_progress(name)
        if body.get("stream") is False:
            # Ollama's waitForStream: the last progress line, or the error with status 500.
            last: dict[str, Any] = {}
            for line in lines:
                if "error" in line:
                    raise _HTTPError(500, line["error"])
                last = line
            self._send_json(200, last)
            return
        self._stream_ndjson(lines)

    def _chat(self, raw: bytes) -> None:
        rig = self.rig
        body = _parse_object(raw, "api.ChatRequest")
        _check_chat_request(body)
        name: str = body.get("model") or ""
        if not name:
            raise _HTTPError(400, "model is required")
        installed = rig._lookup(name)
        if installed is None:
            raise _HTTPError(404, f'model "{name}" not found, try pulling it first')
        model = installed.model
        messages: list[dict[str, Any]] = [m for m in body.get("messages") or [] if m is not None]
        keep_alive = body.get("keep_alive")
        unload_after = _is_zero_duration(keep_alive)
        if not messages and unload_after:
            rig._unload(model)
            self._send_json(200, self._final(name, "unload"))
            return
        think = body.get("think")
        think_on = think is True or isinstance(think, str)
        if think_on and not model.thinking:
            raise _HTTPError(400, f'"{name}" does not support thinking')
        options: dict[str, Any] = body.get("options") or {}
        _check_options(options)
        fault = rig.fault
        if fault == "404":
            raise _HTTPError(404, f'model "{name}" not found, try pulling it first')
        if fault in _STATUS_FAULT_ERRORS:
            raise _HTTPError(int(fault), _STATUS_FAULT_ERRORS[fault])
        rig._load(model, options.get("num_ctx"))
        loaded_at_ns = time.perf_counter_ns()
        if not messages:
            self._send_json(200, self._final(name, "load"))
            return
        stream = body.get("stream") is not False
        with rig._generation():
            final = self._generate(
                name, body, messages, model.thinking and (think is None or think_on), loaded_at_ns
            )
        # The generation is over before the done line leaves: a client holding that line sees
        # active_streams already down.
        if final is not None and stream:
            self._chunk(dumps_with(final, rig.final_fields) + b"\n")
            self._end_stream()
        elif final is not None:
            self._send(200, dumps_with(final, rig.final_fields), self.json_content_type)
        if unload_after:
            rig._unload(model)

    def _final(self, name: str, done_reason: str, **extra: Any) -> dict[str, Any]:
        return {
            "model": name,
            "created_at": _rfc3339(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": done_reason,
            "done": True,
            **extra,
        }

    def _generate(
        self,
        name: str,
        body: dict[str, Any],
        messages: list[dict[str, Any]],
        thinking: bool,
        loaded_at_ns: int,
    ) -> dict[str, Any] | None:
        """Stream (or collect) the scripted reply, honouring delays, num_predict and the fault script.

        Returns the final object (the done line, or the whole reply if not streaming), or None when
        a fault ended the response.
        """
        rig = self.rig
        stream = body.get("stream") is not False
        answer, answer_len = rig._answer(messages)
        num_predict = (body.get("options") or {}).get("num_predict")
        done_reason = "stop"
        if num_predict is not None and 0 < int(num_predict) < answer_len:
            answer, done_reason = islice(answer, int(num_predict)), "length"
        pieces: Iterator[tuple[str, str]] = chain(
            (("thinking", word) for word in (words(THINKING_TEXT) if thinking else [])),
            (("content", word) for word in answer),
        )
        fault, fault_after = rig.fault, rig.fault_after_chunks
        self._stall(fault)
        first_delay, delay = rig.first_chunk_delay_s, rig.chunk_delay_s
        collected: dict[str, list[str]] = {"thinking": [], "content": []}
        sent = 0
        first_at_ns = 0
        for kind, text in pieces:
            if fault in ("midstream_error", "drop", "stall") and sent >= fault_after:
                break
            self._wait(first_delay if sent == 0 else delay)
            first_at_ns = first_at_ns or time.perf_counter_ns()
            if stream:
                message = {"role": "assistant", "content": text if kind == "content" else ""}
                if kind == "thinking":
                    message["thinking"] = text
                line = {"model": name, "created_at": _rfc3339(), "message": message, "done": False}
                self._stream_line(line, flush=sent == 0 or delay > 0)
            else:
                collected[kind].append(text)
            sent += 1
        if fault == "midstream_error":
            raise _HTTPError(500, MIDSTREAM_ERROR)  # a line if the stream has begun, else a plain 500
        if fault == "stall":
            self._flush()
            self._wait(math.inf)  # until the client hangs up (ClientGone) or stop() (ServerStopping)
        if fault in ("drop", "stall"):
            self._drop()
            return None
        done_at_ns = time.perf_counter_ns()
        first_at_ns = first_at_ns or done_at_ns
        final = self._final(
            name,
            done_reason,
            total_duration=max(1, done_at_ns - self._started_at_ns),
            load_duration=max(1, loaded_at_ns - self._started_at_ns),
            prompt_eval_count=sum(len(str(m.get("content") or "").split()) for m in messages),
            prompt_eval_duration=max(1, first_at_ns - loaded_at_ns),
            eval_count=sent,
            eval_duration=max(1, done_at_ns - first_at_ns),
        )
        if stream:
            self._flush()  # a client that left is noticed here, while still generating
            return final
        final["message"]["content"] = "".join(collected["content"])
        if collected["thinking"]:
            final["message"]["thinking"] = "".join(collected["thinking"])
        return final


class OllamaTestServer(LoopbackServer):
    """A fake Ollama on 127.0.0.1 and a free port; see the module docstring.

    The reply to a chat is deterministic. By default the answer is the words of
    ``f"You said: {last user message}"``, one word (with its following whitespace) per chunk; a thinking
    model (with ``think`` true or omitted) first streams ``"Let me think about that."`` word by word as
    thinking chunks. The attributes below, read at the start of each request, change that:

    - ``reply_words``: the answer chunks, verbatim.
    - ``chunk_count``: the answer is exactly this many chunks ``"w0 ", "w1 ", ...`` (wins over reply_words).
    - ``first_chunk_delay_s`` / ``chunk_delay_s``: sleep before the first chunk / between chunks.
    - ``fault``: None, or one of ``FAULTS``: ``"404"``, ``"500"``, ``"503"`` refuse the chat with that
      status; ``"midstream_error"``, ``"drop"``, ``"stall"`` let ``fault_after_chunks`` chunks (thinking
      ones included) through, then end with an error line / cut the connection without the final chunk /
      hang until the client hangs up or the server stops; ``"stall_headers"`` / ``"stall_body"`` hang
      before the status line / after the headers, before the first line (a cold model load), until
      the client hangs up or the server stops. A refused connection is what stop() gives, a hanging
      connect what ``loopback.hanging_port()`` gives.

    ``final_fields`` are set on the done line (e.g. ``{"eval_count": RawJSON("1e400")}``), ``pull_fields``
    on every line of a pull that reports bytes (e.g. ``{"completed": "half"}``).
    ``options.num_predict`` caps the answer chunks (thinking not counted) with done_reason "length".
    """

    _handler_class = _Handler
    _faults = FAULTS
    _thread_name = "ollama-test"

    def __init__(
        self,
        models: list[FakeModel] | None = None,
        version: str = "0.12.3",
        *,
        library: list[FakeModel] | None = None,
        port: int = 0,
        verbose: bool = False,
    ) -> None:
        super().__init__(port=port, verbose=verbose)
        self.version = version
        self.pull_fields: dict[str, Any] | None = None
        self._models: dict[str, _Installed] = {}
        self._loaded: dict[str, _Loaded] = {}
        self._library = {_model_key(m.name): m for m in (default_library() if library is None else library)}
        for model in default_models() if models is None else models:
            self.add_model(model)

    def add_model(self, m: FakeModel) -> None:
        """Install a model (replacing one of the same name), as if it had been pulled."""
        with self._lock:
            self._models[_model_key(m.name)] = _Installed(m, _rfc3339())

    def remove_model(self, name: str) -> None:
        """Delete an installed model; KeyError if there is none of that name."""
        with self._lock:
            del self._models[_model_key(name)]
            self._loaded.pop(_model_key(name), None)

    # -- state used by the handler --------------------------------------------------------------------

    def _lookup(self, name: str) -> _Installed | None:
        with self._lock:
            return self._models.get(_model_key(name))

    def _tags(self) -> list[dict[str, Any]]:
        with self._lock:
            installed = sorted(self._models.values(), key=lambda i: i.modified_at, reverse=True)
        return [
            {
                "name": _display_name(i.model.name),
                "model": _display_name(i.model.name),
                "modified_at": i.modified_at,
                "size": i.model.size,
                "digest": _digest(_display_name(i.model.name)),
                "details": _details(i.model),
            }
            for i in installed
        ]

    def _ps(self) -> list[dict[str, Any]]:
        with self._lock:
            loaded = sorted(self._loaded.values(), key=lambda x: x.expires_at, reverse=True)
        return [
            {
                "name": _display_name(x.model.name),
                "model": _display_name(x.model.name),
                "size": x.model.size,
                "digest": _digest(_display_name(x.model.name)),
                "details": _details(x.model),
                "expires_at": x.expires_at,
                "size_vram": x.model.size,
                "context_length": x.context_length,
            }
            for x in loaded
        ]

    def _load(self, model: FakeModel, num_ctx: Any) -> None:
        context_length = int(num_ctx) if num_ctx else _DEFAULT_NUM_CTX
        expires_at = _rfc3339(datetime.now(timezone.utc) + _KEEP_ALIVE)
        with self._lock:
            self._loaded[_model_key(model.name)] = _Loaded(model, expires_at, context_length)

    def _unload(self, model: FakeModel) -> None:
        with self._lock:
            self._loaded.pop(_model_key(model.name), None)

    def _pull_progress(self, name: str) -> Iterator[dict[str, Any]]:
        """Ollama's pull progress lines; the model is installed just before "success"."""
        yield {"status": "pulling manifest"}
        with self._lock:
            installed = self._models.get(_model_key(name))
        source = self._library.get(_model_key(name)) or (installed.model if installed else None)
        if source is None:
            yield {"error": "pull model manifest: file does not exist"}
            return
        layers = [("model", max(1, source.size - 1_602)), ("template", 1_482), ("params", 120)]
        for layer, total in layers:
            digest = "sha256:" + _digest(_display_name(name), layer)
            status = f"pulling {digest[7:19]}"
            yield {"status": status, "digest": digest, "total": total}  # no "completed" before any byte
            for quarter in (1, 2, 3, 4):
                yield {"status": status, "digest": digest, "total": total, "completed": total * quarter // 4}
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        self.add_model(dataclasses.replace(source, name=_display_name(name)))
        yield {"status": "success"}


# --- command line ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print ``READY <url>`` once listening, for the parent process."""
    parser = script_parser(
        "python -m nbchat.testing.ollama_server", "A loopback fake Ollama server.", unit="chunk"
    )
    parser.add_argument("--model", action="append", default=[], metavar="NAME", help="a thinking model")
    parser.add_argument(
        "--model-without-thinking",
        action="append",
        default=[],
        metavar="NAME",
        help="a model that cannot think",
    )
    parser.add_argument("--ollama-version", default="0.12.3", help="what /api/version reports")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)

    models = [FakeModel(n) for n in args.model] + [
        FakeModel(n, thinking=False) for n in args.model_without_thinking
    ]
    server = OllamaTestServer(models or None, args.ollama_version, port=args.port, verbose=args.verbose)
    return serve_until_signalled(server, args, lambda: server.url)


if __name__ == "__main__":
    sys.exit(main())
