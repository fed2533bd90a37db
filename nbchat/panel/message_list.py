"""The messages of the conversation shown: the user's as escaped text with what it attached (folded),
the assistant's as Markdown followed by Copy/Insert/Run for each code block it holds."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets

from nbchat.notebook import CodeBlock
from nbchat.panel.code_actions import code_actions
from nbchat.panel.follow_newest import FollowNewest
from nbchat.panel.kit import classed, close_widgets, markdown_output
from nbchat.render import context_html, message_markdown
from nbchat.types import Message


def _ignore(_block: CodeBlock) -> None:
    return None


class MessageList:
    """Saved messages, a reply that could not be saved after the question it answers, then the
    reply streaming now. A message keeps its widgets while shown; one no longer shown is closed.
    ``rows`` are the list and, under it, its scroll keeper (the browser follows the newest text).

    ``on_insert(block)`` and ``on_run(block)`` hear a code block's Insert and Run;
    ``on_copied(ok)`` hears that the browser copied one (or could not).
    """

    def __init__(
        self,
        *,
        on_insert: Callable[[CodeBlock], None] = _ignore,
        on_run: Callable[[CodeBlock], None] = _ignore,
        on_copied: Callable[[bool], None] | None = None,
    ) -> None:
        self.view = classed(widgets.VBox(), "nbchat-messages")
        self.follower = FollowNewest()
        self.rows: tuple[widgets.Widget, ...] = (self.view, self.follower)
        self._on_insert, self._on_run, self._on_copied = on_insert, on_run, on_copied
        self._shown: dict[str, tuple[widgets.Widget, ...]] = {}  # by message id ("unsaved:" + question id)

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
        kept: dict[str, tuple[widgets.Widget, ...]] = {}
        children: list[widgets.Widget] = []

        def place(key: str, make: str | Message) -> None:
            if key in kept:  # the same id twice (a hand-edited file): each shown once, apart
                key = f"{key}#{len(children)}"
            shown = self._shown.get(key)
            if shown is None:
                shown = self._widgets(make)
            kept[key] = shown
            children.extend(shown)

        for message in messages:
            place(message.id, message)
            if message.id in unsaved:
                place(f"unsaved:{message.id}", unsaved.pop(message.id))
        for question_id, markdown in unsaved.items():  # its question is not shown: at the end
            place(f"unsaved:{question_id}", markdown)
        if live is not None:
            children.append(live)
        dropped = [shown for key, shown in self._shown.items() if kept.get(key) is not shown]
        self._shown = kept
        if tuple(children) != self.view.children:
            self.view.children = tuple(children)
        close_widgets(*dropped)

    def clear(self) -> None:
        self.show(())

    def jump(self) -> None:
        """Scroll the browser's list to the newest text and follow it again (the user sent, or switched)."""
        self.follower.jump()

    def close(self) -> None:
        close_widgets(self.view, self.follower)

    def _widgets(self, item: str | Message) -> tuple[widgets.Widget, ...]:
        """A message's widget, followed by its code actions when it is a reply holding code."""
        if isinstance(item, str):  # a reply kept in memory only: its text, its error, marked unsaved
            output = classed(widgets.Output(), "nbchat-message", "nbchat-message-assistant", "nbchat-unsaved")
            output.outputs = markdown_output(item)
            return self._with_actions(output, item)
        widget = message_widget(item)
        return self._with_actions(widget, item) if item.role == "assistant" else (widget,)

    def _with_actions(self, widget: widgets.Widget, source: str | Message) -> tuple[widgets.Widget, ...]:
        actions = code_actions(
            source, on_insert=self._on_insert, on_run=self._on_run, on_copied=self._on_copied
        )
        return (widget,) if actions is None else (widget, actions)


def message_widget(message: Message) -> widgets.Widget:
    """One message as shown: a reply as Markdown; a question as escaped text, its context folded."""
    if message.role == "assistant":
        output = classed(widgets.Output(), "nbchat-message", "nbchat-message-assistant")
        output.outputs = markdown_output(message_markdown(message))
        return output
    role = "You" if message.role == "user" else message.role.capitalize()
    body = html.escape(message.content)
    return classed(
        widgets.HTML(
            f"<div class='nbchat-role'>{role}</div><div class='nbchat-bubble'>{body}</div>"
            + context_html(message.context)
        ),
        "nbchat-message",
        f"nbchat-message-{message.role}",
    )
