"""The kernel's recent cells and its last error, as context for a question.

Sources are IPython's own: the raw source of each executed cell (``history_manager``), each
cell's result (``Out``, which IPython already keeps, so no cell pays for a second repr), and a
``post_run_cell`` hook (``install_cell_recorder``) for what IPython does not keep per cell:
which error a cell ended with. The last error is ``sys.last_value`` (set by IPython when it
shows a traceback), formatted as text and never ``str.format``-ed: braces stay braces.
"""

from __future__ import annotations

import os
import sys
import traceback
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from nbchat.context.guard import call_capped
from nbchat.context.summaries import SUMMARY_TIME_S, _repr
from nbchat.context.text import Lines, cut_head, cut_tail, fenced, one_line
from nbchat.errors import InvalidValue
from nbchat.types import ContextItem

#: The most cells one question may attach, and the characters they take together.
MAX_RECENT_CELLS = 20
MAX_CELLS_CHARS = 6_000
MAX_CELL_SOURCE_CHARS = 1_500
MAX_RESULT_CHARS = 500
#: A traceback's last characters (where its cause is).
MAX_ERROR_CHARS = 6_000
#: Errors remembered per kernel (older cells' errors are forgotten).
RECORDED_CELLS = 200

_CHAT_CELL_STARTS = ("%chat", "%%chat")
_RESULT = _repr(MAX_RESULT_CHARS)


def current_shell() -> Any:
    """The running IPython shell, or None (IPython is never imported for this)."""
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    return get_ipython()


class CellRecorder:
    """``pre_run_cell``/``post_run_cell`` hooks: the cell running now, and each cell's error."""

    def __init__(self, shell: Any) -> None:
        self.errors: OrderedDict[int, str] = OrderedDict()
        self.running: int | None = None
        self._shell = weakref.ref(shell)

    def started(self, info: Any) -> None:
        shell = self._shell()
        # IPython has already counted the cell that starts: its number is one less.
        if shell is not None and getattr(info, "store_history", False):
            self.running = int(shell.execution_count) - 1

    def __call__(self, result: Any) -> None:
        self.running = None
        number = getattr(result, "execution_count", None)
        error = getattr(result, "error_before_exec", None) or getattr(result, "error_in_exec", None)
        if not isinstance(number, int) or error is None:
            return
        try:
            text = "".join(traceback.format_exception_only(type(error), error))
        except Exception:  # an exception whose __str__ fails still has a type
            text = type(error).__name__
        self.errors[number] = one_line(text, MAX_RESULT_CHARS)
        while len(self.errors) > RECORDED_CELLS:
            self.errors.popitem(last=False)


_recorders: weakref.WeakKeyDictionary[Any, CellRecorder] = weakref.WeakKeyDictionary()


def install_cell_recorder(shell: Any) -> None:
    """Register this shell's recorder once (calling it again changes nothing)."""
    if shell is None or shell in _recorders:
        return
    recorder = CellRecorder(shell)
    shell.events.register("pre_run_cell", recorder.started)
    shell.events.register("post_run_cell", recorder)
    _recorders[shell] = recorder


def _asking_cells(shell: Any, recorder: CellRecorder | None) -> set[int]:
    """The numbers of the cells running now: their code is on this thread's stack.

    IPython names each cell's compiled code and maps the name to its number
    (``compile._filename_map``); the recorder's ``pre_run_cell`` hook covers IPythons without it.
    """
    numbers = {recorder.running} if recorder is not None and recorder.running is not None else set()
    names = getattr(getattr(shell, "compile", None), "_filename_map", None)
    if isinstance(names, dict):
        frame = sys._getframe()
        while frame is not None:
            number = names.get(frame.f_code.co_filename)
            if isinstance(number, int):
                numbers.add(number)
            frame = frame.f_back  # type: ignore[assignment]
    return numbers


def _is_chat_cell(source: str) -> bool:
    return source.lstrip().startswith(_CHAT_CELL_STARTS)


def recent_cells(count: int, shell: Any = None) -> ContextItem | None:
    """The last ``count`` executed cells before the asking one, with results and errors.

    Cells that are themselves ``%chat``/``%%chat`` are skipped (their question and answer are
    already in the conversation), and so are empty ones. None when there are none.
    """
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_RECENT_CELLS:
        raise InvalidValue(
            f"The number of recent cells to attach must be 0 to {MAX_RECENT_CELLS}, not {count!r}."
        )
    shell = shell if shell is not None else current_shell()
    if count == 0 or shell is None:
        return None
    install_cell_recorder(shell)
    recorder = _recorders.get(shell)
    history = shell.history_manager
    sources: list[str] = list(history.input_hist_raw)
    asking = _asking_cells(shell, recorder)
    numbers: list[int] = []
    for number in range(len(sources) - 1, 0, -1):  # newest first, stopping once enough are found
        if len(numbers) == count:
            break
        source = sources[number]
        if number not in asking and source.strip() and not _is_chat_cell(source):
            numbers.insert(0, number)
    if not numbers:
        return None
    outputs = getattr(history, "output_hist", {})
    per_cell = max(300, min(MAX_CELL_SOURCE_CHARS, MAX_CELLS_CHARS // len(numbers) - MAX_RESULT_CHARS))
    lines = Lines(MAX_CELLS_CHARS)
    noun = "cell" if len(numbers) == 1 else "cells"
    lines.add(f"The last {len(numbers)} {noun} run in this kernel, oldest first:")
    for number in numbers:
        lines.add(f"\nIn [{number}]:\n" + fenced(cut_head(sources[number], per_cell), "python"))
        error = recorder.errors.get(number) if recorder is not None else None
        if error is not None:
            lines.add(f"Error in [{number}]: {error}")
        elif number in outputs:
            lines.add(f"Out [{number}]: {_bounded_repr(outputs[number])}")
    return ContextItem("cells", "cells", f"{len(numbers)} {noun}", lines.text())


def _bounded_repr(value: object) -> str:
    outcome = call_capped(lambda: _RESULT.repr(value), SUMMARY_TIME_S)
    if outcome.timed_out:
        return f"a {type(value).__name__} (its repr took longer than {SUMMARY_TIME_S:g} s)"
    if outcome.error is not None or not isinstance(outcome.value, str):
        return f"a {type(value).__name__} (its repr failed)"
    return one_line(outcome.value, MAX_RESULT_CHARS)


def _ipython_dir() -> str | None:
    module = sys.modules.get("IPython")
    file = getattr(module, "__file__", None)
    return str(Path(file).parent) + os.sep if isinstance(file, str) else None


def last_error(shell: Any = None) -> ContextItem | None:
    """The kernel's last traceback (its last ``MAX_ERROR_CHARS``), or None when none happened.

    ``shell`` is accepted for symmetry with ``recent_cells``: IPython keeps the last error in
    ``sys.last_value`` for every shell of the process.
    """
    value = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    if not isinstance(value, BaseException):
        return None
    tb = value.__traceback__
    ipython = _ipython_dir()
    while ipython and tb is not None and tb.tb_frame.f_code.co_filename.startswith(ipython):
        tb = tb.tb_next  # IPython's own run_code frames say nothing about the user's error
    try:
        text = "".join(traceback.format_exception(type(value), value, tb))
    except Exception:  # a broken __str__ must not lose the error's type
        text = f"{type(value).__name__} (its message could not be read)"
    name = type(value).__name__
    summary = fenced(cut_tail(text.rstrip(), MAX_ERROR_CHARS))
    return ContextItem("error", one_line(name, 200), one_line(name, 200), summary)
