"""Local models (Qwen3) with Hugging Face transformers: the ``transformers:`` engine.

Generation runs in a model process of the kernel's own (``nbchat.backends.local``);
docs/local-model.md says why, and how loading, Stop, failures and unloading behave.
Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from typing import Any, Literal

from nbchat.backends.base import LoadPhase, LoadProgress, ProgressCallback, ReplyStream
from nbchat.backends.chat import ThinkParser, chat_messages
from nbchat.backends.local import ENV_MODEL, PREFIX, registry
from nbchat.backends.local.loader import LoadCancelled
from nbchat.backends.local.process import POLL_S, SHUTDOWN_S, LocalModel, rss_bytes
from nbchat.backends.local.registry import loaded, unload
from nbchat.config import DEFAULT_QWEN_MODEL
from nbchat.errors import ContextOverflow, GenerationFailed
from nbchat.types import Chunk, GenerationParams, GenerationStats, Message

__all__ = [
    "LoadProgress",
    "ThinkParser",
    "TransformersBackend",
    "TransformersReply",
    "count_tokens",
    "loaded",
    "sampling_kwargs",
    "unload",
]

# Qwen's sampling recommendations per mode (the model cards); temperature comes from the params.
THINKING_SAMPLING = {"top_p": 0.95, "top_k": 20, "min_p": 0.0}
ANSWER_SAMPLING = {"top_p": 0.8, "top_k": 20, "min_p": 0.0}

_STALL_TIMEOUT_S = 3600.0  # no token for this long (the process alive): give up on the reply
_STOP_GRACE_S = 0.75  # after Stop, how long a reply waits for the process to acknowledge it
_REQUEST_IDS = itertools.count(1)


def sampling_kwargs(params: GenerationParams) -> dict[str, Any]:
    """``generate`` keyword arguments for ``params``, with Qwen's per-mode defaults.

    Temperature 0 (asked for explicitly: the default is 0.7) means greedy
    decoding; anything else samples, with ``top_p``/``top_k`` from the params
    when given, else Qwen's recommendation for the mode.
    """
    if params.temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "min_p": None}
    defaults = THINKING_SAMPLING if params.think else ANSWER_SAMPLING
    return {
        "do_sample": True,
        "temperature": params.temperature,
        "top_p": params.top_p if params.top_p is not None else defaults["top_p"],
        "top_k": params.top_k if params.top_k is not None else defaults["top_k"],
        "min_p": defaults["min_p"],
    }


def count_tokens(model: str, messages: Sequence[Message], *, think: bool = False) -> int:
    """Prompt tokens of ``messages`` as they would be sent (chat template + generation prompt)."""
    handle = registry.load(model)
    return len(_prompt_ids(handle, _render_prompt(handle, messages, think)))


def _render_prompt(handle: LocalModel, messages: Sequence[Message], think: bool) -> str:
    return handle.tokenizer.apply_chat_template(
        chat_messages(messages), tokenize=False, add_generation_prompt=True, enable_thinking=think
    )


def _prompt_ids(handle: LocalModel, prompt: str) -> list[int]:
    return list(handle.tokenizer(prompt, add_special_tokens=False)["input_ids"])


# -- the backend --------------------------------------------------------------------------------


class TransformersBackend:
    """Local models through transformers: ``transformers:<hub id or local directory>``.

    Instances are cheap and share the kernel's loaded models. ``generate_kwargs``
    are extra ``model.generate`` arguments for every reply of this instance
    (e.g. ``{"repetition_penalty": 1.1}``, which helps small models that repeat).
    ``dtype`` (``"bfloat16"``, ``"float16"``, ``"float32"``) overrides the
    automatic choice (half precision on a GPU, float32 on a CPU) for models
    this instance loads first; a model already loaded keeps its dtype.
    """

    prefix = PREFIX

    def __init__(
        self,
        *,
        models: Sequence[str] | None = None,
        on_progress: ProgressCallback | None = None,
        generate_kwargs: Mapping[str, Any] | None = None,
        dtype: Literal["bfloat16", "float16", "float32"] | None = None,
    ) -> None:
        if dtype not in (None, "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be bfloat16, float16, float32 or None (automatic), not {dtype!r}.")
        self._dtype = dtype
        self._configured = list(models) if models is not None else None
        self._on_progress = on_progress
        self._generate_kwargs = dict(generate_kwargs or {})
        try:  # they travel to the model process as JSON
            json.dumps(self._generate_kwargs)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"generate_kwargs must be plain JSON-able values: {exc}") from None

    def models(self) -> list[str]:
        """The configured model (``NBCHAT_QWEN_MODEL``, default Qwen/Qwen3-1.7B) and every loaded one."""
        configured = self._configured if self._configured is not None else [_configured_model()]
        ids = [f"{PREFIX}:{name}" for name in configured]
        return ids + [m for m in loaded() if m not in ids]

    def health(self) -> dict[str, Any]:
        """Loaded models with their device, dtype, parameters, memory and load time; no torch import."""
        models = []
        for handle in registry.handles():
            entry = {"model": f"{PREFIX}:{handle.model_id}", "pid": handle.process.pid, **handle.info}
            rss = rss_bytes(handle.process.pid)
            if rss is not None:
                entry["process_rss_bytes"] = rss
            models.append(entry)
        return {
            "backend": PREFIX,
            "ok": True,
            "design": "dedicated model process (see docs/local-model.md)",
            "configured": self.models(),
            "loaded": models,
        }

    def load(self, model: str, *, on_progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Load ``model`` now (it is otherwise loaded by the first reply); returns what ``health`` shows."""
        handle = self._loaded_model(model, on_progress)
        return {"model": f"{PREFIX}:{handle.model_id}", **handle.info}

    def prepare(
        self,
        model: str,
        on_progress: ProgressCallback | None = None,
        *,
        cancel: threading.Event | None = None,
        download: bool = True,
    ) -> None:
        """Load ``model`` unless it is loaded, reporting each phase to ``on_progress``; free once loaded.

        When ``cancel`` is set (Stop), this returns within a poll (50 ms) without the model, and a
        load nobody else waits for is ended: nothing half-loaded stays behind. A hub model not on
        this machine is downloaded first (``download`` steps), unless ``download`` is False: then
        ``ModelNotDownloaded`` (a warm start never starts a download of gigabytes on its own).
        """
        with contextlib.suppress(LoadCancelled):
            self._loaded_model(model, on_progress, cancel, download=download)

    def _loaded_model(
        self,
        model: str,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        *,
        download: bool = True,
    ) -> LocalModel:
        return registry.load(model, on_progress or self._on_progress, self._dtype, cancel, download=download)

    def loaded(self) -> list[str]:
        return loaded()

    def unload(self, model: str | None = None) -> list[str]:
        return unload(model)

    def count_tokens(self, model: str, messages: Sequence[Message], *, think: bool = False) -> int:
        """Exact prompt tokens (the real tokenizer and chat template); loads the model if needed."""
        handle = self._loaded_model(model)
        return len(_prompt_ids(handle, _render_prompt(handle, messages, think)))

    def known_context_window(self, model: str) -> int | None:
        """The model's context length if it is loaded now, else None: asking never loads a model."""
        handle = registry.get(model)
        return int(handle.info["max_position_embeddings"]) if handle is not None else None

    def context_window(self, model: str) -> int:
        """The model's context length (``max_position_embeddings``); loads the model if needed."""
        return int(self._loaded_model(model).info["max_position_embeddings"])

    def render_prompt(self, model: str, messages: Sequence[Message], *, think: bool = False) -> str:
        """The exact text the model is given for ``messages`` (thinking stripped from the history)."""
        return _render_prompt(self._loaded_model(model), messages, think)

    def stream(self, model: str, messages: Sequence[Message], params: GenerationParams) -> TransformersReply:
        """A reply to ``messages``; loading, templating and generating start when it is iterated."""
        return TransformersReply(self, model, list(messages), params)


def _configured_model() -> str:
    return (os.environ.get(ENV_MODEL) or "").strip() or DEFAULT_QWEN_MODEL


class TransformersReply(ReplyStream):
    """One reply generated by a model process; cancel from any thread, partial text kept."""

    def __init__(
        self, backend: TransformersBackend, model: str, messages: list[Message], params: GenerationParams
    ) -> None:
        super().__init__(PREFIX, model, messages, params)
        self._backend = backend
        self._handle: LocalModel | None = None
        self._ended = False
        self._request_id = next(_REQUEST_IDS)
        self.prompt: str | None = None  # the exact text the model was given, once known
        self.token_ids: list[int] = []  # the generated token ids, eos included, as they arrived
        #: Hears ``waiting`` when another reply holds the model, then ``turn`` when this one gets it
        #: (``elapsed_s``: seconds waited); the session sets it to the reply's status line.
        self.on_progress: ProgressCallback | None = backend._on_progress

    def _on_cancel(self) -> None:
        handle = self._handle
        if handle is not None and handle.current is self:
            handle.send("cancel", self._request_id)  # queued: never blocks, even on a frozen process

    def _generate(self) -> Generator[Chunk, None, GenerationStats]:
        try:
            handle = self._backend._loaded_model(self._model, cancel=self._cancel)
        except LoadCancelled:  # stopped while the model loaded
            return GenerationStats("cancelled", completion_tokens=0)
        self._handle = handle
        params = self._params
        self.prompt = _render_prompt(handle, self._messages, params.think)
        ids = _prompt_ids(handle, self.prompt)
        _check_context(handle, len(ids), params)
        ready = self._wait_for_turn(handle)
        if ready is None:
            return GenerationStats("cancelled", prompt_tokens=len(ids), completion_tokens=0)
        handle = self._handle = ready
        self._ended = False  # the model process sent this request's end marker
        try:
            handle.current = self
            kwargs = {**sampling_kwargs(params), **self._backend._generate_kwargs}
            kwargs["max_new_tokens"] = params.max_new_tokens
            handle.send("generate", self._request_id, ids, kwargs, params.seed)
            if self.cancelled:
                handle.send("cancel", self._request_id)
            return (yield from self._relay(handle, ids))
        finally:
            handle.current = None
            if self._ended:
                handle.turn.release()
            else:  # stopped before the process finished, closed mid-way, or failed here
                registry.settle(handle, self._request_id)  # gives the turn back, or retires the process

    def _wait_for_turn(self, handle: LocalModel) -> LocalModel | None:
        """Wait while another reply uses the model; None if cancelled meanwhile.

        Waiting is reported (``on_progress``: ``waiting``, then ``turn``), so the user sees why
        nothing streams yet. A process that froze or died under the reply before is replaced by
        a fresh one; an unloaded model is an error (unloading is deliberate).
        """
        waited_since: float | None = None
        while True:
            if not handle.turn.acquire(blocking=False):
                waited_since = waited_since or time.perf_counter()
                self._report("waiting", 0.0)
                while not handle.turn.acquire(timeout=POLL_S):
                    if self.cancelled:
                        return None
                    if handle.dead == "unloaded":
                        raise _unloaded(handle)
            if handle.dead is None:
                if self.cancelled:
                    handle.turn.release()
                    return None
                if waited_since is not None:
                    try:
                        self._report("turn", time.perf_counter() - waited_since)
                    except BaseException:  # a listener's failure must not keep the model's turn
                        handle.turn.release()
                        raise
                return handle
            handle.turn.release()
            if handle.dead == "unloaded":
                raise _unloaded(handle)
            try:
                handle = self._handle = self._backend._loaded_model(self._model, cancel=self._cancel)
            except LoadCancelled:
                return None

    def _report(self, phase: LoadPhase, elapsed_s: float) -> None:
        on_progress = self.on_progress
        if on_progress is not None:
            on_progress(LoadProgress(self.model_id, phase, elapsed_s))

    def _relay(self, handle: LocalModel, prompt_ids: list[int]) -> Generator[Chunk, None, GenerationStats]:
        """Turn the child's token ids into text and thinking chunks until it reports the end.

        After Stop, the child normally ends within a token; one that has not within
        ``_STOP_GRACE_S`` (frozen, or deep in a long prompt) is left to ``registry.settle``
        and the reply ends now, cancelled, with what streamed.
        """
        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(
            handle.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=SHUTDOWN_S
        )
        streamer.put(torch.tensor([prompt_ids]))  # what generate() does first; skip_prompt drops it
        parser = ThinkParser()
        heard = time.monotonic()
        stop_seen: float | None = None
        while True:
            message = handle.receive(timeout=POLL_S)
            now = time.monotonic()
            if message is None:
                if now - heard >= _STALL_TIMEOUT_S and not self.cancelled:
                    raise GenerationFailed(
                        f"The model process for {handle.model_id!r} sent nothing for "
                        f"{_STALL_TIMEOUT_S:.0f} s; it is restarted on the next message."
                    )
            elif message[1] == self._request_id:  # (a late message of an abandoned reply is skipped)
                heard = now
                if message[0] != "tokens":
                    self._ended = True
                    streamer.end()
                    yield from _pieces(streamer, parser)
                    yield from parser.flush()
                    return _final_stats(message, len(prompt_ids))
                self.token_ids.extend(message[2])
                streamer.put(torch.tensor(message[2]))
                yield from _pieces(streamer, parser)
            if self.cancelled:
                stop_seen = stop_seen or now
                if now - stop_seen >= _STOP_GRACE_S:  # not acknowledged: end here, settle() takes over
                    streamer.end()
                    yield from _pieces(streamer, parser)
                    yield from parser.flush()
                    return GenerationStats(
                        "cancelled", prompt_tokens=len(prompt_ids), completion_tokens=len(self.token_ids)
                    )


def _final_stats(end: list[Any], prompt_tokens: int) -> GenerationStats:
    """The stats of the process's end marker (``done``), or its error (``error``) raised."""
    if end[0] == "error":
        raise GenerationFailed(_generation_error_message(end[2], end[3]))
    report = end[2]
    return GenerationStats(
        report["finish_reason"],
        prompt_tokens=prompt_tokens,
        completion_tokens=report["completion_tokens"],
        ttft_s=report["ttft_s"],
        tokens_per_s=report["tokens_per_s"],
        cached_tokens=report.get("cached_tokens"),
    )


def _unloaded(handle: LocalModel) -> GenerationFailed:
    return GenerationFailed(f"The model {handle.model_id!r} was unloaded; send the message again.")


def _pieces(streamer: Any, parser: ThinkParser) -> Generator[Chunk, None, None]:
    while True:
        try:
            piece = streamer.text_queue.get_nowait()
        except queue.Empty:
            return
        if piece is streamer.stop_signal:
            return
        yield from parser.feed(piece)


def _check_context(handle: LocalModel, prompt_tokens: int, params: GenerationParams) -> None:
    limit = int(handle.info["max_position_embeddings"])
    if params.context_size is not None:
        limit = min(limit, params.context_size)
    needed = prompt_tokens + params.max_new_tokens
    if needed > limit:
        raise ContextOverflow(
            f"The conversation needs {prompt_tokens:,} prompt tokens + {params.max_new_tokens:,} new tokens "
            f"= {needed:,}, which is {needed - limit:,} more than the {limit:,}-token context of "
            f"{handle.model_id!r}. Shorten the conversation or lower max_new_tokens."
        )


def _generation_error_message(kind: str, detail: str) -> str:
    if kind == "oom":
        return (
            f"Out of memory while generating ({detail}). Lower max_new_tokens, shorten the "
            "conversation, use a smaller model (Qwen/Qwen3-0.6B), or load it in half precision "
            "(TransformersBackend(dtype='bfloat16'))."
        )
    return f"Generation failed: {detail}"
