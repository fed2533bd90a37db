"""The panel's side of issue 12: what a question attaches (``@name``, recent cells, the last error)
and what a reply's code blocks offer (Copy, Insert, Run), in process against a real session.

The kernel is a real IPython shell (``InteractiveShell.instance()``): its
namespace is what ``@name`` reads, its cells are what *Recent cells* attaches
and its last traceback what *Explain last error* sends. What reached the model
is read from the loopback Ollama server's recorded requests. There is no
notebook front end here, so Insert and Run must say so in the status line; the
browser suite (``test_browser_context.py``) clicks them in a real JupyterLab.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell
from polling import wait_until

from conftest import PASSWORD
from nbchat import ChatSession
from nbchat.panel import ChatPanel
from nbchat.panel.code_actions import blocks_of
from nbchat.panel.code_buttons import CopyButton
from nbchat.testing.ollama_server import OllamaTestServer

MODEL = "ollama:llama3.2:1b"
FENCED = [
    "Try ",
    "this:\n\n",
    "```python\n",
    "print(sum(range(4)))\n",
    "```\n\n",
    "and:\n\n",
    "```bash\n",
    "ls\n",
    "```\n",
]


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    yield shell
    shell.run_cell("%reset -f", store_history=False)


@pytest.fixture
def panel(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> Iterator[ChatPanel]:
    session = make_session(server, "alice")
    session.login("alice", PASSWORD)
    panel = ChatPanel(session)
    panel.new_button.click()
    panel.model.value = MODEL
    yield panel
    panel.close()


def send(panel: ChatPanel, text: str) -> None:
    panel.prompt.value = text
    panel.send_button.click()
    ended(panel)


def ended(panel: ChatPanel) -> None:
    wait_until(lambda: panel.session.reply is not None and panel.session.reply.done)
    wait_until(lambda: panel._live is None and panel.stop_button.disabled)


def answered(panel: ChatPanel, text: str) -> None:
    """A question asked from code (the session the panel shows): the reply ends drawn in the panel."""
    panel.session.send(text)
    ended(panel)


def last_sent(server: OllamaTestServer) -> str:
    """The newest user message the model was given (prompt and context together)."""
    chats = [r["body"] for r in server.requests if r["path"] == "/api/chat"]
    return str(chats[-1]["messages"][-1]["content"])


def user_widgets(panel: ChatPanel) -> list[str]:
    return [c.value for c in panel.messages.children if "nbchat-message-user" in c._dom_classes]


def action_boxes(panel: ChatPanel) -> list[object]:
    return [c for c in panel.messages.children if "nbchat-code-actions" in c._dom_classes]


# -- context in ---------------------------------------------------------------------------------


def test_a_mentioned_variable_is_summarised_for_the_model_and_shown_folded_with_the_question(
    panel: ChatPanel, server: OllamaTestServer, shell: InteractiveShell
) -> None:
    shell.run_cell("scores = [3, 1, 4, 1, 5, 9, 2, 6]\nnote = 'a ' + 'b' * 30", store_history=True)
    send(panel, "what is in @scores and @note?")
    sent = last_sent(server)
    assert sent.startswith("what is in @scores and @note?") and "9" in sent and "bbbbbbbb" in sent
    (question,) = user_widgets(panel)
    assert "<details class='nbchat-context'>" in question
    assert "Context: @scores" in question and "@note" in question
    saved = panel.session.current.messages[0]  # type: ignore[union-attr]
    assert [item.name for item in saved.context] == ["scores", "note"]


def test_an_unknown_mention_is_refused_in_the_status_line_and_nothing_is_sent_or_saved(
    panel: ChatPanel, server: OllamaTestServer, shell: InteractiveShell
) -> None:
    shell.run_cell("frame = 1", store_history=True)
    panel.prompt.value = "describe @frme"
    panel.send_button.click()
    assert "nbchat-error" in panel.status.value and "frame" in panel.status.value  # the close match
    assert panel.prompt.value == "describe @frme"  # kept, to fix the typo
    assert panel.session.reply is None and panel.session.current.messages == ()  # type: ignore[union-attr]
    assert not [r for r in server.requests if r["path"] == "/api/chat"]


def test_a_double_at_sign_is_a_literal_mention_and_attaches_nothing(
    panel: ChatPanel, server: OllamaTestServer, shell: InteractiveShell
) -> None:
    send(panel, "email me @@home")
    assert last_sent(server) == "email me @home"
    assert "nbchat-context" not in user_widgets(panel)[0]


def test_recent_cells_start_at_zero_and_the_chosen_count_goes_with_the_next_question(
    panel: ChatPanel, server: OllamaTestServer, shell: InteractiveShell
) -> None:
    assert panel.include_cells.value == 0
    shell.run_cell("alpha_cell = 40 + 2", store_history=True)
    shell.run_cell("alpha_cell * 10", store_history=True)
    send(panel, "no cells please")
    assert "alpha_cell" not in last_sent(server)
    panel.include_cells.value = 2
    send(panel, "what did I just run?")
    sent = last_sent(server)
    assert "alpha_cell = 40 + 2" in sent and "alpha_cell * 10" in sent and "420" in sent
    assert "2 cells" in user_widgets(panel)[-1]


def test_explain_last_error_sends_the_traceback_and_shows_it_attached(
    panel: ChatPanel, server: OllamaTestServer, shell: InteractiveShell
) -> None:
    shell.run_cell("ratio = {'a': 1}\n1 / 0", store_history=True)
    panel.explain_button.click()
    wait_until(lambda: panel.session.reply is not None and panel.session.reply.done)
    sent = last_sent(server)
    assert sent.startswith("Explain this error and how to fix it") and "ZeroDivisionError" in sent
    assert "{'a': 1}" in sent or "1 / 0" in sent  # the traceback as it was, braces untouched
    wait_until(lambda: "last error" in user_widgets(panel)[-1])


def test_explain_last_error_with_no_error_yet_says_so_in_the_status_line(
    panel: ChatPanel, server: OllamaTestServer, shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("last_exc", "last_type", "last_value", "last_traceback"):  # where IPython keeps it
        monkeypatch.delattr(sys, name, raising=False)
    panel.explain_button.click()
    assert "nbchat-error" in panel.status.value and "No error" in panel.status.value
    assert panel.session.reply is None


def test_the_context_controls_are_disabled_while_a_reply_streams(
    panel: ChatPanel, server: OllamaTestServer, shell: InteractiveShell
) -> None:
    server.reply_words = [f"w{i} " for i in range(30)]
    server.chunk_delay_s = 0.05
    panel.prompt.value = "stream a while"
    panel.send_button.click()
    wait_until(lambda: panel._live is not None)
    assert panel.explain_button.disabled and panel.include_cells.disabled
    wait_until(lambda: panel.session.reply is not None and panel.session.reply.done)
    wait_until(lambda: not panel.explain_button.disabled)
    assert not panel.include_cells.disabled


def test_a_reloaded_conversation_still_shows_what_each_question_attached(
    panel: ChatPanel, server: OllamaTestServer, shell: InteractiveShell
) -> None:
    shell.run_cell("weights = (0.25, 0.75)", store_history=True)
    send(panel, "normalise @weights")
    conversation_id = panel.session.current.id  # type: ignore[union-attr]
    panel.logout_button.click()
    panel.username.value, panel.password.value = "alice", PASSWORD
    panel.login_button.click()
    panel.conversations.value = conversation_id
    again = ChatPanel(panel.session)  # a fresh panel draws it from the file alone
    try:
        shown = [c.value for c in again.messages.children if "nbchat-message-user" in c._dom_classes]
        assert len(shown) == 1 and "nbchat-context" in shown[0] and "@weights" in shown[0]
        assert "0.75" in shown[0]
    finally:
        again.close()


# -- code out -----------------------------------------------------------------------------------


def test_each_code_block_of_a_reply_gets_copy_insert_and_run_once_it_has_ended(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    server.reply_words = FENCED
    server.chunk_delay_s = 0.05
    panel.session.send("show me code")
    wait_until(lambda: panel._live is not None)
    assert action_boxes(panel) == []  # not while it streams
    wait_until(lambda: panel.session.reply is not None and panel.session.reply.done)
    wait_until(lambda: len(action_boxes(panel)) == 1)
    (box,) = action_boxes(panel)
    assert [(b.language, b.code) for b in blocks_of(box)] == [  # type: ignore[arg-type]
        ("python", "print(sum(range(4)))\n"),
        ("bash", "ls\n"),
    ]
    rows = box.children  # type: ignore[attr-defined]
    classes = [[c._dom_classes for c in row.children[1:]] for row in rows]
    assert classes == [[("nbchat-code-copy",), ("nbchat-code-insert",), ("nbchat-code-run",)]] * 2
    copy = rows[0].children[1]
    assert isinstance(copy, CopyButton) and copy.text == "print(sum(range(4)))\n"
    assert panel.messages.children.index(box) == len(panel.messages.children) - 1  # under its reply


def test_a_reply_without_code_gets_no_code_actions(panel: ChatPanel, server: OllamaTestServer) -> None:
    server.reply_words = ["no ", "code ", "here, only `inline`"]
    answered(panel, "talk")
    assert action_boxes(panel) == []


def test_insert_and_run_without_a_notebook_front_end_say_so_and_raise_nothing(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    server.reply_words = FENCED
    answered(panel, "show me code")
    (box,) = action_boxes(panel)
    row = box.children[0]  # type: ignore[attr-defined]
    insert, run = row.children[2], row.children[3]
    insert.click()
    assert "nbchat-error" in panel.status.value and "JupyterLab 4 or Notebook 7" in panel.status.value
    panel.composer.say("")
    run.click()
    assert "nbchat-error" in panel.status.value and "JupyterLab 4 or Notebook 7" in panel.status.value


def test_the_browser_telling_it_copied_shows_in_the_status_line(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    server.reply_words = FENCED
    answered(panel, "show me code")
    copy = action_boxes(panel)[0].children[0].children[1]  # type: ignore[attr-defined]
    copy._handle_custom_msg({"event": "copied", "ok": True}, [])  # the message its JS sends
    assert "Copied" in panel.status.value
    copy._handle_custom_msg({"event": "copied", "ok": False}, [])
    assert "nbchat-error" in panel.status.value and "Ctrl+C" in panel.status.value


def test_code_actions_are_closed_with_their_message(panel: ChatPanel, server: OllamaTestServer) -> None:
    server.reply_words = FENCED
    answered(panel, "show me code")
    (box,) = action_boxes(panel)
    copy = box.children[0].children[1]  # type: ignore[attr-defined]
    panel.new_button.click()  # another conversation: the old messages are let go
    assert box.comm is None and copy.comm is None


def test_a_reply_keeps_its_code_actions_when_later_messages_arrive(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    server.reply_words = FENCED
    answered(panel, "show me code")
    (box,) = action_boxes(panel)
    server.reply_words = None
    answered(panel, "thanks")
    assert action_boxes(panel) == [box] and box.comm is not None
    assert all(button.comm is not None for row in box.children for button in row.children)
    children = list(panel.messages.children)
    assert children.index(box) == 2 and len(children) == 5  # question, reply, its actions, question, reply
