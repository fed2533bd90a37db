"""The prompt box (Ctrl/Cmd+Enter sends), *Send*, *Stop*, the status line and a model's download bar."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from nbchat.backends.base import LoadProgress
from nbchat.panel.download_bar import DownloadBar
from nbchat.panel.kit import classed, close_widgets, error_html

PLACEHOLDER = "Message… (Ctrl+Enter or Cmd+Enter sends)"


class Composer:
    """``on_send(text)`` hears a non-empty prompt when *Send* or Ctrl/Cmd+Enter asks; ``on_stop()``
    hears *Stop*. The status line says what happens, errors in red."""

    def __init__(self, *, on_send: Callable[[str], None], on_stop: Callable[[], object]) -> None:
        self._on_send = on_send
        self.prompt = classed(_prompt_widget(PLACEHOLDER), "nbchat-prompt")
        self.send_button = classed(
            widgets.Button(description="Send", button_style="primary", icon="paper-plane"), "nbchat-send"
        )
        self.stop_button = classed(
            widgets.Button(description="Stop", icon="stop", disabled=True), "nbchat-stop"
        )
        self.status = classed(widgets.HTML(), "nbchat-status")
        self.download_bar = DownloadBar()  # shown only while a local model downloads
        self.send_button.on_click(lambda _: self._send())
        self.stop_button.on_click(lambda _: on_stop())
        if hasattr(self.prompt, "on_submit"):
            self.prompt.on_submit(lambda _: self._send())
        self.rows: tuple[widgets.Widget, ...] = (
            self.prompt,
            widgets.HBox([self.send_button, self.stop_button, self.download_bar.progress, self.status]),
        )

    def say(self, status_html: str) -> None:
        self.status.value = status_html

    def show_download(self, step: LoadProgress | None) -> None:
        """The bar at a download step's fraction (the status line says the bytes); None hides it."""
        self.download_bar.show(step)

    def error(self, message: str) -> None:
        self.status.value = error_html(message)

    def sent(self) -> None:
        self.prompt.value = ""

    def set_busy(self, streaming: bool, model: str | None) -> None:
        """While a reply streams only *Stop* works; with no model chosen nothing can be sent."""
        self.send_button.disabled = streaming or not model
        self.stop_button.disabled = not streaming
        self.prompt.disabled = streaming
        if not streaming and not model:
            self.status.value = "Choose a model to start chatting."
        elif not streaming and self.status.value.startswith("Choose a model"):
            self.status.value = f"Model: <code>{html.escape(model or '')}</code>"

    def clear(self) -> None:
        self.prompt.value = ""
        self.status.value = ""
        self.download_bar.show(None)

    def close(self) -> None:
        close_widgets(*self.rows)

    def _send(self) -> None:
        if self.send_button.disabled:
            return
        text = self.prompt.value
        if not text.strip():
            self.error("Type a message first.")
            return
        self._on_send(text)


def _prompt_widget(placeholder: str) -> Any:
    """The Ctrl/Cmd+Enter prompt box; a plain Textarea where anywidget is missing."""
    try:
        from nbchat.prompt_box import PromptBox
    except ImportError:
        return widgets.Textarea(placeholder=placeholder, layout={"width": "100%"})
    return PromptBox(placeholder=placeholder, layout={"width": "100%"})
