"""A reply as the session hands it out: generated in the background, saved when it ends.

``ChatSession.send`` returns a ``Reply`` at once. A daemon thread prepares the
prompt (which may load a local model), streams the engine's reply and saves it
to the conversation, whoever is watching: the kernel's main thread stays free,
so a panel's Stop button (a widget event, handled on the main thread) works
while tokens arrive, and a reply nobody iterates is still saved. Any number of
readers can iterate a ``Reply`` (the magic in a cell, the panel, user code);
each sees every chunk from the first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nbchat.errors import GenerationFailed, NbchatError
from nbchat.types import Chunk, GenerationStats, Message

if TYPE_CHECKING:
    from nbchat.backends.base import ReplyStream

Listener = Callable[["Reply"], None]

_log = logging.getLogger(__name__)


class Reply:
    """One assistant reply: ``text``, ``thinking`` and ``stats`` grow while it streams.

    Iterate it for ``Chunk``s, or call ``wait()``; ``cancel()`` (or the
    session's ``stop()``) stops it from any thread and keeps what streamed.
    ``message`` is the saved assistant ``Message`` once it is done (``None``
    if nothing was saved: stopped before the first token). ``error`` holds
    the ``NbchatError`` that ended it, if any; ``wait()`` and iteration raise it.
    """

    def __init__(
        self,
        conversation_id: str,
        model: str,
        prompt: Message,
        start: Callable[[Reply], ReplyStream],
        save: Callable[[Reply], Message | None],
    ) -> None:
        self.conversation_id = conversation_id
        self.model = model
        self.prompt = prompt  # the user message this answers, already saved
        self.stats: GenerationStats | None = None
        self.error: NbchatError | None = None
        self.message: Message | None = None
        self.dropped_messages = 0  # older messages left out so the prompt fits the context
        self.status = ""  # what happens before the first token (loading a local model), for views
        self._start = start
        self._save = save
        self._chunks: list[Chunk] = []
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._stream: ReplyStream | None = None
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._changed = threading.Condition()
        self._listeners: list[Listener] = []
        self._thread = threading.Thread(target=self._run, name="nbchat-reply", daemon=True)

    def _begin(self) -> Reply:
        self._thread.start()
        return self

    # -- reading -----------------------------------------------------------------------------

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def thinking(self) -> str:
        return "".join(self._thinking)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def partial(self) -> bool:
        """Stopped or failed part-way: the text is what arrived before that."""
        return self.stats is not None and self.stats.finish_reason in ("cancelled", "error")

    def __iter__(self) -> Iterator[Chunk]:
        """Every chunk from the first, as it arrives; raises the reply's error at the end."""
        seen = 0
        while True:
            with self._changed:
                while seen == len(self._chunks) and not self._done.is_set():
                    self._changed.wait()
                fresh = self._chunks[seen:]
                finished = self._done.is_set() and seen + len(fresh) == len(self._chunks)
            seen += len(fresh)
            yield from fresh
            if finished:
                break
        if self.error is not None:
            raise self.error

    def wait(self, timeout: float | None = None) -> Reply:
        """Block until the reply is generated and saved; raises its error, if it ended in one."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"The reply was still streaming after {timeout} s.")
        if self.error is not None:
            raise self.error
        return self

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end without raising its error; True if it ended within ``timeout``."""
        return self._done.wait(timeout)

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(reply)`` after every chunk and once at the end (from the reply's thread).

        A listener added after the end is called once, at once. A listener's own
        exceptions are swallowed: a broken view must not lose the reply.
        """
        with self._changed:
            finished = self._done.is_set()
            if not finished:
                self._listeners.append(listener)
        if finished:
            _call(listener, self)

    def set_status(self, status: str) -> None:
        """Say what is happening before the first token; listeners hear of it (any thread)."""
        with self._changed:
            self.status = status
            self._changed.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            _call(listener, self)

    # -- control -----------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop generating as soon as possible; what streamed so far is kept and saved."""
        self._cancelled.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()

    # -- the reply's thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            stream = self._start(self)
            self._stream = stream
            if self._cancelled.is_set():
                stream.cancel()
            for chunk in stream:
                self._add(chunk)
            self.stats = stream.stats
        except NbchatError as exc:
            self.error = exc
            self.stats = _stats_after(self._stream, "error", str(exc))
        except Exception as exc:  # a bug or an engine's surprise: report it, keep the text
            self.error = GenerationFailed(f"The reply failed unexpectedly: {type(exc).__name__}: {exc}")
            self.error.__cause__ = exc
            self.stats = _stats_after(self._stream, "error", str(self.error))
        if self.stats is not None and self._cancelled.is_set() and self.stats.finish_reason != "error":
            self.stats = replace(self.stats, finish_reason="cancelled")
        try:
            self.message = self._save(self)
        except NbchatError as exc:
            self.error = self.error or exc
        finally:
            with self._changed:
                self._done.set()
                self._changed.notify_all()
                listeners = list(self._listeners)
                self._listeners.clear()
            for listener in listeners:
                _call(listener, self)

    def _add(self, chunk: Chunk) -> None:
        with self._changed:
            self._chunks.append(chunk)
            (self._text if chunk.kind == "text" else self._thinking).append(chunk.text)
            self._changed.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            _call(listener, self)

    # -- display -----------------------------------------------------------------------------

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def markdown(self) -> str:
        """The reply as Markdown: thinking folded away, then the text, then how it ended."""
        parts = []
        if self.thinking.strip():
            parts.append(f"<details><summary>Thinking</summary>\n\n{self.thinking.strip()}\n\n</details>\n")
        if not self.done and not self.text and not self.thinking and self.status:
            return f"*{self.status}*"
        parts.append(self.text)
        if self.done:
            if self.error is not None:
                parts.append(f"\n\n**Error:** {self.error}")
            elif self.stats is not None and self.stats.finish_reason == "cancelled":
                parts.append("\n\n*(stopped)*")
            elif self.stats is not None and self.stats.finish_reason == "length":
                parts.append("\n\n*(cut off at max new tokens)*")
        return "".join(parts)

    def __repr__(self) -> str:
        state = "done" if self.done else "streaming"
        reason = f", {self.stats.finish_reason}" if self.stats is not None else ""
        return f"<Reply {self.model} {state}{reason}: {len(self.text)} chars>"


def _stats_after(stream: ReplyStream | None, reason: str, error: str) -> GenerationStats:
    """The stream's own stats if it ended with them, else a bare error record."""
    if stream is not None and stream.stats is not None:
        return stream.stats
    return GenerationStats(reason, error=error)  # type: ignore[arg-type]


def stats_record(reply: Reply) -> dict[str, Any]:
    """What a saved assistant message keeps about how it was made."""
    record: dict[str, Any] = reply.stats.to_dict() if reply.stats is not None else {}
    if reply.partial:
        record["partial"] = True
    if reply.dropped_messages:
        record["dropped_messages"] = reply.dropped_messages
    if reply.error is not None:
        record["error"] = str(reply.error)
    return record


def _call(listener: Listener, reply: Reply) -> None:
    try:
        listener(reply)
    except Exception:  # see subscribe(): a view's bug never costs the reply
        _log.exception("An nbchat reply listener failed")
