"""What a question can attach besides ``@name`` mentions: the last N cells, or the last error.

``cells`` is read when a prompt is sent (the controller passes it to
``session.send(prompt, cells=N)``); *Explain last error* is reported to
``on_explain()``. Neither acts while a reply streams.
"""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets

from nbchat.panel.kit import classed, close_widgets

#: The most recent cells one question can attach from the panel.
MAX_INCLUDE_CELLS = 20

HINT = "Mention <code>@name</code> to attach a variable (<code>@@name</code> for a literal @name)."


class ContextRow:
    """The include-cells control (0 by default), *Explain last error* and a hint about ``@name``."""

    def __init__(self, *, on_explain: Callable[[], None]) -> None:
        self.include_cells = classed(
            widgets.BoundedIntText(
                value=0,
                min=0,
                max=MAX_INCLUDE_CELLS,
                description="Recent cells",
                tooltip="Attach the source and results of this many of the last cells run",
                style={"description_width": "initial"},
                layout={"width": "150px"},
            ),
            "nbchat-include-cells",
        )
        self.explain_button = classed(
            widgets.Button(
                description="Explain last error",
                icon="bug",
                tooltip="Send the kernel's last traceback and ask how to fix it",
                layout={"width": "auto"},
            ),
            "nbchat-explain-error",
        )
        self.explain_button.on_click(lambda _: on_explain())
        self.hint = classed(widgets.HTML(HINT), "nbchat-context-hint")
        self.rows: tuple[widgets.Widget, ...] = (
            widgets.HBox([self.include_cells, self.explain_button, self.hint]),
        )

    @property
    def cells(self) -> int:
        """How many recent cells to attach (a cleared or odd field counts as 0)."""
        value = self.include_cells.value
        return value if isinstance(value, int) and value > 0 else 0

    def set_busy(self, streaming: bool, model: str | None) -> None:
        """Explaining sends a question: not while a reply streams, nor before a model is chosen."""
        self.explain_button.disabled = streaming or not model
        self.include_cells.disabled = streaming

    def clear(self) -> None:
        self.include_cells.value = 0

    def close(self) -> None:
        close_widgets(*self.rows)
