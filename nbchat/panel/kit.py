"""What every part of the panel uses: CSS classes, Markdown outputs, closing widgets, a quiet guard."""

from __future__ import annotations

import html
import threading
from types import TracebackType
from typing import Any, TypeVar

import ipywidgets as widgets

W = TypeVar("W", bound=widgets.DOMWidget)

#: The panel's own look; each control keeps a stable class (listed in the README).
STYLE = """
<style>
.nbchat-panel { max-width: 920px; }
.nbchat-messages { max-height: 560px; overflow-y: auto; padding: 4px 0; }
.nbchat-messages > * { flex-shrink: 0; }  /* a full list scrolls; its messages never squash to fit */
.nbchat-message-user .nbchat-bubble {
  background: var(--jp-brand-color3, #e3f2fd); border-radius: 8px; padding: 6px 10px;
  margin: 4px 0 4px 15%; white-space: pre-wrap; }
.nbchat-message-assistant { border-left: 3px solid var(--jp-brand-color1, #1976d2);
  padding-left: 8px; margin: 4px 15% 4px 0; }
.nbchat-message-assistant.nbchat-unsaved { border-left-color: var(--jp-error-color1, #d32f2f); }
.nbchat-status { color: var(--jp-ui-font-color2, #616161); font-size: 90%; }
.nbchat-status .nbchat-error, .nbchat-login-message .nbchat-error { color: var(--jp-error-color1, #d32f2f); }
.nbchat-role { font-size: 80%; color: var(--jp-ui-font-color2, #757575); }
.nbchat-context { margin: 2px 0 4px 15%; font-size: 90%; color: var(--jp-ui-font-color1, #212121); }
.nbchat-context summary { cursor: pointer; color: var(--jp-ui-font-color2, #616161); }
.nbchat-context pre { max-height: 240px; overflow: auto; margin: 2px 0 6px 0; padding: 4px 6px;
  background: var(--jp-layout-color2, #f5f5f5); border-radius: 4px; white-space: pre; font-size: 85%; }
.nbchat-context-name { font-weight: 600; margin-top: 4px; }
.nbchat-code-actions { margin: 0 15% 6px 11px; }
.nbchat-code-block { align-items: center; gap: 4px; }
.nbchat-code-label { color: var(--jp-ui-font-color2, #616161); font-size: 90%; margin-right: 4px; }
.nbchat-context-hint { color: var(--jp-ui-font-color2, #757575); font-size: 85%; }
</style>
"""


def classed(widget: W, *names: str) -> W:
    """``widget`` with the CSS classes ``names`` (tests and users' styles select by them)."""
    for name in names:
        widget.add_class(name)
    return widget


def markdown_output(markdown: str) -> tuple[dict[str, Any], ...]:
    """Output-widget outputs that Jupyter renders as Markdown (its own renderer, code highlighted)."""
    return ({"output_type": "display_data", "data": {"text/markdown": markdown}, "metadata": {}},)


def error_html(message: str) -> str:
    """``message`` as a status or form error (escaped: it may quote what a user typed)."""
    return f"<span class='nbchat-error'>{html.escape(message)}</span>"


def close_widgets(*roots: widgets.Widget) -> None:
    """Close ``roots`` and every widget they hold (children, layouts, styles), each once.

    ipywidgets keeps a widget (and its comm) until it is closed, and closing a
    box closes neither its children nor a widget's layout and style.
    """
    seen: set[int] = set()
    todo: list[Any] = list(roots)
    while todo:
        item = todo.pop()
        if isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, widgets.Widget) and id(item) not in seen:
            seen.add(id(item))
            if item.comm is not None:
                todo.extend(getattr(item, name) for name in item.keys)
                widgets.Widget.close(item)  # the widget's own close, even where a subclass adds to it


class Quiet:
    """``with quiet:`` while this thread writes values into widgets, so their observers stay silent.

    Per thread: a person's change handled on the main thread while a reply's
    thread redraws is still heard.
    """

    def __init__(self) -> None:
        self._state = threading.local()

    @property
    def on(self) -> bool:
        return getattr(self._state, "depth", 0) > 0

    def __enter__(self) -> Quiet:
        self._state.depth = getattr(self._state, "depth", 0) + 1
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._state.depth -= 1
