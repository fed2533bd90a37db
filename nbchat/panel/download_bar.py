"""A local model's first download: a progress bar beside the status line, shown only while it runs."""

from __future__ import annotations

import ipywidgets as widgets

from nbchat.backends.base import LoadProgress
from nbchat.panel.kit import classed, close_widgets

#: While a model downloads, the bar and the status line are redrawn at most this often: the hub
#: reports bytes many times a second, and each redraw is a comm message to the front end.
DOWNLOAD_REDRAW_INTERVAL_S = 0.25


class DownloadBar:
    """``show(step)`` sets the bar to a download step's fraction; ``show(None)`` hides it."""

    def __init__(self) -> None:
        self.progress = classed(
            widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout={"width": "160px", "display": "none"}),
            "nbchat-download-progress",
        )

    @property
    def shown(self) -> bool:
        return self.progress.layout.display != "none"

    def show(self, step: LoadProgress | None) -> None:
        if step is None:
            self.progress.layout.display = "none"
            return
        fraction = step.fraction
        self.progress.value = fraction if fraction is not None else 0.0  # size unknown: bytes in the text
        if not self.shown:
            self.progress.layout.display = None

    def close(self) -> None:
        close_widgets(self.progress)
