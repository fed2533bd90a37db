"""The reply streaming now: its own widget, redrawn at a bounded rate by a thread of its own."""

from __future__ import annotations

import html
import math
import threading
import time
from collections.abc import Callable

import ipywidgets as widgets

from nbchat.backends.base import LoadProgress
from nbchat.panel.download_bar import DOWNLOAD_REDRAW_INTERVAL_S
from nbchat.panel.kit import classed, close_widgets, error_html, markdown_output
from nbchat.render import context_facts, download_markdown, reply_markdown, token_facts
from nbchat.reply import Reply

#: At most about 12 redraws a second while a reply streams (not once per token).
REDRAW_INTERVAL_S = 0.08


class LiveReply:
    """Follows one reply until it ends or ``stop()``; after ``stop()`` it calls nothing back.

    ``on_status(html)`` hears what happens before the first token (a local
    model loading), then how full the context is once that is known;
    ``on_download(step)`` hears a model's download steps (at most every
    ``DOWNLOAD_REDRAW_INTERVAL_S``), then None once it is over (or the view
    stops); ``on_end(reply)`` is called once, from the redraw thread, when the
    reply has ended and its final form is drawn.
    """

    def __init__(
        self,
        reply: Reply,
        *,
        on_status: Callable[[str], None],
        on_end: Callable[[Reply], None],
        on_download: Callable[[LoadProgress | None], None] | None = None,
    ) -> None:
        self.reply = reply
        self._on_status, self._on_end = on_status, on_end
        self._on_download = on_download or (lambda _step: None)
        self._stop = threading.Event()
        self._drawing = threading.Lock()  # one redraw at a time: stop() never races a bar being shown
        self._bar_shown = False
        self._shown = ""  # the Markdown the output shows
        self.output = classed(
            widgets.Output(), "nbchat-message", "nbchat-message-assistant", "nbchat-streaming"
        )
        self.output.outputs = markdown_output("…")
        threading.Thread(target=self._redraw, name="nbchat-panel-redraw", daemon=True).start()

    def stop(self) -> None:
        """Stop redrawing (the reply itself goes on) and take a download bar away."""
        with self._drawing:
            self._stop.set()
            self._hide_bar()

    def close(self) -> None:
        self.stop()
        close_widgets(self.output)

    def _redraw(self) -> None:
        reply, said, sized = self.reply, "", False
        downloaded_at = -math.inf
        while not reply.join(REDRAW_INTERVAL_S):
            with self._drawing:
                if self._stop.is_set():
                    return
                download = reply.download
                if download is not None:  # the hub reports often: draw a few times a second at most
                    if time.monotonic() - downloaded_at >= DOWNLOAD_REDRAW_INTERVAL_S:
                        downloaded_at = time.monotonic()
                        self._bar_shown = True
                        self._on_download(download)
                        said = self._say_changed(reply.status, said)
                        self._draw_text(download_markdown(reply.model))
                    continue
                self._hide_bar()
                self._draw_text()
                waiting = reply.waiting_for_turn and not reply.text  # another reply has the local model
                if not sized and reply.context_window is not None:  # the prompt is fitted: say how full
                    self._on_status(generating_status(reply))
                    sized, said = True, ""
                elif sized and waiting and reply.status != said:
                    self._on_status(f"{generating_status(reply)} · {html.escape(reply.status)}")
                    said = reply.status
                elif sized and said and not waiting:  # its turn came, or the download is over
                    self._on_status(generating_status(reply))
                    said = ""
                elif not sized:  # loading a local model: how far
                    said = self._say_changed(reply.status, said)
        with self._drawing:
            if self._stop.is_set():
                return
            self._hide_bar()
            self.output.outputs = markdown_output(reply_markdown(reply))
        self._on_end(reply)

    def _draw_text(self, text: str | None = None) -> None:
        """Show ``text`` (by default the reply as far as it has come) unless it is shown already."""
        text = reply_markdown(self.reply) if text is None else text
        if text != self._shown and text.strip():
            self.output.outputs = markdown_output(text)
            self._shown = text

    def _say_changed(self, status: str, said: str) -> str:
        """Put ``status`` on the status line if it is new; what the line says now."""
        if status and status != said:
            self._on_status(html.escape(status))
            return status
        return said

    def _hide_bar(self) -> None:
        if self._bar_shown:
            self._bar_shown = False
            self._on_download(None)


def generating_status(reply: Reply) -> str:
    """The status line while ``reply`` streams (a local model can take a minute to load first),
    with how full the context is once the prompt has been fitted into it."""
    generating = f"Generating with <code>{html.escape(reply.model)}</code>…"
    facts = context_facts(reply)
    if facts:
        return " · ".join([generating, *map(html.escape, facts)])
    local = reply.model == "qwen3" or reply.model.startswith("transformers:")
    first_use = " (the local model loads on first use: this can take a minute)" if local else ""
    return generating + first_use


def ended_status(reply: Reply) -> str:
    """The status line once ``reply`` has ended: its error and whether it was saved, or its facts."""
    if reply.save_error is not None:
        failed = f"{reply.error}. " if reply.error is not None and reply.error is not reply.save_error else ""
        return error_html(
            f"{failed}This reply was not saved: {reply.save_error} "
            "Its text stays in this panel until you log out: copy what you need."
        )
    if reply.error is not None:
        return error_html(str(reply.error))
    parts = [f"<code>{html.escape(reply.model)}</code>"]
    if reply.stats is not None and reply.stats.finish_reason == "cancelled":
        parts.append("stopped")
    facts = [*(token_facts(reply.stats) if reply.stats is not None else ()), *context_facts(reply)]
    parts.extend(html.escape(fact) for fact in facts)
    return " · ".join(parts)


def unsaved(reply: Reply) -> bool:
    """Ended with text or an error that is only in memory: saving it failed."""
    return reply.done and reply.message is None and reply.save_error is not None
