"""The messages of the conversation shown: the active path's newest ~50 (a *Show earlier* control
reveals the rest, 50 a click), each a ``message_view`` with its branch tools (‹ 2 / 3 ›, Edit,
Regenerate), a reply's Copy/Insert/Run under it for each code block it holds.

Widgets are made only for the messages shown: a conversation of 1,000 messages opens as fast
as one of 50, and a message keeps its widgets while shown (no Markdown is sent again).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets

from nbchat.notebook import CodeBlock
from nbchat.panel.code_actions import code_actions
from nbchat.panel.follow_newest import FollowNewest
from nbchat.panel.kit import classed, close_widgets, markdown_output
from nbchat.panel.message_view import BranchActions, MessageView, message_view, parts
from nbchat.render import earlier_label
from nbchat.tree import MessageTree
from nbchat.types import Message

#: How many of the newest messages a conversation opens with, and how many more each *Show earlier* adds.
PAGE = 50


def _ignore(_block: CodeBlock) -> None:
    return None


class MessageList:
    """Saved messages, a reply that could not be saved after the question it answers, then the
    reply streaming now. A message keeps its widgets while shown; one no longer shown is closed.
    ``rows`` are the list and, under it, its scroll keeper (the browser follows the newest text).

    ``on_insert(block)`` and ``on_run(block)`` hear a code block's Insert and Run;
    ``on_copied(ok)`` hears that the browser copied one (or could not); ``branches`` hears the
    branch tools (``BranchActions``).
    """

    def __init__(
        self,
        *,
        on_insert: Callable[[CodeBlock], None] = _ignore,
        on_run: Callable[[CodeBlock], None] = _ignore,
        on_copied: Callable[[bool], None] | None = None,
        branches: BranchActions | None = None,
    ) -> None:
        self.view = classed(widgets.VBox(), "nbchat-messages")
        self.follower = FollowNewest()
        self.rows: tuple[widgets.Widget, ...] = (self.view, self.follower)
        self._on_insert, self._on_run, self._on_copied = on_insert, on_run, on_copied
        self._branches = branches or BranchActions()
        self._shown: dict[str, tuple[widgets.Widget, ...]] = {}  # by message id ("unsaved:" + question id)
        self.show_earlier_button = classed(
            widgets.Button(
                icon="angle-up", tooltip="Older messages of this conversation", layout={"width": "auto"}
            ),
            "nbchat-show-earlier",
        )
        self.show_earlier_button.on_click(lambda _: self.show_earlier())
        self._lock = threading.RLock()  # a click (main thread) and a redraw (a reply's thread)
        self._shown_for: str | None = None  # the conversation shown, to start a new one at its newest
        self._limit = PAGE  # how many of the newest messages are shown
        self._anchor: str | None = None  # the oldest shown once the user revealed more: it stays shown
        self._last: dict[str, Any] = {"messages": ()}
        self._reveal: tuple[str, str] | None = None  # (conversation id, message id) to show when drawn
        self._reveal_seen = False  # its conversation was drawn without it: the next other one drops it
        self.hidden = 0  # how many older messages of the path are not shown (for scripts and tests)

    def show(
        self,
        messages: Sequence[Message],
        *,
        unsaved: Mapping[str, str] | None = None,
        live: widgets.Widget | None = None,
        live_after: str | None = None,
        tree: MessageTree | None = None,
        conversation_id: str | None = None,
        busy: bool = False,
    ) -> None:
        """``messages`` is the path shown (the newest ``PAGE`` of it until *Show earlier*);
        ``unsaved`` maps a question's message id to the Markdown of its unsaved reply; ``live``
        (the streaming reply's widget) belongs to whoever follows the reply, and answers
        ``live_after`` (a regenerated reply: the path is shown up to its question, then it).
        ``tree`` (every branch) gives each message its alternatives; ``busy`` (a reply streams)
        disables the tools: the list's class ``nbchat-busy``, one change however many are shown."""
        with self._lock:
            self._last = {
                "messages": messages,
                "unsaved": unsaved,
                "live": live,
                "live_after": live_after,
                "tree": tree,
                "conversation_id": conversation_id,
                "busy": busy,
            }
            self._draw(**self._last)

    def show_earlier(self) -> None:
        """Reveal the next ``PAGE`` older messages (what the *Show earlier* control does)."""
        with self._lock:
            path = self._path(self._last["messages"], self._last.get("live"), self._last.get("live_after"))
            start = max(0, self._start(path) - PAGE)
            if path:
                self._anchor = path[start].id
            self._limit = len(path) - start
            self._draw(**self._last)

    def reveal(self, conversation_id: str, message_id: str) -> None:
        """Show ``message_id`` (a search hit) however old: from the next draw of that conversation
        whose path holds it, the list starts at it or earlier. Dropped once another is shown."""
        with self._lock:
            self._reveal, self._reveal_seen = (conversation_id, message_id), False
            if self._shown_for == conversation_id:
                self._draw(**self._last)

    def clear(self) -> None:
        self.show(())

    def jump(self) -> None:
        """Scroll the browser's list to the newest text and follow it again (the user sent, or switched)."""
        self.follower.jump()

    def close(self) -> None:
        """Close every widget of the list, with the bars shown inside replies (no box's children)."""
        with self._lock:
            shown = [part for each in self._shown.values() for widget in each for part in parts(widget)]
            self._shown = {}
        close_widgets(*self.rows, self.show_earlier_button, *shown)

    # -- drawing ------------------------------------------------------------------------------

    def _draw(
        self,
        messages: Sequence[Message],
        unsaved: Mapping[str, str] | None = None,
        live: widgets.Widget | None = None,
        live_after: str | None = None,
        tree: MessageTree | None = None,
        conversation_id: str | None = None,
        busy: bool = False,
    ) -> None:
        if conversation_id != self._shown_for:  # another conversation opens at its newest messages
            self._shown_for, self._limit, self._anchor = conversation_id, PAGE, None
        path = self._path(messages, live, live_after)
        start = self._start(path)
        if self._reveal is not None:
            start = self._revealed(conversation_id, path, start)
        self.hidden = start
        unsaved = dict(unsaved or {})
        kept: dict[str, tuple[widgets.Widget, ...]] = {}
        children: list[widgets.Widget] = []
        if start:
            self.show_earlier_button.description = earlier_label(start, PAGE)
            children.append(self.show_earlier_button)

        def place(key: str, make: str | Message) -> tuple[widgets.Widget, ...]:
            if key in kept:  # the same id twice (a hand-edited file): each shown once, apart
                key = f"{key}#{len(children)}"
            shown = self._shown.get(key)
            if shown is None:
                shown = self._widgets(make)
            kept[key] = shown
            children.extend(shown)
            return shown

        last = path[-1].id if path and live is None else None
        for message in path[:start]:
            unsaved.pop(message.id, None)  # its question is hidden: so is it
        for message in path[start:]:
            view = place(_key(message), message)[0]
            if isinstance(view, MessageView):
                alternatives = _alternatives(tree, message)
                view.set_tools(alternatives, last_reply=message.id == last)
            if message.id in unsaved:
                place(f"unsaved:{message.id}", unsaved.pop(message.id))
        for question_id, markdown in unsaved.items():  # its question is not shown: at the end
            place(f"unsaved:{question_id}", markdown)
        if live is not None:
            children.append(live)
        if busy != ("nbchat-busy" in self.view._dom_classes):
            (self.view.add_class if busy else self.view.remove_class)("nbchat-busy")
        dropped = [shown for key, shown in self._shown.items() if kept.get(key) is not shown]
        self._shown = kept
        if tuple(children) != self.view.children:
            self.view.children = tuple(children)
        close_widgets(*(part for shown in dropped for widget in shown for part in parts(widget)))

    def _path(
        self, messages: Sequence[Message], live: widgets.Widget | None, live_after: str | None
    ) -> Sequence[Message]:
        """What is shown of ``messages``: while a regenerated reply streams, up to its question."""
        if live is None or live_after is None or not messages or messages[-1].id == live_after:
            return messages
        for index in range(len(messages) - 1, -1, -1):
            if messages[index].id == live_after:
                return messages[: index + 1]
        return messages

    def _revealed(self, conversation_id: str | None, path: Sequence[Message], start: int) -> int:
        """The first message shown once the message to reveal is on the path: it, if older."""
        assert self._reveal is not None
        wanted_conversation, wanted = self._reveal
        if conversation_id != wanted_conversation:
            if self._reveal_seen:
                self._reveal = None
            return start
        for index, message in enumerate(path):
            if message.id == wanted:
                self._reveal = None
                if index < start:
                    self._anchor, self._limit = message.id, len(path) - index
                    return index
                return start
        self._reveal_seen = True
        return start

    def _start(self, path: Sequence[Message]) -> int:
        """The first message shown: the one the user revealed up to, while on the path; else the
        newest ``_limit`` (the newest ``PAGE`` until *Show earlier*)."""
        if self._anchor is not None:
            for index, message in enumerate(path):
                if message.id == self._anchor:
                    return index
        return max(0, len(path) - self._limit)

    def _widgets(self, item: str | Message) -> tuple[widgets.Widget, ...]:
        """A message's widget, followed by its code actions when it is a reply holding code."""
        if isinstance(item, str):  # a reply kept in memory only: its text, its error, marked unsaved
            output = classed(widgets.Output(), "nbchat-message", "nbchat-message-assistant", "nbchat-unsaved")
            output.outputs = markdown_output(item)
            return self._with_actions(output, item)
        widget = message_view(item, self._branches)
        return self._with_actions(widget, item) if item.role == "assistant" else (widget,)

    def _with_actions(self, widget: widgets.Widget, source: str | Message) -> tuple[widgets.Widget, ...]:
        actions = code_actions(
            source, on_insert=self._on_insert, on_run=self._on_run, on_copied=self._on_copied
        )
        return (widget,) if actions is None else (widget, actions)


def _key(message: Message) -> str:
    """What a message's widgets are kept under: its id, but a reply read from drafts (another
    kernel writing it, or interrupted) is drawn anew when its text grows or it ends."""
    stats = message.stats or {}
    if not (stats.get("live") or stats.get("interrupted")):
        return message.id
    state = "live" if stats.get("live") else "interrupted"
    return f"{message.id}~{state}~{len(message.content)}~{len(message.thinking or '')}"


def _alternatives(tree: MessageTree | None, message: Message) -> tuple[str, ...]:
    """The ids of ``message`` and its alternatives, oldest first (itself alone without a tree)."""
    if tree is None or message.id not in tree:
        return (message.id,)
    return tuple(alternative.id for alternative in tree.alternatives(message.id))
