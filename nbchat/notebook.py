"""A reply's code back into the notebook: its fenced blocks, and new cells made by JupyterLab itself.

``code_blocks`` reads the fenced blocks of a reply with a real CommonMark parser
(markdown-it-py), so fences inside lists, ``~~~`` fences and longer fences holding
``````` are read as a Markdown renderer shows them, and indented code is not a block.

``NotebookBridge`` changes the notebook through JupyterLab's own command system
(``notebook:insert-cell-below``, ``notebook:replace-selection``, ``notebook:run-cell``),
so a new cell is an ordinary edit: undo removes it and the notebook is saved as
usual. Why ipylab ("Control JupyterLab from Python notebooks", jupyterlab/jupyter
widgets maintainers): it is a small, released widget whose front-end half is
prebuilt and installed with the wheel, it runs any JupyterLab command from the
kernel over the widget comm, and it loads in JupyterLab 4 and Notebook 7 (both
build their notebook commands from ``@jupyterlab/notebook-extension``). A
JupyterLab extension of our own would need a JavaScript build in this project for
the same four commands.

How the bridge knows a front end is there: ipylab's front-end model sends
``lab_ready`` when it is created. That answer is a comm message, which the kernel
handles only between cells and callbacks, so ``notebook_bridge()`` should be called
early (the panel does it when it is built); where nothing answers (VS Code, the
classic notebook, nbval, a plain IPython shell) ``available()`` is False and
``insert``/``run`` raise ``FrontEndUnavailable``, never hang.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from nbchat.errors import FrontEndUnavailable

if TYPE_CHECKING:
    from nbchat.reply import Reply
    from nbchat.types import Message

CellType = Literal["code", "markdown"]

#: The JupyterLab commands the bridge uses; all exist in JupyterLab 4 and Notebook 7.
INSERT_BELOW = "notebook:insert-cell-below"
SET_TEXT = "notebook:replace-selection"
TO_CODE = "notebook:change-cell-to-code"
TO_MARKDOWN = "notebook:change-cell-to-markdown"
RUN_CELL = "notebook:run-cell"  # runs (or renders) the active cell and keeps it active
COMMANDS = (INSERT_BELOW, SET_TEXT, TO_CODE, TO_MARKDOWN, RUN_CELL)

_SHELL_LANGUAGES = frozenset({"bash", "sh", "shell"})
_MARKDOWN_LANGUAGES = frozenset({"markdown", "md"})
_CLOSING_FENCE = re.compile(r"[\s>]*(`{3,}|~{3,})\s*")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block of a reply: its language ("" when the fence names none) and its code."""

    language: str
    code: str


def code_blocks(source: str | Reply | Message) -> list[CodeBlock]:
    """The fenced code blocks of a reply, a message or Markdown text, in order.

    A fence left open at the end of plain text closes with the text (CommonMark). A
    reply still streaming, or stopped part-way, has not finished its last block: an
    open fence at its end is left out, so half a block is never inserted or run.
    """
    text, finished = _text_of(source)
    from markdown_it import MarkdownIt  # imported on first use: `import nbchat` stays light

    lines = text.splitlines()
    blocks = []
    for token in MarkdownIt("commonmark").parse(text):
        if token.type != "fence":
            continue
        if not finished and token.map is not None and not _is_closed(token.markup, token.map, lines):
            continue
        language = token.info.split(maxsplit=1)[0] if token.info.strip() else ""
        blocks.append(CodeBlock(language.strip("{}.").lower(), token.content))
    return blocks


def _text_of(source: object) -> tuple[str, bool]:
    """The Markdown of ``source`` and whether it is finished (its last fence, if open, is done)."""
    if isinstance(source, str):
        return source, True
    from nbchat.reply import Reply
    from nbchat.types import Message

    if isinstance(source, Reply):
        return source.text, source.done and not source.partial
    if isinstance(source, Message):
        stats: Mapping[str, Any] = source.stats or {}
        return source.content, not stats.get("partial", False)
    raise TypeError(f"code_blocks takes text, a Reply or a Message, not {type(source).__name__}.")


def _is_closed(markup: str, span: list[int], lines: list[str]) -> bool:
    """Whether the fence opened with ``markup`` over lines ``span`` ends with a closing fence."""
    start, end = span
    if end < len(lines):
        return True  # something follows the block, so the block ended
    match = _CLOSING_FENCE.fullmatch(lines[end - 1]) if end - start >= 2 else None
    return match is not None and match[1][0] == markup[0] and len(match[1]) >= len(markup)


def cell_for(block: CodeBlock) -> tuple[CellType, str]:
    """The cell a block becomes: shell code runs under ``%%bash``, Markdown is a Markdown cell."""
    code = block.code.rstrip("\n")
    if block.language in _SHELL_LANGUAGES:
        return "code", "%%bash\n" + code
    if block.language in _MARKDOWN_LANGUAGES:
        return "markdown", code
    return "code", code


# -- the bridge to JupyterLab --------------------------------------------------------------------


class NotebookBridge:
    """New cells in the notebook this kernel serves, made with JupyterLab's own commands (via ipylab).

    Safe to call from a widget callback: ``available`` never blocks the kernel's
    own thread (waiting there could not help: the front end's answer is handled only
    after the callback returns), and ``insert``/``run`` only send commands.
    """

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._frontend: Any = None
        kernel = _kernel()
        if kernel is not None:
            ipylab = importlib.import_module("ipylab")  # needs ipywidgets: only where a kernel runs
            self._frontend = ipylab.JupyterFrontEnd()
            self._frontend.on_ready(self._ready.set)

    def available(self, timeout: float = 2.0) -> bool:
        """Whether a JupyterLab 4 or Notebook 7 front end answered the bridge.

        Off the kernel's main thread this waits up to ``timeout`` seconds for the
        answer; on it (a cell, a button's callback) it says at once what is known.
        """
        if self._ready.is_set():
            return self._has_commands()
        if self._frontend is None or threading.current_thread() is threading.main_thread():
            return False
        return self._ready.wait(max(0.0, timeout)) and self._has_commands()

    def insert(self, block: CodeBlock) -> None:
        """A new cell below the active one holding exactly ``block`` (``cell_for``); it becomes active.

        Successive inserts therefore keep their order. A Markdown block becomes a
        rendered Markdown cell.
        """
        self._insert(block, run=False)

    def run(self, block: CodeBlock) -> None:
        """Insert ``block`` as ``insert`` does, then run it in this kernel (its output in the new cell)."""
        self._insert(block, run=True)

    def _insert(self, block: CodeBlock, *, run: bool) -> None:
        if not self.available(timeout=0):
            raise FrontEndUnavailable(self._unavailable_reason(run))
        kind, text = cell_for(block)
        commands = self._frontend.commands
        commands.execute(INSERT_BELOW)
        commands.execute(TO_MARKDOWN if kind == "markdown" else TO_CODE)  # whatever the default cell type
        commands.execute(SET_TEXT, {"text": text})
        if run or kind == "markdown":
            commands.execute(RUN_CELL)  # a Markdown cell is rendered, not executed

    def _has_commands(self) -> bool:
        """Whether the front end listed JupyterLab's notebook commands (it does so before ``lab_ready``).

        ipylab's model loaded outside JupyterLab (VS Code fetches widget code from a CDN) still
        says ``lab_ready`` but lists no commands: that is no front end the bridge can drive.
        """
        known = set(self._frontend.commands.list_commands()) if self._frontend is not None else set()
        return all(command in known for command in COMMANDS)

    def _unavailable_reason(self, run: bool) -> str:
        action = "Run" if run else "Insert"
        if self._frontend is None:
            where = "this is not a Jupyter kernel with a front end (a plain IPython shell or script)"
        elif self._ready.is_set():
            where = "this front end answered but has none of JupyterLab's notebook commands"
        else:
            where = (
                "no JupyterLab 4 or Notebook 7 answered this kernel (VS Code, the classic notebook and "
                "nbval cannot be driven); in JupyterLab, the bridge connects once the running cell "
                "finishes, so try again then"
            )
        return (
            f"{action} needs JupyterLab 4 or Notebook 7: {where}. "
            "Copy the code instead, or use %chat --cell to get it as the next cell."
        )


def _kernel() -> Any:
    """The ipykernel kernel this code runs in, or None (a plain IPython shell, a script)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    shell = get_ipython()
    return getattr(shell, "kernel", None) if shell is not None else None


_bridge: NotebookBridge | None = None
_bridge_lock = threading.Lock()


def notebook_bridge() -> NotebookBridge:
    """This kernel's one bridge, made on first use (call it early: see the module's note)."""
    global _bridge
    with _bridge_lock:
        if _bridge is None:
            _bridge = NotebookBridge()
        return _bridge
