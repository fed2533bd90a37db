"""Recent cells and the last error, read from a real IPython shell's own history."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from nbchat.context import (
    MAX_CELLS_CHARS,
    MAX_ERROR_CHARS,
    install_cell_recorder,
    last_error,
    recent_cells,
    user_namespace,
)
from nbchat.errors import InvalidValue


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    install_cell_recorder(shell)
    yield shell
    shell.run_cell("%reset -f", store_history=False)


def run(shell: InteractiveShell, cell: str) -> None:
    with capture_output():
        shell.run_cell(cell, store_history=True)


def test_the_last_cells_come_with_their_results_and_errors_oldest_first(shell: InteractiveShell) -> None:
    run(shell, "x = 41")
    first = shell.execution_count
    run(shell, "x + 1")
    run(shell, "1 / 0")
    item = recent_cells(2, shell)
    assert item is not None and item.kind == "cells" and item.name == "cells" and item.label == "2 cells"
    assert item.summary == (
        "The last 2 cells run in this kernel, oldest first:\n"
        f"\nIn [{first}]:\n```python\nx + 1\n```\n"
        f"Out [{first}]: 42\n"
        f"\nIn [{first + 1}]:\n```python\n1 / 0\n```\n"
        f"Error in [{first + 1}]: ZeroDivisionError: division by zero"
    )


def test_the_asking_cell_is_not_counted(shell: InteractiveShell) -> None:
    run(shell, "a = 'before'")
    shell.user_ns["recent_cells"] = recent_cells
    run(shell, "asked = recent_cells(1)")
    summary = shell.user_ns["asked"].summary
    assert "a = 'before'" in summary and "asked = " not in summary


def test_chat_cells_and_empty_cells_are_skipped(shell: InteractiveShell) -> None:
    run(shell, "y = 2")
    run(shell, "%chat what is y?")  # a chat cell (the extension need not even be loaded)
    run(shell, "%%chat\nand now?")
    item = recent_cells(1, shell)
    assert item is not None and "y = 2" in item.summary and "%chat" not in item.summary


def test_asking_for_more_cells_than_ran_gives_what_there_is(shell: InteractiveShell) -> None:
    run(shell, "z = 3")
    item = recent_cells(20, shell)
    assert item is not None
    assert int(item.label.split()[0]) <= 20 and "z = 3" in item.summary


def test_no_cells_or_no_shell_gives_none_and_bad_counts_are_refused(shell: InteractiveShell) -> None:
    assert recent_cells(0, shell) is None
    for bad in (-1, 21, True):
        with pytest.raises(InvalidValue, match="0 to 20"):
            recent_cells(bad, shell)  # type: ignore[arg-type]


def test_long_cells_are_bounded(shell: InteractiveShell) -> None:
    for index in range(5):
        run(shell, f"v{index} = 1\n" + "# filler\n" * 2_000)
    item = recent_cells(5, shell)
    assert item is not None and len(item.summary) <= MAX_CELLS_CHARS
    assert item.summary.count("In [") == 5


def test_a_result_whose_repr_hangs_is_left_behind(shell: InteractiveShell) -> None:
    run(shell, "import time\nclass Slow:\n    def __repr__(self):\n        time.sleep(3)\n        return 'S'")
    shell.history_manager.output_hist[shell.execution_count - 1] = shell.user_ns["Slow"]()  # as if shown
    item = recent_cells(1, shell)
    assert item is not None and "a Slow (its repr took longer than 0.5 s)" in item.summary


def test_installing_the_recorder_twice_registers_it_once(shell: InteractiveShell) -> None:
    before = len(shell.events.callbacks["post_run_cell"])
    install_cell_recorder(shell)
    install_cell_recorder(shell)
    assert len(shell.events.callbacks["post_run_cell"]) == before


def test_the_last_error_is_the_traceback_with_its_braces_untouched(shell: InteractiveShell) -> None:
    run(shell, "def parse(s):\n    return {'a': 1}[s]\n")
    run(shell, "parse('{0} and {}')")
    item = last_error(shell)
    assert item is not None and item.kind == "error"
    assert item.name == "KeyError" and item.label == "KeyError"
    assert item.summary.startswith("```\nTraceback (most recent call last):\n")
    assert "interactiveshell.py" not in item.summary  # IPython's own frames are left out
    assert "return {'a': 1}[s]" in item.summary
    assert item.summary.rstrip("`\n").endswith("KeyError: '{0} and {}'")


def test_a_long_traceback_keeps_its_end(shell: InteractiveShell) -> None:
    chain = "\n".join(f"def f{i}(): return f{i + 1}()" for i in range(300)) + "\ndef f300(): return 1 / 0"
    run(shell, f"exec({chain!r})")
    run(shell, "f0()")
    item = last_error(shell)
    assert item is not None and len(item.summary) <= MAX_ERROR_CHARS + 20
    assert item.summary.startswith("```\n…\n")
    assert item.summary.endswith("ZeroDivisionError: division by zero\n```")


def test_no_error_yet_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("last_value", "last_exc", "last_type", "last_traceback"):
        monkeypatch.delattr(sys, name, raising=False)
    assert last_error() is None


def test_the_namespace_is_the_shells_own(shell: InteractiveShell) -> None:
    run(shell, "mine = 7")
    assert user_namespace()["mine"] == 7
