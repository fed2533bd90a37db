"""One saved message as the panel shows it, with the tools that act on its branch under it:
‹ 2 / 3 › among its alternatives, *Edit* on a question (an inline editor that resends it as a
new branch), *Regenerate* on the conversation's last reply (``branch_bar``).

A question is one widget (its text and its tools, drawn by the page); a reply is its Markdown
(Jupyter's own renderer) with a bar under it once it has tools to show. A message keeps
its view while shown: ``set_tools`` changes the bar, never the message, so its Markdown is not
sent to the browser again when a later message arrives.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import ipywidgets as widgets

from nbchat.panel.branch_bar import BranchBar
from nbchat.panel.kit import classed, markdown_output
from nbchat.render import alternatives_counter, context_html, message_markdown
from nbchat.types import Message


def _nothing(*_args: object) -> bool:
    return False


@dataclass(frozen=True)
class BranchActions:
    """What the tools report: ``switch(message_id)`` shows the branch through that alternative,
    ``edit(message_id, text)`` resends a question changed (True when accepted: the editor closes;
    False leaves it open to fix what the status line says), ``regenerate()`` answers the last
    question again."""

    switch: Callable[[str], object] = _nothing
    edit: Callable[[str, str], bool] = _nothing
    regenerate: Callable[[], object] = _nothing


@runtime_checkable
class MessageView(Protocol):
    """What the message list asks of a shown message."""

    message: Message

    def set_tools(self, alternatives: Sequence[str], *, last_reply: bool) -> None:
        """Show the tools for the message's place now: ``alternatives`` are the ids of it and its
        siblings, oldest first; ``last_reply`` whether it ends the path (Regenerate)."""


class _Tools:
    """Where a message stands among its alternatives, and what the bar reports for it."""

    def __init__(self, message: Message, actions: BranchActions) -> None:
        self.message, self.actions = message, actions
        self.alternatives: tuple[str, ...] = (message.id,)

    def place(self, bar: BranchBar, alternatives: Sequence[str]) -> None:
        self.alternatives = tuple(alternatives) or (self.message.id,)
        ids = self.alternatives
        position = ids.index(self.message.id) + 1 if self.message.id in ids else 1
        with bar.hold_sync():
            bar.position, bar.total = position, len(ids)
            bar.counter = alternatives_counter(position, len(ids)) if len(ids) > 1 else ""

    def switch(self, step: int) -> None:
        ids = self.alternatives
        index = ids.index(self.message.id) + step if self.message.id in ids else -1
        if 0 <= index < len(ids):
            self.actions.switch(ids[index])


class QuestionView(BranchBar):
    """A question: escaped text, what it attached (folded), then ‹ › and *Edit*; *Edit* swaps
    the bar for an editor holding the question, whose *Send* starts a branch there."""

    def __init__(self, message: Message, actions: BranchActions) -> None:
        role = "You" if message.role == "user" else message.role.capitalize()
        super().__init__(
            value=f"<div class='nbchat-role'>{role}</div>"
            f"<div class='nbchat-bubble'>{html.escape(message.content)}</div>"
            + context_html(message.context),
            message_id=message.id,
            text=message.content,
            editable=True,
        )
        classed(self, "nbchat-message", f"nbchat-message-{message.role}")
        self.message = message
        self._tools = _Tools(message, actions)
        self.on_switch = self._tools.switch
        self.on_send = self._resend
        self.on_regenerate = actions.regenerate

    def set_tools(self, alternatives: Sequence[str], *, last_reply: bool) -> None:
        # A question that ends the path has no answer (its kernel died before a word of it was
        # saved, or saving failed): Regenerate answers it.
        self.can_regenerate = last_reply
        self._tools.place(self, alternatives)

    def _resend(self, text: str) -> None:
        if self._tools.actions.edit(self.message.id, text):
            self.editing = False


class ReplyView(widgets.Output):
    """A saved reply: its Markdown (thinking folded, how it ended) and, once it has something to
    show (‹ › or *Regenerate*), its bar (``tools``) as a second output under it: no box around
    the two, so a reply is as few widgets as before it had tools.

    The bar is no child of the reply: whoever closes a reply closes ``tools`` too (``parts``).
    """

    def __init__(self, message: Message, actions: BranchActions) -> None:
        super().__init__()
        classed(self, "nbchat-message", f"nbchat-message-{message.role}", f"nbchat-msg-{message.id}")
        self.message = message
        self.tools: BranchBar | None = None
        self._tools = _Tools(message, actions)
        self._markdown = markdown_output(message_markdown(message))
        self.outputs = self._markdown

    def set_tools(self, alternatives: Sequence[str], *, last_reply: bool) -> None:
        if self.tools is None:
            if len(alternatives) < 2 and not last_reply:
                return
            self.tools = BranchBar()
            self.tools.on_switch = self._tools.switch
            self.tools.on_regenerate = self._tools.actions.regenerate
            self.outputs = (*self._markdown, _widget_output(self.tools))
        self.tools.can_regenerate = last_reply  # no longer last: the page hides an empty bar
        self._tools.place(self.tools, alternatives)


def _widget_output(widget: widgets.Widget) -> dict[str, Any]:
    """An output that shows ``widget`` (as ``display(widget)`` inside an Output widget would)."""
    return {
        "output_type": "display_data",
        "data": {
            "application/vnd.jupyter.widget-view+json": {
                "model_id": widget.model_id,
                "version_major": 2,
                "version_minor": 0,
            },
            "text/plain": repr(widget),
        },
        "metadata": {},
    }


def parts(view: widgets.Widget) -> tuple[widgets.Widget, ...]:
    """A shown message's widgets to close with it: itself and a reply's bar (shown inside it)."""
    tools = getattr(view, "tools", None)
    return (view,) if tools is None else (view, tools)


def message_view(message: Message, actions: BranchActions | None = None) -> QuestionView | ReplyView:
    """One saved message as shown: a reply as Markdown; a question as escaped text, its context folded."""
    actions = actions or BranchActions()
    return ReplyView(message, actions) if message.role == "assistant" else QuestionView(message, actions)
