"""The chat panel: a whole chat app in a notebook cell, built from ipywidgets on the kernel's session.

``nbchat.panel()`` (or ``display(nbchat.ChatPanel())``) shows it. The panel
holds no state of its own that matters: every action goes to the session, and
every change of the session (from this panel, another one, the ``%chat``
magic or user code) redraws every panel from the session, so several panels
in one kernel always agree. Logged out it is a login form; logged in, a
conversation picker, the conversation's settings, its messages and a prompt.

The original app's safety rules hold: a new conversation starts on
"— choose a model —", creating or deleting one shows that again, Send stays
disabled until a model is chosen, the settings belong to the conversation and
come back when switching to it, and logging out empties every widget.

A question can attach the kernel's own data: ``@name`` mentions (the session
resolves them), the last N cells (*Recent cells*) or the last error (*Explain
last error*); what it attached shows folded under it. Each fenced code block of
a finished reply gets Copy (in the browser), Insert and Run (a new cell below
the active one, through JupyterLab's own commands).

Replies stream in from the session's reply thread and are redrawn at most
every ``REDRAW_INTERVAL_S`` (not once per token), as Markdown rendered by
Jupyter itself (code blocks highlighted). A reply that could not be saved (a
full disk) stays shown, marked, with the reason in the status line. Every
control has a stable CSS class (``nbchat-send``, ...; listed in the README)
for tests and users' own styles.

Conversations grow as trees: the last reply has *Regenerate*, a question
*Edit*, and a message with alternatives "‹ 2 / 3 ›"; the list shows the newest
50 messages of the path shown, with *Show earlier* for the rest (no widget is
made for a hidden message). A search box finds words in every conversation and
opens a hit at its message; *Export* writes the conversation next to the notebook.

The modules: ``controller`` (``ChatPanel``: the session wired to the parts),
the parts ``login_form``, ``conversation_bar``, ``search_box``,
``export_control``, ``settings_row``, ``pull_row``, ``message_list`` (with
``message_view`` and its ``branch_bar``, ``code_actions`` and its
``code_buttons``, ``follow_newest``), ``live_reply``, ``context_row`` and
``composer`` (each knows nothing of the others or of the session), ``cells``
(one panel per notebook cell) and ``kit`` (what the parts share).
"""

from __future__ import annotations

import sys
import types

from nbchat.panel.cells import panel, running_cell
from nbchat.panel.controller import ChatPanel
from nbchat.panel.live_reply import REDRAW_INTERVAL_S
from nbchat.panel.settings_row import CHOOSE_MODEL
from nbchat.render import message_markdown
from nbchat.session import ChatSession

__all__ = ["CHOOSE_MODEL", "REDRAW_INTERVAL_S", "ChatPanel", "message_markdown", "panel", "running_cell"]


class _CallableModule(types.ModuleType):
    """``nbchat.panel()`` keeps working once this package is imported: importing it makes it the
    attribute ``nbchat.panel``, in place of the function of that name."""

    def __call__(self, session: ChatSession | None = None) -> None:
        panel(session)


sys.modules[__name__].__class__ = _CallableModule
