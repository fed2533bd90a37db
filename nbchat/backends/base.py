"""The small protocol every model engine implements, and the reply stream they share.

A backend lists its models, reports its health and streams a reply. A
``ReplyStream`` is iterated for ``Chunk``s (answer text and thinking kept
apart), can be cancelled from any thread, keeps everything that streamed even
when generation fails, and ends with ``GenerationStats``.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from nbchat.errors import BackendError
from nbchat.types import Chunk, GenerationParams, GenerationStats, Message

#: ``download``: the weights come from the hub (repeated, with bytes); ``waiting``: another reply has
#: the model; ``turn``: it let go, and this reply starts.
LoadPhase = Literal["download", "tokenizer", "weights", "ready", "waiting", "turn"]


@dataclass(frozen=True)
class LoadProgress:
    """One step of loading a model: ``download`` (only the first time), ``tokenizer``, ``weights``, ``ready``.

    A ``download`` step repeats a few times a second with the bytes on disk so far
    (``done_bytes``, resumed bytes included), the ``total_bytes`` to have, and the
    recent speed (``bytes_per_s``, None until it is known).
    """

    model: str
    phase: LoadPhase
    elapsed_s: float
    detail: str = ""  # on ``ready``: the precision and why ("bfloat16: this CPU has AMX-BF16")
    done_bytes: int | None = None
    total_bytes: int | None = None
    bytes_per_s: float | None = None

    @property
    def fraction(self) -> float | None:
        """How much of a download is done, 0 to 1 (None when this is no download step)."""
        if self.done_bytes is None or not self.total_bytes:
            return None
        return min(1.0, max(0.0, self.done_bytes / self.total_bytes))

    @property
    def seconds_left(self) -> float | None:
        """The download's time left at its recent speed (None while the speed is unknown)."""
        if self.done_bytes is None or self.total_bytes is None or not self.bytes_per_s:
            return None
        return max(0.0, self.total_bytes - self.done_bytes) / self.bytes_per_s

    def download_text(self) -> str:
        """``1.2 GB of 3.4 GB (35%), 25.0 MB/s, about 1 min 30 s left``: what a person reads."""
        if self.done_bytes is None:
            return ""
        parts = [f"{size_text(self.done_bytes)} of {size_text(self.total_bytes or 0)}"]
        if (fraction := self.fraction) is not None:
            parts[0] += f" ({fraction:.0%})"
        if self.bytes_per_s:
            parts.append(f"{size_text(self.bytes_per_s)}/s")
        if (left := self.seconds_left) is not None:
            parts.append(f"about {duration_text(left)} left")
        return ", ".join(parts)


def size_text(size: float) -> str:
    """Bytes in decimal units, as download tools and the hub's pages show them: ``3.4 GB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"


def duration_text(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``1 h 5 min``: rounded the way a countdown is read."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


ProgressCallback = Callable[[LoadProgress], None]


class Backend(Protocol):
    """A model engine. ``model`` arguments are names inside the engine (no ``ollama:`` prefix)."""

    prefix: str  # "ollama", "transformers": model ids are f"{prefix}:{name}"

    def models(self) -> list[str]:
        """Full model ids available now, e.g. ``["ollama:qwen3:1.7b"]``."""
        ...

    def health(self) -> dict[str, Any]:
        """A small JSON-able report: reachable/loaded, version, device, errors."""
        ...

    def context_window(self, model: str) -> int:
        """How many tokens the prompt and the reply may use together (may load the model)."""
        ...

    def known_context_window(self, model: str) -> int | None:
        """The context window if it is known without loading a model, else None.

        May ask a server (a network call): callers never hold a lock around it.
        """
        ...

    def prepare(
        self,
        model: str,
        on_progress: ProgressCallback | None = None,
        *,
        cancel: threading.Event | None = None,
        download: bool = True,
    ) -> None:
        """Make ``model`` ready to stream: a local model is loaded (reporting each phase to
        ``on_progress``); a server's models need nothing. Called in the reply's thread; returns
        soon after ``cancel`` is set (Stop during a first load), leaving nothing half loaded. With
        ``download`` False a model not on this machine yet is not fetched: ``ModelNotDownloaded``."""
        ...

    def count_tokens(self, model: str, messages: Sequence[Message], *, think: bool = False) -> int:
        """Prompt tokens of ``messages`` as this engine would send them (exact or estimated)."""
        ...

    def stream(self, model: str, messages: Sequence[Message], params: GenerationParams) -> ReplyStream:
        """Start generating a reply to ``messages``; nothing blocks until iterated."""
        ...


class ReplyStream(ABC):
    """One reply being generated. Iterate it once; ``text``/``thinking`` grow as it streams.

    Subclasses implement ``_generate``: a generator yielding ``Chunk``s and
    returning the final ``GenerationStats``, which checks ``self.cancelled``
    (and may override ``_on_cancel`` to interrupt a blocking read at once).
    """

    def __init__(
        self, prefix: str, model: str, messages: Sequence[Message], params: GenerationParams
    ) -> None:
        self.model_id = f"{prefix}:{model}"
        self._model = model  # the name inside the engine
        self._messages = list(messages)
        self._params = params
        self.stats: GenerationStats | None = None
        self.error: BackendError | None = None
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._started = time.perf_counter()
        self._first_chunk_at: float | None = None
        self._iterated = False

    # -- what callers use ------------------------------------------------------------------

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def thinking(self) -> str:
        return "".join(self._thinking)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop generating as soon as possible; what streamed so far is kept. Any thread."""
        if not self._cancel.is_set():
            self._cancel.set()
            self._on_cancel()

    def wait(self) -> ReplyStream:
        """Consume the rest of the stream (raising its error, if any); returns ``self``."""
        if not self._iterated:
            for _ in self:
                pass
        else:
            self._done.wait()
            if self.error is not None:
                raise self.error
        return self

    def __iter__(self) -> Iterator[Chunk]:
        if self._iterated:
            raise RuntimeError("A reply stream can be iterated only once; read .text afterwards.")
        self._iterated = True
        generator = self._generate()
        try:
            stats = yield from self._accumulate(generator)
            self.stats = self._complete(stats)
        except BackendError as exc:
            exc.partial_text, exc.partial_thinking = self.text, self.thinking
            self.error = exc
            self.stats = self._complete(GenerationStats("error", error=str(exc)))
            raise
        finally:
            generator.close()
            self._done.set()

    # -- for subclasses --------------------------------------------------------------------

    @abstractmethod
    def _generate(self) -> Generator[Chunk, None, GenerationStats]:
        """Yield chunks; return the stats. Raise ``BackendError`` subclasses on failure."""

    def _on_cancel(self) -> None:  # noqa: B027 - optional hook, doing nothing is a fine default
        """Interrupt a blocking read (close a response, set a stopping flag). Any thread."""

    # -- internals -------------------------------------------------------------------------

    def _accumulate(
        self, generator: Generator[Chunk, None, GenerationStats]
    ) -> Generator[Chunk, None, GenerationStats]:
        text, thinking = self._text.append, self._thinking.append
        while True:
            try:
                chunk = next(generator)
            except StopIteration as stop:
                return stop.value
            if not chunk.text:
                continue
            if self._first_chunk_at is None:
                self._first_chunk_at = time.perf_counter()
            (text if chunk.kind == "text" else thinking)(chunk.text)
            yield chunk

    def _complete(self, stats: GenerationStats) -> GenerationStats:
        """Fill in what the engine did not report, from this side's clock."""
        now = time.perf_counter()
        if self.cancelled and stats.finish_reason != "error":
            stats = replace(stats, finish_reason="cancelled")
        if stats.duration_s is None:
            stats = replace(stats, duration_s=now - self._started)
        if stats.ttft_s is None and self._first_chunk_at is not None:
            stats = replace(stats, ttft_s=self._first_chunk_at - self._started)
        if stats.tokens_per_s is None and stats.completion_tokens and self._first_chunk_at is not None:
            generating = now - self._first_chunk_at
            if generating > 0:
                stats = replace(stats, tokens_per_s=stats.completion_tokens / generating)
        return stats
