"""Pulling a model into Ollama: its name, the button and a progress bar shown while it downloads."""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets

from nbchat.panel.kit import classed, close_widgets


class PullRow:
    """One row; ``on_pull(name)`` hears the (stripped) name typed when *Pull* is clicked."""

    def __init__(self, on_pull: Callable[[str], None]) -> None:
        self.name = classed(
            widgets.Text(placeholder="e.g. qwen3:1.7b", description="Pull", layout={"width": "260px"}),
            "nbchat-pull-name",
        )
        self.button = classed(
            widgets.Button(description="Pull from Ollama", icon="download", layout={"width": "auto"}),
            "nbchat-pull",
        )
        self.progress = classed(
            widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout={"width": "200px", "display": "none"}),
            "nbchat-pull-progress",
        )
        self.button.on_click(lambda _: on_pull(self.name.value.strip()))
        self.rows: tuple[widgets.Widget, ...] = (widgets.HBox([self.name, self.button, self.progress]),)

    def started(self) -> None:
        self.button.disabled = True
        self.progress.value = 0.0
        self.progress.layout.display = None

    def advanced(self, fraction: float | None) -> None:
        if fraction is not None:
            self.progress.value = fraction

    def succeeded(self) -> None:
        self.progress.value = 1.0
        self.name.value = ""

    def ended(self) -> None:
        """Done either way: the button works again and the bar goes away."""
        self.button.disabled = False
        self.progress.layout.display = "none"

    def clear(self) -> None:
        self.name.value = ""

    def close(self) -> None:
        close_widgets(*self.rows)
