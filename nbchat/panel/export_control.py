"""*Export*: the conversation shown, as a Markdown file, a notebook or JSON, written next to the notebook.

The part knows no session: ``on_export(format)`` hears the format chosen
(``"markdown"``, ``"ipynb"`` or ``"json"``, the names ``nbchat.export`` takes);
the controller writes the file and answers with ``exported(path)`` or
``failed(message)``.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from pathlib import Path

import ipywidgets as widgets

from nbchat.panel.kit import classed, close_widgets, error_html

#: What the dropdown offers: the label a person reads, the format ``export_conversation`` takes.
FORMATS = (("Markdown", "markdown"), ("Notebook", "ipynb"), ("JSON", "json"))


def shown_path(path: Path, directory: Path) -> str:
    """``path`` as the user finds it: relative to the notebook's folder when it is inside it."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(os.path.abspath(directory)))
    except ValueError:
        return str(path)


class ExportControl:
    """The format dropdown and *Export* (the row is ``nbchat-export``), then where it was written."""

    def __init__(self, *, on_export: Callable[[str], None]) -> None:
        self._conversation_id: str | None = None
        self.format = classed(
            widgets.Dropdown(options=FORMATS, value="markdown", layout={"width": "120px"}),
            "nbchat-export-format",
        )
        self.button = classed(
            widgets.Button(
                description="Export",
                icon="download",
                tooltip="Write this conversation to a file next to the notebook",
                layout={"width": "auto"},
            ),
            "nbchat-export-button",
        )
        self.button.on_click(lambda _: on_export(str(self.format.value)))
        self.note = classed(widgets.HTML(), "nbchat-export-note")
        self.rows: tuple[widgets.Widget, ...] = (
            classed(widgets.HBox([self.format, self.button, self.note]), "nbchat-export"),
        )

    def show(self, conversation_id: str | None) -> None:
        """Only a conversation shown can be exported; another one shown forgets the last note."""
        if conversation_id != self._conversation_id:
            self.note.value = ""
        self._conversation_id = conversation_id
        self.button.disabled = conversation_id is None

    def exported(self, path: Path, directory: Path) -> None:
        """Say where the file went (relative to the notebook's folder ``directory`` when inside it)."""
        shown = shown_path(path, directory)
        beside = "" if Path(shown).is_absolute() else ", next to the notebook"
        self.note.value = f"Exported to <code>{html.escape(shown)}</code>{beside}."

    def failed(self, message: str) -> None:
        self.note.value = error_html(message)

    def clear(self) -> None:
        """Logged out: no note about the last export stays."""
        self.show(None)

    def close(self) -> None:
        close_widgets(*self.rows)
