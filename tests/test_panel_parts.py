"""Each part of the panel on its own: it shows what it is given and reports what a person did.

No part knows the session or another part (the controller wires them), so
each is driven here with plain values and callbacks.
"""

from __future__ import annotations

from typing import Any

from nbchat.notebook import CodeBlock
from nbchat.panel.composer import Composer
from nbchat.panel.context_row import ContextRow
from nbchat.panel.conversation_bar import ConversationBar
from nbchat.panel.login_form import LoginForm
from nbchat.panel.message_list import MessageList
from nbchat.panel.settings_row import CHOOSE_MODEL, SettingsRow
from nbchat.types import ContextItem, Conversation, ConversationSettings, Message, new_id, utcnow


def test_the_login_form_reports_the_stripped_name_and_always_empties_the_password() -> None:
    heard: list[tuple[str, str, bool]] = []
    form = LoginForm(lambda name, password, register: heard.append((name, password, register)))
    form.username.value, form.password.value = "  alice ", "secret words"
    form.register_button.click()
    assert heard == [("alice", "secret words", True)] and form.password.value == ""
    form.refused("Wrong password for alice.")
    assert "nbchat-error" in form.message.value and form.username.value == "  alice "  # to try again
    form.accepted()
    assert form.username.value == ""


def test_settings_written_by_show_are_not_reported_back_but_a_persons_change_is() -> None:
    heard: list[tuple[str, Any]] = []
    row = SettingsRow(
        on_model=lambda model: heard.append(("model", model)),
        on_setting=lambda name, value: heard.append((name, value)),
        on_refresh_models=lambda: None,
    )
    row.offer(["ollama:a"], None, None)
    row.show(ConversationSettings(model="/models/my-local", temperature=0.2, system="Be brief."))
    assert heard == []
    assert [value for _, value in row.model.options] == ["", "ollama:a", "/models/my-local"]
    row.temperature.value = 0.9
    row.model.value = ""
    assert heard == [("temperature", 0.9), ("model", None)]
    row.clear()
    assert row.model.options == ((CHOOSE_MODEL, ""),) and row.system.value == ""


def conversation(title: str) -> Conversation:
    now = utcnow()
    return Conversation(new_id(), title, now, now)


def test_the_conversation_bar_asks_inline_and_calls_back_with_the_shown_conversation() -> None:
    renamed: list[tuple[str, str]] = []
    deleted: list[str] = []
    picked: list[str] = []
    accept = {"rename": False}
    bar = ConversationBar(
        on_logout=lambda: None,
        on_pick=picked.append,
        on_new=lambda: None,
        on_rename=lambda cid, title: bool(renamed.append((cid, title))) or accept["rename"],
        on_delete=deleted.append,
    )
    first, second = conversation("Plans"), conversation("Ideas")
    summaries = [first.summary, second.summary]
    bar.show("alice", hub=False, summaries=summaries, current=first)
    assert picked == [] and bar.conversations.value == first.id
    bar.rename_button.click()
    assert bar.rename_text.value == "Plans" and bar.rename_row.layout.display == "flex"
    bar.rename_text.value = "Plans 2"
    bar.rename_ok.click()
    assert renamed == [(first.id, "Plans 2")] and bar.rename_row.layout.display == "flex"  # refused: stays
    accept["rename"] = True
    bar.rename_ok.click()
    assert bar.rename_row.layout.display == "none"
    bar.delete_button.click()
    assert "Plans" in bar.delete_question.value
    bar.delete_ok.click()
    assert deleted == [first.id] and bar.delete_row.layout.display == "none"
    bar.conversations.value = second.id
    assert picked == [second.id]


def test_the_message_list_keeps_a_shown_message_s_widget_and_closes_the_ones_it_drops() -> None:
    question, answer = Message("user", "hi"), Message("assistant", "hello")
    messages = MessageList()
    messages.show([question])
    first = messages.view.children[0]
    messages.show([question, answer])
    assert messages.view.children[0] is first and len(messages.view.children) == 2
    messages.show([question], unsaved={question.id: "lost **reply**"})
    unsaved = messages.view.children[1]
    assert "nbchat-unsaved" in unsaved._dom_classes and unsaved.outputs[0]["data"]["text/markdown"] == (
        "lost **reply**"
    )
    messages.clear()
    assert messages.view.children == () and first.comm is None and unsaved.comm is None


def test_the_composer_refuses_an_empty_prompt_and_sends_nothing_while_disabled() -> None:
    sent: list[str] = []
    composer = Composer(on_send=sent.append, on_stop=lambda: None)
    composer.set_busy(False, "ollama:a")
    composer.prompt.value = "   "
    composer.send_button.click()
    assert sent == [] and "Type a message first." in composer.status.value
    composer.prompt.value = "hello"
    composer.set_busy(True, "ollama:a")
    composer.send_button.click()
    assert sent == [] and not composer.stop_button.disabled
    composer.set_busy(False, "ollama:a")
    composer.send_button.click()
    assert sent == ["hello"]


def test_a_question_shows_its_context_folded_under_the_label_and_escaped() -> None:
    items = (
        ContextItem("object", "df", "DataFrame 1,000 × 5", "| a |\n|---|\n| <b>x</b> |"),
        ContextItem("cells", "cells", "2 cells", "In [1]: x = 1"),
        ContextItem("error", "ZeroDivisionError", "ZeroDivisionError", "ZeroDivisionError: division by zero"),
    )
    messages = MessageList()
    messages.show([Message("user", "what is @df?", context=items), Message("user", "plain")])
    attached, plain = (child.value for child in messages.view.children)
    assert (
        "<details class='nbchat-context'><summary>Context: @df (DataFrame 1,000 × 5), 2 cells, last error"
        in (attached)
    )
    assert "@df · DataFrame 1,000 × 5" in attached and "Last error: ZeroDivisionError" in attached
    assert "&lt;b&gt;x&lt;/b&gt;" in attached and "<b>x</b>" not in attached  # the user's data, escaped
    assert "nbchat-context" not in plain


def test_a_reply_s_code_blocks_each_report_insert_and_run_with_their_block() -> None:
    inserted: list[CodeBlock] = []
    ran: list[CodeBlock] = []
    messages = MessageList(on_insert=inserted.append, on_run=ran.append)
    reply = Message("assistant", "A:\n\n```python\nx = 1\n```\n\nB:\n\n~~~sh\nls -l\n~~~\n")
    messages.show([Message("user", "code please"), reply, Message("assistant", "no code")])
    _question, _answer, actions, no_code = messages.view.children
    assert "nbchat-code-actions" in actions._dom_classes and "nbchat-code-actions" not in no_code._dom_classes
    first, second = actions.children
    assert "<code>python</code> · 1 line · " in first.children[0].value and "x = 1" in first.children[0].value
    second.children[2].click()
    first.children[3].click()
    assert inserted == [CodeBlock("sh", "ls -l\n")] and ran == [CodeBlock("python", "x = 1\n")]
    messages.show([Message("user", "code please")])
    assert actions.comm is None and first.children[1].comm is None  # let go with their reply


def test_the_context_row_counts_cells_from_zero_and_is_idle_while_streaming_or_without_a_model() -> None:
    explained: list[bool] = []
    row = ContextRow(on_explain=lambda: explained.append(True))
    assert row.cells == 0 and row.include_cells.value == 0
    row.include_cells.value = 3
    assert row.cells == 3
    row.set_busy(False, None)
    assert row.explain_button.disabled
    row.set_busy(True, "ollama:a")
    assert row.explain_button.disabled and row.include_cells.disabled
    row.set_busy(False, "ollama:a")
    row.explain_button.click()
    assert explained == [True] and not row.include_cells.disabled
    row.clear()
    assert row.cells == 0
