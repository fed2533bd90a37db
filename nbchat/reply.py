"""A reply as the session hands it out: generated in the background, saved when it ends.

``ChatSession.send`` returns a ``Reply`` at once. A daemon thread prepares the
prompt (which may load a local model), streams the engine's reply and saves it
to the conversation, whoever is watching: the kernel's main thread stays free,
so a panel's Stop button (a widget event, handled on the main thread) works
while tokens arrive, and a reply nobody iterates is still saved. Any number of
readers can iterate a ``Reply`` (the magic in a cell, the panel, user code);
each sees every chunk from the first.

A reply ends exactly once: when its stream ends, or at the latest
``CANCEL_GRACE_S`` after ``cancel()`` even if the engine has not answered
(a server still loading a model, a frozen process). What streamed by then is
what is saved; anything the engine sends later is dropped.

While it streams, the text that arrived is saved as a draft every
``DRAFT_INTERVAL_S`` (appended to the conversation file), so a kernel that
dies mid-reply loses at most the last second or two of it; the saved message
replaces the drafts when the reply ends.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nbchat.errors import GenerationFailed, NbchatError, StoreError
from nbchat.types import (
    MAX_MODEL_ID_CHARS,
    MAX_STAT_TEXT_CHARS,
    Chunk,
    GenerationStats,
    Message,
    new_id,
    utcnow,
)

if TYPE_CHECKING:
    from nbchat.backends.base import LoadProgress, ReplyStream

Listener = Callable[["Reply"], None]
Start = Callable[["Reply"], "ReplyStream | None"]  # None: stopped before there was anything to stream
Save = Callable[["Reply"], "Message | None"]
Draft = Callable[["Reply", str, str], None]  # (reply, text since the last draft, thinking since)

#: After ``cancel()``, the reply ends by this time whether or not the engine has let go.
CANCEL_GRACE_S = 1.0
#: While a reply streams, its new text is saved as a draft this often, so a dead kernel loses
#: at most this much (plus one write) of it.
DRAFT_INTERVAL_S = 1.0

_log = logging.getLogger(__name__)


class Reply:
    """One assistant reply: ``text``, ``thinking`` and ``stats`` grow while it streams.

    Iterate it for ``Chunk``s, or call ``wait()``; ``cancel()`` (or the
    session's ``stop()``) stops it from any thread and keeps what streamed.
    ``message`` is the saved assistant ``Message`` once it is done (``None``
    if nothing was saved: stopped before the first token, or saving failed).
    ``error`` holds the ``NbchatError`` that ended it, if any; when the reply
    could not be saved (a full disk), ``save_error`` holds that ``StoreError``
    (and ``error`` too, unless the reply had already failed) while the text
    stays here; ``wait()`` and iteration raise ``error``.

    Once done, a reply holds only its own question (``prompt``), its text and
    its saved message: never the conversation it was part of.
    """

    def __init__(
        self,
        conversation_id: str,
        model: str,
        prompt: Message,
        start: Start,
        save: Save,
        draft: Draft | None = None,
    ) -> None:
        self.conversation_id = conversation_id
        self.model = model
        self.prompt = prompt  # the user message this answers, already saved
        self.message_id = new_id()  # its saved message's id, known from the start (drafts use it)
        self.started = utcnow()
        self.stats: GenerationStats | None = None
        self.error: NbchatError | None = None
        self.message: Message | None = None
        self.dropped_messages = 0  # older messages left out so the prompt fits the context
        self.context_window: int | None = None  # the model's, once known (the reply has started)
        self.prompt_tokens: int | None = None  # what the prompt sent takes of it (the engine's count)
        self.status = ""  # what happens before the first token (loading a local model), for views
        self.waiting_for_turn = False  # a local model is busy with another reply: this one waits
        self.download: LoadProgress | None = None  # the model's download, while one runs (views draw a bar)
        self.save_error: NbchatError | None = None  # why the reply is not on disk, if saving failed
        self._start: Start | None = start
        self._save: Save | None = save
        self._draft: Draft | None = draft
        self._drafting = threading.Lock()  # held while a draft is written; the end waits for it
        self._drafted = (0, 0)  # how many characters of text and thinking the drafts hold
        self._chunks: list[Chunk] = []  # the one record of what streamed; text/thinking derive from it
        self._stream: ReplyStream | None = None
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._ending = threading.Lock()  # whoever takes it first ends the reply
        self._ended = False
        self._changed = threading.Condition()
        self._listeners: list[Listener] = []
        self._thread = threading.Thread(target=self._run, name="nbchat-reply", daemon=True)

    def _begin(self) -> Reply:
        self._thread.start()
        if self._draft is not None:
            threading.Thread(target=self._keep_drafting, name="nbchat-reply-drafts", daemon=True).start()
        return self

    # -- reading -----------------------------------------------------------------------------

    @property
    def text(self) -> str:
        with self._changed:
            return "".join(c.text for c in self._chunks if c.kind == "text")

    @property
    def thinking(self) -> str:
        with self._changed:
            return "".join(c.text for c in self._chunks if c.kind == "thinking")

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def cancel_event(self) -> threading.Event:
        """Set once the reply is cancelled: for long waits before streaming (loading a model)."""
        return self._cancelled

    @property
    def partial(self) -> bool:
        """Stopped or failed part-way: the text is what arrived before that."""
        return self.stats is not None and self.stats.finish_reason in ("cancelled", "error")

    @property
    def saved(self) -> bool:
        """True once the reply is in the conversation file."""
        return self.message is not None

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

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling ``listener`` (a closed view); unknown listeners are ignored."""
        with self._changed:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def set_status(self, status: str, download: LoadProgress | None = None) -> None:
        """Say what is happening before the first token; listeners hear of it (any thread).

        ``download`` is the model's download step while one runs (None once it is over).
        """
        with self._changed:
            if self._ended:
                return
            self.status = status
            self.download = download
            self._changed.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            _call(listener, self)

    # -- control -----------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop generating; the reply ends (saving what streamed) within ``CANCEL_GRACE_S``."""
        if self._done.is_set() or self._cancelled.is_set():
            return
        self._cancelled.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        timer = threading.Timer(CANCEL_GRACE_S, self.end_now)
        timer.daemon = True
        timer.name = "nbchat-reply-cancel"
        timer.start()

    def end_now(self) -> None:
        """End a cancelled reply at once with what has streamed, whatever the engine is doing.

        The engine's late chunks (if it ever answers) are dropped. A no-op once the reply is done.
        """
        stream = self._stream
        stats = stream.stats if stream is not None else None
        self._end(replace(stats, finish_reason="cancelled") if stats else GenerationStats("cancelled"))

    # -- the reply's thread ------------------------------------------------------------------

    def _run(self) -> None:
        error: NbchatError | None = None
        stream: ReplyStream | None = None
        try:
            start = self._start
            if start is None or self._ended:
                return
            stream = start(self)
            if stream is None:
                self._end(GenerationStats("cancelled"))
                return
            with self._changed:
                ended = self._ended  # Stop ended the reply while it was being prepared
                if not ended:
                    self._stream = stream
            if ended or self._cancelled.is_set():
                stream.cancel()
            if ended:
                return
            for chunk in stream:
                if not self._add(chunk):
                    stream.cancel()  # the reply was ended without us: let the engine go
                    break
            stats = stream.stats
        except NbchatError as exc:
            error = exc
            stats = _stats_after(stream, str(exc))
        except Exception as exc:  # a bug or an engine's surprise: report it, keep the text
            error = GenerationFailed(f"The reply failed unexpectedly: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            stats = _stats_after(stream, str(error))
        if stats is not None and self._cancelled.is_set() and stats.finish_reason != "error":
            stats = replace(stats, finish_reason="cancelled")
        self._end(stats, error)

    def _add(self, chunk: Chunk) -> bool:
        """Record a chunk and tell the listeners; False if the reply has already ended."""
        with self._changed:
            if self._ended:
                return False
            self._chunks.append(chunk)
            self._changed.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            _call(listener, self)
        return True

    def _keep_drafting(self) -> None:
        """Every ``DRAFT_INTERVAL_S`` while streaming, save the text that arrived since (if any)."""
        while not self._done.wait(DRAFT_INTERVAL_S):
            with self._drafting:
                draft = self._draft
                if draft is None:
                    return
                with self._changed:
                    text = "".join(c.text for c in self._chunks if c.kind == "text")
                    thinking = "".join(c.text for c in self._chunks if c.kind == "thinking")
                done_text, done_thinking = self._drafted
                if len(text) == done_text and len(thinking) == done_thinking:
                    continue
                try:
                    draft(self, text[done_text:], thinking[done_thinking:])
                except Exception as exc:  # a draft is insurance: the reply goes on, the end saves it
                    _log.warning("An nbchat reply's draft was not saved: %s", exc)
                else:
                    self._drafted = (len(text), len(thinking))

    def _end(self, stats: GenerationStats | None, error: NbchatError | None = None) -> None:
        """Save and finish, exactly once, from whichever thread gets here first."""
        with self._ending:
            if self._ended:
                return
            with self._changed:
                self._ended = True  # from here on no chunk is added: what is saved is what is shown
                self.download = None
            with self._drafting:  # no draft after the saved message: readers see one reply
                self._draft = None
            self.stats, self.error = stats, error
            save = self._save
            try:
                self.message = save(self) if save is not None else None
            except NbchatError as exc:
                self._save_failed(exc)
            except OSError as exc:  # the store turns these into StoreError; never lose a reply silently
                self._save_failed(StoreError(f"The reply could not be saved: {exc}"))
            except Exception as exc:
                _log.exception("Saving an nbchat reply failed")
                self._save_failed(StoreError(f"The reply could not be saved: {type(exc).__name__}: {exc}"))
            finally:
                # A finished reply keeps its own text, never the history it was sent with.
                self._start = self._save = None
                self._stream = None
                with self._changed:
                    self._done.set()
                    self._changed.notify_all()
                    listeners = list(self._listeners)
                    self._listeners.clear()
        for listener in listeners:
            _call(listener, self)

    def _save_failed(self, exc: NbchatError) -> None:
        """Keep the text in memory and say why it is not on disk (``save_error``, and ``error``)."""
        _log.warning("An nbchat reply was not saved: %s", exc)
        self.message = None
        self.save_error = exc
        if self.error is None:
            self.error = exc

    # -- display -----------------------------------------------------------------------------

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def markdown(self) -> str:
        """The reply as Markdown: thinking folded away, then the text, then how it ended."""
        from nbchat.render import reply_markdown

        return reply_markdown(self)

    def __repr__(self) -> str:
        state = "done" if self.done else "streaming"
        reason = f", {self.stats.finish_reason}" if self.stats is not None else ""
        unsaved = ", NOT SAVED" if self.done and self.message is None and self.error is not None else ""
        return f"<Reply {self.model} {state}{reason}{unsaved}: {len(self.text)} chars>"


def _stats_after(stream: ReplyStream | None, error: str) -> GenerationStats:
    """The stream's own stats if it ended with them, else a bare error record."""
    if stream is not None and stream.stats is not None:
        return stream.stats
    return GenerationStats("error", error=error)


def stats_record(reply: Reply, scrub: Callable[[str], str] = lambda text: text) -> dict[str, Any]:
    """What a saved assistant message keeps about how it was made: only values that can be saved.

    A statistic an engine reported oddly (a list, NaN, an overflowing number) is dropped rather
    than costing the reply; error texts pass through ``scrub`` (which removes secrets) and are
    cut to the stat size limit.
    """
    record: dict[str, Any] = reply.stats.to_dict() if reply.stats is not None else {}
    if reply.partial:
        record["partial"] = True
    if reply.dropped_messages:
        record["dropped_messages"] = reply.dropped_messages
    if reply.error is not None:
        record["error"] = str(reply.error)
    return clean_stats(record, scrub)


def clean_stats(record: dict[str, Any], scrub: Callable[[str], str] = lambda text: text) -> dict[str, Any]:
    """Keep finite numbers, booleans and (scrubbed, bounded) text; drop anything else."""
    clean: dict[str, Any] = {}
    for key, value in record.items():
        if not isinstance(key, str) or not key or len(key) > MAX_MODEL_ID_CHARS or not key.isprintable():
            continue
        if isinstance(value, bool) or value is None:
            clean[key] = value
        elif isinstance(value, int):
            if abs(value) < 2**53:  # what every JSON reader takes exactly
                clean[key] = value
        elif isinstance(value, float):
            if math.isfinite(value):
                clean[key] = value
        elif isinstance(value, str):
            text = scrub(value)
            if len(text) > MAX_STAT_TEXT_CHARS:
                text = text[: MAX_STAT_TEXT_CHARS - 1] + "…"
            clean[key] = text.encode("utf-8", "replace").decode("utf-8")
    return clean


def _call(listener: Listener, reply: Reply) -> None:
    try:
        listener(reply)
    except Exception:  # see subscribe(): a view's bug never costs the reply
        _log.exception("An nbchat reply listener failed")
