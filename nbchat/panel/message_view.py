"""One saved message as the panel shows it, with the tools that act on its branch under it:
‹ 2 / 3 › among its alternatives, *Edit* on a question (an inline editor that resends it as a
new branch), *Regenerate* on the conversation's last reply.

Only the tools that apply are made (a long conversation shows about 50 messages, each a few
widgets); a message keeps its view while shown, and ``set_tools`` rebuilds only the bar, never
the message (its Markdown is not sent to the browser again when a later message arrives).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets

from nbchat.panel.kit import classed, close_widgets, markdown_output
from nbchat.render import alternatives_counter, context_html, message_markdown
from nbchat.types import Message

#: The tools' look (the panel's own STYLE has the messages'): quiet, under the message they act on.
TOOLS_STYLE = """
<style>
.nbchat-message-tools { gap: 2px; align-items: center; font-size: 85%; }
.nbchat-message-tools .widget-button { height: 22px; line-height: 22px; padding: 0 6px; }
.nbchat-message-user .nbchat-message-tools { justify-content: flex-end; }
.nbchat-alt-counter { color: var(--jp-ui-font-color2, #616161); padding: 0 4px; }
.nbchat-editor { margin: 4px 0 4px 15%; }
.nbchat-show-earlier { align-self: center; }
</style>
"""


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


class MessageView(widgets.VBox):
    """The message's own widget (``body``) and, under it, its tools (``tools``: a row, or None)."""

    def __init__(self, message: Message, body: widgets.Widget, actions: BranchActions) -> None:
        super().__init__([body])
        classed(self, "nbchat-message", f"nbchat-message-{message.role}")
        body.add_class(f"nbchat-msg-{message.id}")  # the page finds a message by it (a search hit)
        self.message, self.body, self._actions = message, body, actions
        self.tools: widgets.HBox | None = None
        self._tools_key: tuple[tuple[str, ...], bool] = ((message.id,), False)
        self._busy = False
        self._buttons: list[tuple[widgets.Button, bool]] = []  # each with "disabled however idle"

    def set_tools(self, alternatives: Sequence[str], *, last_reply: bool, busy: bool) -> None:
        """Show the tools for the message's place now: ``alternatives`` are the ids of it and its
        siblings, oldest first; ``last_reply`` whether it ends the path (Regenerate); ``busy``
        while a reply streams (every tool disabled: one reply at a time)."""
        key = (tuple(alternatives), last_reply)
        if key != self._tools_key or (self.tools is None and self._wants_tools(*key)):
            self._tools_key = key
            self._rebuild()
        if busy != self._busy:
            self._busy = busy
            self._enable()

    # -- the tools ----------------------------------------------------------------------------

    def _wants_tools(self, alternatives: tuple[str, ...], last_reply: bool) -> bool:
        return len(alternatives) > 1 or last_reply

    def _bar(self) -> list[widgets.Widget]:
        """The switcher where the message has alternatives, then what this kind of message adds."""
        alternatives, last_reply = self._tools_key
        parts: list[widgets.Widget] = []
        if len(alternatives) > 1:
            index = alternatives.index(self.message.id) if self.message.id in alternatives else 0
            earlier = alternatives[index - 1] if index > 0 else None
            later = alternatives[index + 1] if index + 1 < len(alternatives) else None
            parts.append(self._button("‹", "nbchat-alt-prev", earlier, "The previous alternative"))
            counter = widgets.HTML(html.escape(alternatives_counter(index + 1, len(alternatives))))
            parts.append(classed(counter, "nbchat-alt-counter"))
            parts.append(self._button("›", "nbchat-alt-next", later, "The next alternative"))
        if last_reply:
            hint = "A new reply to the same question; this one is kept"
            regenerate = _tool("Regenerate", "nbchat-regenerate", hint)
            regenerate.icon = "refresh"
            regenerate.on_click(lambda _: self._actions.regenerate())
            self._buttons.append((regenerate, False))
            parts.append(regenerate)
        return parts

    def _button(self, label: str, name: str, target: str | None, hint: str) -> widgets.Button:
        button = _tool(label, name, hint)
        if target is not None:
            button.on_click(lambda _: self._actions.switch(target))
        self._buttons.append((button, target is None))
        return button

    def _rebuild(self) -> None:
        old, self.tools = self.tools, None
        self._buttons = []
        parts = self._bar()
        if parts:
            self.tools = classed(widgets.HBox(parts), "nbchat-message-tools")
        self._place()
        self._enable()
        if old is not None:
            close_widgets(old)

    def _place(self) -> None:
        self.children = (self.body,) if self.tools is None else (self.body, self.tools)

    def _enable(self) -> None:
        for button, at_end in self._buttons:
            button.disabled = self._busy or at_end


class ReplyView(MessageView):
    """A saved reply: its Markdown (thinking folded, how it ended) and its tools."""

    def __init__(self, message: Message, actions: BranchActions) -> None:
        body = classed(widgets.Output(), "nbchat-message-body")
        body.outputs = markdown_output(message_markdown(message))
        super().__init__(message, body, actions)

    @property
    def outputs(self) -> tuple[dict[str, Any], ...]:
        """What the reply shows (the body's outputs: its Markdown)."""
        return tuple(self.body.outputs)


class QuestionView(MessageView):
    """A question: escaped text, what it attached (folded), then ‹ › and *Edit*; *Edit* swaps the
    bar for an editor holding the question, whose *Send* starts a branch there."""

    def __init__(self, message: Message, actions: BranchActions) -> None:
        role = "You" if message.role == "user" else message.role.capitalize()
        body = widgets.HTML(
            f"<div class='nbchat-role'>{role}</div>"
            f"<div class='nbchat-bubble'>{html.escape(message.content)}</div>" + context_html(message.context)
        )
        super().__init__(message, body, actions)
        self.editor: widgets.VBox | None = None
        self._rebuild()

    @property
    def value(self) -> str:
        """What the question shows (the body's HTML)."""
        return str(self.body.value)

    def edit(self) -> None:
        """Open the editor (what *Edit* does), prefilled with the question."""
        if self.editor is not None:
            return
        text = classed(
            widgets.Textarea(value=self.message.content, layout={"width": "100%", "height": "6em"}),
            "nbchat-edit-text",
        )
        hint = "Send the changed question: a new branch; the old one is kept"
        send = _tool("Send", "nbchat-edit-send", hint)
        send.button_style = "primary"
        cancel = _tool("Cancel", "nbchat-edit-cancel", "Keep the question as it is")
        send.on_click(lambda _: self._resend(text.value))
        cancel.on_click(lambda _: self.stop_editing())
        self.editor = classed(widgets.VBox([text, widgets.HBox([send, cancel])]), "nbchat-editor")
        self._buttons.append((send, False))
        self._place()
        self._enable()

    def stop_editing(self) -> None:
        editor, self.editor = self.editor, None
        if editor is None:
            return
        send = editor.children[1].children[0]
        self._buttons = [(button, at_end) for button, at_end in self._buttons if button is not send]
        self._place()
        close_widgets(editor)

    def _wants_tools(self, alternatives: tuple[str, ...], last_reply: bool) -> bool:
        return True  # Edit, always

    def _bar(self) -> list[widgets.Widget]:
        parts = super()._bar()
        edit = _tool("Edit", "nbchat-edit", "Change this question and send it again: a new branch")
        edit.icon = "pencil"
        edit.on_click(lambda _: self.edit())
        self._buttons.append((edit, False))
        return [*parts, edit]

    def _place(self) -> None:
        """The bar stays a child while the editor is open (hidden), so closing the view closes both."""
        if self.tools is not None:
            self.tools.layout.display = "none" if self.editor is not None else None
        shown = (self.body, self.tools, self.editor)
        self.children = tuple(widget for widget in shown if widget is not None)

    def _resend(self, text: str) -> None:
        if self._busy:
            return
        if self._actions.edit(self.message.id, text):
            self.stop_editing()


def _tool(label: str, name: str, hint: str) -> widgets.Button:
    return classed(widgets.Button(description=label, tooltip=hint, layout={"width": "auto"}), name)


def message_view(message: Message, actions: BranchActions | None = None) -> MessageView:
    """One saved message as shown: a reply as Markdown; a question as escaped text, its context folded."""
    actions = actions or BranchActions()
    return ReplyView(message, actions) if message.role == "assistant" else QuestionView(message, actions)
