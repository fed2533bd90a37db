"""Copy, Insert and Run under a reply: one row of buttons for each fenced code block it holds.

The blocks are ``nbchat.notebook.code_blocks`` of the finished message (a
reply streaming now gets none until it ends and is redrawn as saved). Copy
works in the browser alone (``CopyButton``); Insert and Run (``ActionButton``s,
which leave the notebook's active cell alone) are reported to
the controller, which asks the notebook's front end and says in the status
line when it cannot be reached.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import ipywidgets as widgets

from nbchat.notebook import CodeBlock, code_blocks
from nbchat.panel.code_buttons import ActionButton, CopyButton
from nbchat.panel.kit import classed
from nbchat.types import Message

#: The first line of a block shown next to its buttons, at most this long.
PREVIEW_CHARS = 60

OnBlock = Callable[[CodeBlock], None]


def code_actions(
    source: str | Message,
    *,
    on_insert: OnBlock,
    on_run: OnBlock,
    on_copied: Callable[[bool], None] | None = None,
) -> widgets.VBox | None:
    """A box of one row per fenced code block of ``source`` (a message or Markdown), or None when it
    has none (a block a stopped reply left open is not offered)."""
    blocks = code_blocks(source)
    if not blocks:
        return None
    rows = [_row(block, len(blocks), on_insert, on_run, on_copied) for block in blocks]
    return classed(widgets.VBox(rows), "nbchat-code-actions")


def blocks_of(box: widgets.VBox) -> Sequence[CodeBlock]:
    """The blocks a box made by ``code_actions`` acts on, in order (for scripts and tests)."""
    return [row.block for row in box.children]


class _Row(widgets.HBox):
    block: CodeBlock


def _row(
    block: CodeBlock,
    count: int,
    on_insert: OnBlock,
    on_run: OnBlock,
    on_copied: Callable[[bool], None] | None,
) -> _Row:
    copy = classed(CopyButton(text=block.code), "nbchat-code-copy")
    if on_copied is not None:
        copy.on_copied(on_copied)
    insert = classed(
        ActionButton(label="Insert", hint="A new cell below the active one, holding exactly this code"),
        "nbchat-code-insert",
    )
    run = classed(
        ActionButton(label="Run", hint="Insert this code as a new cell below the active one, then run it"),
        "nbchat-code-run",
    )
    insert.on_click(lambda _: on_insert(block))
    run.on_click(lambda _: on_run(block))
    label = classed(widgets.HTML(_label(block, count)), "nbchat-code-label")
    row = _Row([label, copy, insert, run])
    row.block = block
    return classed(row, "nbchat-code-block")


def _label(block: CodeBlock, count: int) -> str:
    """Which block a row acts on: its language and, when there are several, its first line."""
    language = html.escape(block.language or "code")
    lines = block.code.count("\n") + (0 if block.code.endswith("\n") else 1) if block.code else 0
    text = f"<code>{language}</code> · {lines} line{'s' if lines != 1 else ''}"
    if count > 1:
        first = next((line.strip() for line in block.code.splitlines() if line.strip()), "")
        if len(first) > PREVIEW_CHARS:
            first = first[: PREVIEW_CHARS - 1] + "…"
        text += f" · <span class='nbchat-code-preview'>{html.escape(first)}</span>"
    return text
