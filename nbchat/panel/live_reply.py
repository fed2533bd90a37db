"""The reply streaming now: its own widget, redrawn at a bounded rate by a thread of its own."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable

import ipywidgets as widgets

from nbchat.panel.kit import classed, close_widgets, error_html, markdown_output
from nbchat.render import context_facts, reply_markdown, token_facts
from nbchat.reply import Reply

#: At most about 12 redraws a second while a reply streams (not once per token).
REDRAW_INTERVAL_S = 0.08


class LiveReply:
    """Follows one reply until it ends or ``stop()``; after ``stop()`` it calls nothing back.

    ``on_status(html)`` hears what happens before the first token (a local
    model loading), then how full the context is once that is known;
    ``on_end(reply)`` is called once, from the redraw thread, when the reply
    has ended and its final form is drawn.
    """

    def __init__(
        self, reply: Reply, *, on_status: Callable[[str], None], on_end: Callable[[Reply], None]
    ) -> None:
        self.reply = reply
        self._on_status, self._on_end = on_status, on_end
        self._stop = threading.Event()
        self.output = classed(
            widgets.Output(), "nbchat-message", "nbchat-message-assistant", "nbchat-streaming"
        )
        self.output.outputs = markdown_output("…")
        threading.Thread(target=self._redraw, name="nbchat-panel-redraw", daemon=True).start()

    def stop(self) -> None:
        """Stop redrawing (the reply itself goes on); the thread ends within one interval."""
        self._stop.set()

    def close(self) -> None:
        self.stop()
        close_widgets(self.output)

    def _redraw(self) -> None:
        reply, shown, said, sized = self.reply, "", "", False
        while not reply.join(REDRAW_INTERVAL_S):
            if self._stop.is_set():
                return
            text = reply_markdown(reply)
            if text != shown and text.strip():
                self.output.outputs = markdown_output(text)
                shown = text
            waiting = reply.waiting_for_turn and not reply.text  # another reply has the local model
            if not sized and reply.context_window is not None:  # the prompt is fitted: say how full
                self._on_status(generating_status(reply))
                sized, said = True, ""
            elif sized and waiting and reply.status != said:
                self._on_status(f"{generating_status(reply)} · {html.escape(reply.status)}")
                said = reply.status
            elif sized and said and not waiting:  # its turn came: back to how full the context is
                self._on_status(generating_status(reply))
                said = ""
            elif not sized and reply.status and reply.status != said:  # loading a local model: how far
                self._on_status(html.escape(reply.status))
                said = reply.status
        if self._stop.is_set():
            return
        self.output.outputs = markdown_output(reply_markdown(reply))
        self._on_end(reply)


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
