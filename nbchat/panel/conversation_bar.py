"""Who is logged in, and the conversation picker with *New*, *Rename* and *Delete* (asked inline)."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as widgets

from nbchat.panel.kit import Quiet, classed, close_widgets
from nbchat.types import Conversation, ConversationSummary


class ConversationBar:
    """Rows of the chat view; it calls back with conversation ids and titles, it acts on nothing."""

    def __init__(
        self,
        *,
        on_logout: Callable[[], None],
        on_pick: Callable[[str], None],
        on_new: Callable[[], None],
        on_rename: Callable[[str, str], bool],
        on_delete: Callable[[str], None],
    ) -> None:
        self._on_pick, self._on_rename, self._on_delete = on_pick, on_rename, on_delete
        self._quiet = Quiet()
        self._current: tuple[str, str] | None = None  # (id, title) of the conversation shown
        self.user_label = classed(widgets.HTML(), "nbchat-user")
        self.logout_button = classed(
            widgets.Button(description="Log out", icon="sign-out", layout={"width": "auto"}), "nbchat-logout"
        )
        self.logout_button.on_click(lambda _: on_logout())
        self.conversations = classed(
            widgets.Dropdown(description="Chat", options=[], layout={"width": "360px"}),
            "nbchat-conversations",
        )
        self.conversations.observe(self._picked, names="value")
        self.new_button = classed(
            widgets.Button(description="New", icon="plus", layout={"width": "auto"}), "nbchat-new"
        )
        self.rename_button = classed(
            widgets.Button(description="Rename", layout={"width": "auto"}), "nbchat-rename"
        )
        self.delete_button = classed(
            widgets.Button(description="Delete", icon="trash", layout={"width": "auto"}), "nbchat-delete"
        )
        self.new_button.on_click(lambda _: on_new())
        self.rename_button.on_click(lambda _: self.ask_rename(True))
        self.delete_button.on_click(lambda _: self.ask_delete(True))

        self.rename_text = classed(widgets.Text(placeholder="new title"), "nbchat-rename-text")
        self.rename_ok = classed(
            widgets.Button(description="Save title", button_style="primary"), "nbchat-rename-ok"
        )
        self.rename_cancel = classed(widgets.Button(description="Cancel"), "nbchat-rename-cancel")
        self.rename_ok.on_click(lambda _: self._rename())
        self.rename_cancel.on_click(lambda _: self.ask_rename(False))
        self.rename_row = widgets.HBox([self.rename_text, self.rename_ok, self.rename_cancel])

        self.delete_question = widgets.HTML()
        self.delete_ok = classed(
            widgets.Button(description="Delete for good", button_style="danger"), "nbchat-delete-confirm"
        )
        self.delete_cancel = classed(widgets.Button(description="Keep it"), "nbchat-delete-cancel")
        self.delete_ok.on_click(lambda _: self._delete())
        self.delete_cancel.on_click(lambda _: self.ask_delete(False))
        self.delete_row = widgets.HBox([self.delete_question, self.delete_ok, self.delete_cancel])

        self.rows: tuple[widgets.Widget, ...] = (
            widgets.HBox([self.user_label, self.logout_button]),
            widgets.HBox([self.conversations, self.new_button, self.rename_button, self.delete_button]),
            self.rename_row,
            self.delete_row,
        )

    def show(
        self,
        user: str,
        *,
        hub: bool,
        summaries: Sequence[ConversationSummary],
        current: Conversation | None,
    ) -> None:
        """The logged-in user (a hub user logs out through the hub) and their conversations."""
        with self._quiet:
            self.logout_button.layout.display = "none" if hub else None
            self.user_label.value = f"Logged in as <b>{html.escape(user)}</b>{' (JupyterHub)' if hub else ''}"
            self.conversations.options = [(s.title, s.id) for s in summaries]
            self.conversations.value = current.id if current is not None else None
        self._current = (current.id, current.title) if current is not None else None
        self.rename_button.disabled = self.delete_button.disabled = current is None

    def set_busy(self, busy: bool) -> None:
        """While a reply streams into the conversation, it cannot be switched, replaced or deleted."""
        for widget in (self.conversations, self.new_button, self.delete_button):
            widget.disabled = busy

    def clear(self) -> None:
        """Logged out: nothing of the last user stays."""
        with self._quiet:
            self.conversations.options = []
        self._current = None
        self.user_label.value = ""
        self.ask_rename(False)
        self.ask_delete(False)

    def ask_rename(self, show: bool) -> None:
        if show and self._current is None:
            return
        self.rename_text.value = self._current[1] if show and self._current is not None else ""
        self.rename_row.layout.display = "flex" if show else "none"

    def ask_delete(self, show: bool) -> None:
        if show and self._current is None:
            return
        title = html.escape(self._current[1]) if show and self._current is not None else ""
        self.delete_question.value = f"Delete <b>{title}</b> and all its messages?" if show else ""
        self.delete_row.layout.display = "flex" if show else "none"

    def close(self) -> None:
        close_widgets(*self.rows)

    def _picked(self, change: dict[str, Any]) -> None:
        if not self._quiet.on and change["new"] is not None:
            self._on_pick(change["new"])

    def _rename(self) -> None:
        if self._current is not None and self._on_rename(self._current[0], self.rename_text.value):
            self.ask_rename(False)

    def _delete(self) -> None:
        if self._current is not None:
            self._on_delete(self._current[0])
        self.ask_delete(False)
