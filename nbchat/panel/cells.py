"""One panel per notebook cell: re-running ``nbchat.panel()`` closes the panel its cell showed before.

Otherwise every re-run would leave a panel behind that ipywidgets keeps, still
redrawing on every change of the session.
"""

from __future__ import annotations

import weakref

from nbchat.panel.controller import ChatPanel
from nbchat.session import ChatSession

#: The panel each cell showed last, by cell id (None: a front end that sends no cell id).
_shown_by_cell: weakref.WeakValueDictionary[str | None, ChatPanel] = weakref.WeakValueDictionary()


def panel(session: ChatSession | None = None) -> None:
    """Show the chat panel in this cell (``nbchat.ChatPanel()`` gives you the widget itself).

    Re-running the cell closes the panel it showed before, and so does running
    any cell after a cell was deleted; where the front end does not say which
    cell runs, the panel last shown that way is replaced.
    """
    from IPython.display import display

    cell, deleted = running_cell()
    for gone in (*deleted, cell):
        previous = _shown_by_cell.pop(gone, None)
        if previous is not None:
            previous.close()
    shown = ChatPanel(session)
    _shown_by_cell[cell] = shown
    display(shown)


def running_cell() -> tuple[str | None, tuple[str, ...]]:
    """The id of the cell being run, and of the cells deleted since the last run.

    JupyterLab and Notebook 7 send both in the execute request's metadata
    (``cellId``, ``deletedCells``); ipykernel keeps that request as the parent
    message (``kernel.get_parent()``). Outside a kernel: ``(None, ())``.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return None, ()
    kernel = getattr(get_ipython(), "kernel", None)
    parent = kernel.get_parent() if kernel is not None and hasattr(kernel, "get_parent") else None
    metadata = parent.get("metadata") if isinstance(parent, dict) else None
    if not isinstance(metadata, dict):
        return None, ()
    cell, deleted = metadata.get("cellId"), metadata.get("deletedCells")
    return (
        cell if isinstance(cell, str) else None,
        tuple(d for d in deleted if isinstance(d, str)) if isinstance(deleted, list) else (),
    )
