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

import json
import math
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

from nbchat.testing.loopback import (
    STALL_FAULTS,
    HTTPError,
    LoopbackHandler,
    LoopbackServer,
    dumps,
    dumps_with,
    message_text,
    script_parser,
    serve_until_signalled,
    words,
)

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
# A careless proxy or server that copies the request's Authorization header into what it says.
ECHO_FAULTS = frozenset({"echo_auth_event", "echo_auth_body", "echo_auth_reason"})
FAULTS = frozenset({"404", "500", "midstream_error", "drop", "stall"}) | STALL_FAULTS | ECHO_FAULTS
REASONING_STYLES = (None, "reasoning_content", "reasoning", "inline")
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _HTTPError(HTTPError):
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
        super().__init__(
            status, message, body if body is not None else _error_object(status, message, err_type, param)
        )


def _error_object(status: int, message: str, err_type: str, param: str | None = None) -> dict[str, Any]:
    """vLLM's ErrorResponse: OpenAI's ``{"error": {...}}`` with the status as an integer code."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


# --- request checks ---------------------------------------------------------------------------------------


def _check_chat_request(body: Any) -> dict[str, Any]:
    """``body`` if vLLM's request model takes it, else refused with a short message naming the field."""
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
    template_kwargs = body.get("chat_template_kwargs")
    if template_kwargs is not None and not isinstance(template_kwargs, dict):
        raise _HTTPError(400, "chat_template_kwargs must be an object.", param="chat_template_kwargs")
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
    return body


# --- the HTTP side ---------------------------------------------------------------------------------------

_ROUTES: dict[str, dict[str, str]] = {
    "/v1/models": {"GET": "_models"},
    "/v1/chat/completions": {"POST": "_chat"},
}


class _Handler(LoopbackHandler["OpenAITestServer"]):
    """vLLM's side of a connection: FastAPI's routes and errors, SSE streams."""

    stream_content_type = "text/event-stream; charset=utf-8"  # headers go with the first event, as uvicorn's

    def _route(self, path: str, raw: bytes) -> None:
        self.rig._record(self.command, path, raw, headers={k.lower(): v for k, v in self.headers.items()})
        self._check_key(path)
        methods = _ROUTES.get(path)
        if methods is None:
            raise _HTTPError(404, "Not Found", body={"detail": "Not Found"})
        if self.command not in methods:
            raise _HTTPError(405, "Method Not Allowed", body={"detail": "Method Not Allowed"})
        getattr(self, methods[self.command])(raw)

    def _error(self, status: int, message: str) -> HTTPError:
        return _HTTPError(
            status, message, err_type="InternalServerError" if status >= 500 else "BadRequestError"
        )

    def _stream_error(self, error: HTTPError) -> None:
        self._event(error.body)
        self._chunk(b"data: [DONE]\n\n")

    def _check_key(self, path: str) -> None:
        """vLLM's ``--api-key`` middleware: every /v1 request needs ``Authorization: Bearer <key>``."""
        key = self.rig.api_key
        if key is None or not path.startswith("/v1") or self.command == "OPTIONS":
            return
        if self.headers.get("Authorization") != f"Bearer {key}":
            raise _HTTPError(401, "Unauthorized", body={"error": "Unauthorized"})

    def _event(self, value: dict[str, Any], *, flush: bool = True) -> None:
        """One SSE event, ``data: {json}`` and a blank line, as one HTTP chunk."""
        self._chunk(b"data: " + dumps(value) + b"\n\n", flush=flush)

    # -- endpoints ------------------------------------------------------------------------------------

    def _models(self, raw: bytes) -> None:
        self._send_json(200, {"object": "list", "data": self.rig._cards()})

    def _chat(self, raw: bytes) -> None:
        rig = self.rig
        try:
            body = json.loads(raw) if raw.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _HTTPError(400, f"Invalid JSON in the request body: {exc}") from None
        body = _check_chat_request(body)
        name = body.get("model") or rig._first_model_id()
        model = rig._lookup(name)
        if model is None or rig.fault == "404":
            message = rig.fault_message or f"The model `{name}` does not exist."
            raise _HTTPError(404, message, err_type="NotFoundError", param="model")
        if rig.fault == "500":
            raise _HTTPError(500, rig.fault_message or STATUS_FAULT_ERROR, err_type="InternalServerError")
        echo = f"unexpected Authorization: {self.headers.get('Authorization', '')}"
        if rig.fault == "echo_auth_body":  # a plain-text body, as a proxy's error page
            self._send(400, echo.encode(), "text/plain; charset=utf-8")
            return
        if rig.fault == "echo_auth_reason":  # in the status line, with nothing in the body
            self._send(400, b"", "text/plain", reason=echo)
            return
        with rig._generation():
            self._generate(model, body)

    def _generate(self, model: ServedModel, body: dict[str, Any]) -> None:
        """Stream (or collect) the scripted reply, honouring delays, max_tokens and the fault script."""
        rig = self.rig
        stream = body.get("stream") is True
        messages = body["messages"]
        answer, answer_len = rig._answer(messages)
        # vLLM/SGLang/llama-server pass chat_template_kwargs to the chat template: Qwen3's
        # enable_thinking=false pre-fills an empty think block, so no reasoning comes out.
        enable = (body.get("chat_template_kwargs") or {}).get("enable_thinking", True)
        thinking = _thinking_pieces(model.reasoning) if enable is not False else []
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
        self._stall(fault)
        first_delay, delay = rig.first_chunk_delay_s, rig.chunk_delay_s
        collected: dict[str, list[str]] = {}
        sent = 0
        for field, text in pieces:
            if fault in ("midstream_error", "drop", "stall", "echo_auth_event") and sent >= fault_after:
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
            error_text = rig.fault_message or MIDSTREAM_ERROR
            if not stream:
                raise _HTTPError(500, error_text, err_type="InternalServerError")
            # A stream's status is 200 from the start, so even an error before any token is an event.
            self._event(_error_object(500, error_text, "InternalServerError"))
            self._chunk(b"data: [DONE]\n\n")
            self._end_stream()
            return
        if fault == "echo_auth_event":  # an event that is not JSON, quoting the request's header
            echo = f"unexpected Authorization: {self.headers.get('Authorization', '')}"
            self._chunk(b"data: " + echo.encode() + b"\n\n")
            self._chunk(b"data: [DONE]\n\n")
            self._end_stream()
            return
        if fault == "stall":
            if self._stream_started:
                self._flush()
            self._wait(math.inf)  # until the client hangs up (ClientGone) or stop() (ServerStopping)
        if fault in ("drop", "stall"):
            self._drop(ignore_gone=True)
            return
        prompt_tokens = sum(len(message_text(m.get("content")).split()) for m in messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + sent,
            "completion_tokens": sent,
        }
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(collected.get("content", []))}
            reasoning = model.reasoning if model.reasoning in ("reasoning_content", "reasoning") else None
            if reasoning is not None:
                message[reasoning] = "".join(collected.get(reasoning, [])) or None
            message["tool_calls"] = []
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
            self._send_json(200, {**header, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        if sent == 0:
            self._event({**header, "choices": [_choice({"role": "assistant", "content": ""})]})
        last = [{**header, "choices": [_choice({}, finish_reason)]}]
        options = body.get("stream_options")
        if rig.sends_usage and isinstance(options, dict) and options.get("include_usage", True) is not False:
            last.append({**header, "choices": [], "usage": usage})
        for number, event in enumerate(last, 1):
            fields = rig.final_fields if number == len(last) else None
            self._chunk(b"data: " + dumps_with(event, fields) + b"\n\n", flush=False)
        self._chunk(b"data: [DONE]\n\n", flush=False)
        self._end_stream()


def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _thinking_pieces(style: str | None) -> list[tuple[str, str]]:
    """The reasoning tokens of a model, as (delta field, text); Qwen3's own shape when inline."""
    if style is None:
        return []
    reasoning = words(REASONING_TEXT)
    if style == "inline":
        return [("content", t) for t in ("<think>", "\n", *reasoning, "\n", "</think>", "\n\n")]
    return [(style, word) for word in reasoning]


class OpenAITestServer(LoopbackServer):
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
      until the client hangs up or the server stops; ``"stall_headers"`` / ``"stall_body"`` hang before
      the status line / after the headers, before the first event (a cold model load), until the
      client hangs up or the server stops. A refused connection is what stop() gives, a hanging
      connect what ``loopback.hanging_port()`` gives. ``"echo_auth_event"`` / ``"echo_auth_body"`` /
      ``"echo_auth_reason"`` copy the request's Authorization header into a non-JSON event (after
      ``fault_after_chunks`` tokens) / a plain-text 400 body / a 400's status line.
    - ``fault_message``: the error text a fault sends instead of vLLM's usual one.
    - ``sends_usage``: False leaves out the usage chunk even when asked for, as llama-server does.
    - ``final_fields``: set on the last chunk before ``[DONE]`` (e.g. llama-server's ``timings``).

    ``max_tokens`` (or ``max_completion_tokens``) caps the tokens, reasoning included, with
    finish_reason "length".
    """

    _handler_class = _Handler
    _faults = FAULTS
    _thread_name = "openai-test"

    def __init__(
        self, models: list[ServedModel] | None = None, *, port: int = 0, verbose: bool = False
    ) -> None:
        super().__init__(port=port, verbose=verbose)
        self.base_url = ""
        self.fault_message: str | None = None
        self.api_key: str | None = None
        self.sends_usage = True
        # Each entry of self.requests also has "headers" (names in lower case), between "path" and "body".
        self._models: dict[str, ServedModel] = {}
        self._created = int(time.time())
        for model in default_models() if models is None else models:
            self.add_model(model)

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> OpenAITestServer:
        super().start()
        self.base_url = f"{self.url}/v1"
        return self

    def add_model(self, model: ServedModel) -> None:
        """Serve a model (replacing one with the same id)."""
        with self._lock:
            self._models[model.id] = model

    def remove_model(self, model_id: str) -> None:
        """Stop serving a model; KeyError if there is none with that id."""
        with self._lock:
            del self._models[model_id]

    # -- state used by the handler --------------------------------------------------------------------

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


# --- command line ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print ``READY <base url>`` once listening, for the parent process."""
    parser = script_parser(
        "python -m nbchat.testing.openai_server",
        "A loopback fake OpenAI-compatible (vLLM-like) server.",
        unit="token",
    )
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
    server.api_key = args.api_key
    return serve_until_signalled(server, args, lambda: server.base_url)


if __name__ == "__main__":
    sys.exit(main())
