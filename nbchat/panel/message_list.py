"""The messages of the conversation shown: the user's as escaped text, the assistant's as Markdown."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import ipywidgets as widgets

from nbchat.panel.kit import classed, close_widgets, markdown_output
from nbchat.render import message_markdown
from nbchat.types import Message


class MessageList:
    """Saved messages, a reply that could not be saved after the question it answers, then the
    reply streaming now. A message keeps its widget while shown; one no longer shown is closed."""

    def __init__(self) -> None:
        self.view = classed(widgets.VBox(), "nbchat-messages")
        self._shown: dict[str, widgets.Widget] = {}  # by message id ("unsaved:" + question id)

    def show(
        self,
        messages: Sequence[Message],
        *,
        unsaved: Mapping[str, str] | None = None,
        live: widgets.Widget | None = None,
    ) -> None:
        """``unsaved`` maps a question's message id to the Markdown of its unsaved reply;
        ``live`` (the streaming reply's widget) belongs to whoever follows the reply."""
        unsaved = dict(unsaved or {})
        kept: dict[str, widgets.Widget] = {}
        children: list[widgets.Widget] = []

        def place(key: str, make: str | Message) -> None:
            if key in kept:  # the same id twice (a hand-edited file): each shown once, apart
                key = f"{key}#{len(children)}"
            widget = self._shown.get(key)
            if widget is None:
                widget = _widget(make)
            kept[key] = widget
            children.append(widget)

        for message in messages:
            place(message.id, message)
            if message.id in unsaved:
                place(f"unsaved:{message.id}", unsaved.pop(message.id))
        for question_id, markdown in unsaved.items():  # its question is not shown: at the end
            place(f"unsaved:{question_id}", markdown)
        if live is not None:
            children.append(live)
        dropped = [widget for key, widget in self._shown.items() if kept.get(key) is not widget]
        self._shown = kept
        if tuple(children) != self.view.children:
            self.view.children = tuple(children)
        close_widgets(*dropped)

    def clear(self) -> None:
        self.show(())

    def close(self) -> None:
        close_widgets(self.view)


def _widget(item: str | Message) -> widgets.Widget:
    if isinstance(item, str):  # a reply kept in memory only: its text, its error, marked unsaved
        output = classed(
            widgets.Output(), "nbchat-message", "nbchat-message-assistant", "nbchat-unsaved"
        )
        output.outputs = markdown_output(item)
        return output
    return message_widget(item)


def message_widget(message: Message) -> widgets.Widget:
    if message.role == "assistant":
        output = classed(widgets.Output(), "nbchat-message", "nbchat-message-assistant")
        output.outputs = markdown_output(message_markdown(message))
        return output
    role = "You" if message.role == "user" else message.role.capitalize()
    body = html.escape(message.content)
    return classed(
        widgets.HTML(f"<div class='nbchat-role'>{role}</div><div class='nbchat-bubble'>{body}</div>"),
        "nbchat-message",
        f"nbchat-message-{message.role}",
    )
