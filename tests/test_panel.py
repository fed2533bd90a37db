"""The chat panel's behaviour, driven through its widgets as a person's clicks would drive them.

The widgets run in this process against a real session, on scratch data and
the loopback Ollama server; the browser suite (``test_browser.py``) shows the
same panel rendered and clicked in JupyterLab.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from polling import wait_until

import nbchat
from conftest import PASSWORD
from nbchat import ChatSession
from nbchat.panel import CHOOSE_MODEL, ChatPanel, message_markdown
from nbchat.testing.ollama_server import OllamaTestServer

MODEL = "ollama:llama3.2:1b"


@pytest.fixture
def session(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> ChatSession:
    return make_session(server, "bob")


@pytest.fixture
def panel(session: ChatSession) -> ChatPanel:
    return ChatPanel(session)


def log_in(panel: ChatPanel, name: str = "alice", *, register: bool = True) -> None:
    panel.username.value = name
    panel.password.value = PASSWORD
    (panel.register_button if register else panel.login_button).click()


def start_chat(panel: ChatPanel, model: str = MODEL) -> None:
    log_in(panel)
    panel.new_button.click()
    panel.model.value = model


def send(panel: ChatPanel, text: str) -> None:
    panel.prompt.value = text
    panel.send_button.click()
    wait_until(lambda: panel.session.reply is not None and panel.session.reply.done)
    wait_until(lambda: panel._live is None and panel.stop_button.disabled)


def shown_messages(panel: ChatPanel) -> list[str]:
    """Each message as the panel shows it: user text, or the assistant's Markdown (a reply's code
    actions, the row under it, are not a message)."""
    shown = []
    for child in panel.messages.children:
        if "nbchat-code-actions" in child._dom_classes:
            continue
        if "nbchat-message-assistant" in child._dom_classes:
            shown.append(child.outputs[0]["data"]["text/markdown"])
        else:
            shown.append(child.value)
    return shown


# -- logging in ---------------------------------------------------------------------------------


def test_logged_out_the_panel_is_a_login_form(panel: ChatPanel) -> None:
    assert panel.login_view in panel.children and panel.chat_view not in panel.children


def test_a_wrong_password_is_an_inline_error_and_the_password_is_cleared(panel: ChatPanel) -> None:
    panel.username.value = "bob"
    panel.password.value = "wrong password"
    panel.login_button.click()
    assert "nbchat-error" in panel.login_message.value and "password" in panel.login_message.value
    assert panel.password.value == "" and panel.session.user is None


def test_register_refuses_a_bad_name_inline(panel: ChatPanel) -> None:
    panel.username.value = "../etc"
    panel.password.value = PASSWORD
    panel.register_button.click()
    assert "nbchat-error" in panel.login_message.value and panel.password.value == ""
    assert panel.session.user is None


def test_register_logs_in_and_shows_the_choose_a_model_state(panel: ChatPanel) -> None:
    log_in(panel)
    assert panel.chat_view in panel.children and "alice" in panel.user_label.value
    assert panel.model.options[0] == (CHOOSE_MODEL, "") and panel.model.value == ""
    assert [label for label, _ in panel.model.options[1:]] == [
        "ollama:llama3.2:1b",
        "ollama:qwen3:1.7b",
        "qwen3",
    ]
    assert panel.send_button.disabled and panel.password.value == ""


# -- the "choose a model" rules -----------------------------------------------------------------


def test_send_is_disabled_until_a_model_is_chosen(panel: ChatPanel) -> None:
    log_in(panel)
    panel.new_button.click()
    assert panel.model.value == "" and panel.send_button.disabled
    panel.model.value = MODEL
    assert not panel.send_button.disabled
    assert panel.session.settings.model == MODEL


def test_choosing_a_model_with_no_conversation_starts_one(panel: ChatPanel) -> None:
    log_in(panel)
    panel.model.value = MODEL
    assert panel.session.current is not None and panel.session.settings.model == MODEL
    assert panel.conversations.value == panel.session.current.id


def test_new_and_delete_reset_the_model_to_choose(panel: ChatPanel) -> None:
    start_chat(panel)
    panel.new_button.click()
    assert panel.model.value == "" and panel.send_button.disabled
    panel.model.value = MODEL
    panel.delete_button.click()
    assert "Delete" in panel.delete_question.value
    panel.delete_ok.click()
    assert panel.model.value == "" and panel.send_button.disabled
    assert len(panel.conversations.options) == 1


def test_settings_belong_to_the_conversation_and_come_back_when_switching(panel: ChatPanel) -> None:
    start_chat(panel)
    first = panel.conversations.value
    panel.temperature.value = 0.2
    panel.max_tokens.value = 64
    panel.think.value = True
    panel.system.value = "Be brief."
    panel.new_button.click()
    panel.model.value = "ollama:qwen3:1.7b"
    assert panel.temperature.value == 0.7 and panel.system.value == ""
    panel.conversations.value = first
    assert (panel.model.value, panel.temperature.value, panel.max_tokens.value) == (MODEL, 0.2, 64)
    assert panel.think.value is True and panel.system.value == "Be brief."


def test_a_bad_setting_is_refused_and_the_stored_value_shows_again(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    server.add_model(server_model("tiny:ctx", context_length=300))
    panel.session.register("carol", PASSWORD)
    panel.username.value, panel.password.value = "carol", PASSWORD
    panel.login_button.click()
    panel.refresh_models_button.click()
    panel.model.value = "ollama:tiny:ctx"
    panel.max_tokens.value = 5000
    assert "nbchat-error" in panel.status.value and "300" in panel.status.value
    assert panel.max_tokens.value == panel.session.settings.max_new_tokens < 300


def server_model(name: str, context_length: int) -> object:
    from nbchat.testing.ollama_server import FakeModel

    return FakeModel(name, thinking=False, context_length=context_length)


# -- chatting -----------------------------------------------------------------------------------


def test_a_reply_streams_in_and_is_shown_as_markdown(panel: ChatPanel, server: OllamaTestServer) -> None:
    start_chat(panel)
    server.reply_words = ["Here ", "is ", "`code`:\n\n", "```python\n", "print(1)\n", "```"]
    send(panel, "show me code")
    user, assistant = shown_messages(panel)
    assert "show me code" in user and "nbchat-bubble" in user
    assert assistant == "Here is `code`:\n\n```python\nprint(1)\n```"
    assert panel.prompt.value == "" and not panel.send_button.disabled
    assert "tokens/s" in panel.status.value


def test_user_text_is_escaped_not_rendered(panel: ChatPanel) -> None:
    start_chat(panel)
    send(panel, "<img src=x onerror=alert(1)>")
    assert "&lt;img src=x onerror=alert(1)&gt;" in shown_messages(panel)[0]


def test_while_generating_input_is_disabled_and_stop_keeps_the_partial_reply(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    start_chat(panel)
    server.chunk_count = 300
    server.chunk_delay_s = 0.02
    panel.prompt.value = "count"
    panel.send_button.click()
    wait_until(lambda: panel._live is not None and "w3" in panel._live.outputs[0]["data"]["text/markdown"])
    assert panel.send_button.disabled and panel.prompt.disabled and not panel.stop_button.disabled
    assert panel.model.disabled and panel.new_button.disabled
    panel.stop_button.click()
    wait_until(lambda: panel.session.reply is not None and panel.session.reply.done)
    wait_until(lambda: panel._live is None)
    assert shown_messages(panel)[-1].endswith("*(stopped)*")
    assert panel.session.history()[-1].stats["partial"] is True
    assert not panel.send_button.disabled and not panel.prompt.disabled and panel.stop_button.disabled


def test_the_stream_is_redrawn_at_a_bounded_rate(panel: ChatPanel, server: OllamaTestServer) -> None:
    start_chat(panel)
    server.chunk_count = 60
    server.chunk_delay_s = 0.01
    redraws: list[str] = []
    panel.prompt.value = "count"
    panel.send_button.click()
    wait_until(lambda: panel._live is not None)
    panel._live.observe(lambda change: redraws.append(change["new"]), names="outputs")  # type: ignore[union-attr]
    wait_until(lambda: panel._live is None)
    assert 1 <= len(redraws) < 60  # ~0.6 s of tokens at most every 0.08 s, not once per token
    assert "w59" in shown_messages(panel)[-1]


def test_an_engine_error_shows_in_the_status_line_and_the_partial_text_stays(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    start_chat(panel)
    server.fault = "midstream_error"
    send(panel, "one two three four")
    assert "nbchat-error" in panel.status.value
    assert "**Error:**" in shown_messages(panel)[-1]


def test_an_unreachable_ollama_leaves_a_note_and_the_local_model(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    server.stop()
    log_in(panel)
    assert [value for _, value in panel.model.options] == ["", "qwen3"]
    assert "Cannot reach Ollama" in panel.models_note.value


def test_rename_asks_for_the_title_inline(panel: ChatPanel) -> None:
    start_chat(panel)
    panel.rename_button.click()
    assert panel.rename_row.layout.display == "flex"
    panel.rename_text.value = "Plans"
    panel.rename_ok.click()
    assert panel.rename_row.layout.display == "none"
    assert panel.conversations.options[0][0] == "Plans"


def test_delete_can_be_called_off(panel: ChatPanel) -> None:
    start_chat(panel)
    panel.delete_button.click()
    panel.delete_cancel.click()
    assert len(panel.conversations.options) == 1 and panel.delete_row.layout.display == "none"


# -- logging out and several panels -------------------------------------------------------------


def test_logout_empties_every_widget_and_the_next_user_sees_nothing(panel: ChatPanel) -> None:
    start_chat(panel)
    panel.system.value = "secret system prompt"
    send(panel, "alice's secret")
    panel.prompt.value = "half-typed"
    panel.logout_button.click()
    assert panel.login_view in panel.children and panel.session.user is None
    assert panel.messages.children == () and panel.prompt.value == "" and panel.system.value == ""
    assert panel.conversations.options == () and panel.model.options == ((CHOOSE_MODEL, ""),)
    log_in(panel, "bob", register=False)
    assert panel.conversations.options == () and panel.messages.children == ()


def test_two_panels_in_one_kernel_stay_consistent(session: ChatSession) -> None:
    first, second = ChatPanel(session), ChatPanel(session)
    start_chat(first)
    assert second.chat_view in second.children and second.model.value == MODEL
    send(first, "hello from the first panel")
    assert shown_messages(second) == shown_messages(first)
    second.logout_button.click()
    assert first.login_view in first.children and first.messages.children == ()


def test_the_magic_and_the_panel_share_the_conversation(panel: ChatPanel) -> None:
    start_chat(panel)
    panel.session.send("sent from code").wait()
    wait_until(lambda: len(panel.messages.children) == 2)
    assert "sent from code" in shown_messages(panel)[0]


def test_saved_thinking_is_folded_and_a_stopped_reply_is_marked() -> None:
    from nbchat.types import Message

    message = Message("assistant", "42", thinking="hmm", stats={"finish_reason": "cancelled"})
    assert message_markdown(message) == (
        "<details><summary>Thinking</summary>\n\nhmm\n\n</details>\n\n42\n\n*(stopped)*"
    )


# -- JupyterHub and site policy ---------------------------------------------------------------


def test_under_jupyterhub_the_panel_shows_the_hub_user_and_no_login_form(session: ChatSession) -> None:
    hub_session = ChatSession(replace(session.config, hub_user="ann@uni.edu"), accounts=session.accounts)
    hub_session.login_from_hub()
    panel = ChatPanel(hub_session)
    assert panel.chat_view in panel.children and panel.login_view not in panel.children
    assert "ann@uni.edu" in panel.user_label.value and "(JupyterHub)" in panel.user_label.value
    assert panel.logout_button.layout.display == "none"


def test_closed_registration_hides_the_register_button(session: ChatSession) -> None:
    from nbchat.config import Policy

    closed = ChatSession(
        replace(session.config, policy=Policy(allow_registration=False)), accounts=session.accounts
    )
    panel = ChatPanel(closed)
    assert panel.register_button.layout.display == "none"
    assert ChatPanel(session).register_button.layout.display is None


# -- pulling a model into Ollama -----------------------------------------------------------------


def test_pull_downloads_a_model_with_a_progress_bar_and_offers_it(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    log_in(panel)
    assert "ollama:qwen3:0.6b" not in [value for _, value in panel.model.options]
    fractions: list[float] = []
    panel.pull_progress.observe(lambda change: fractions.append(change["new"]), names="value")
    panel.pull_name.value = "qwen3:0.6b"
    panel.pull_button.click()
    wait_until(lambda: "Pulled" in panel.status.value or "nbchat-error" in panel.status.value)
    assert "Pulled <code>ollama:qwen3:0.6b</code>" in panel.status.value
    assert "ollama:qwen3:0.6b" in [value for _, value in panel.model.options]
    assert 0 < min(fractions) < 1 and fractions[-1] == 1.0  # each layer of the model fills the bar
    assert not panel.pull_button.disabled and panel.pull_name.value == ""


def test_pulling_an_unknown_model_is_a_clear_error(panel: ChatPanel) -> None:
    log_in(panel)
    panel.pull_name.value = "no-such-model:9b"
    panel.pull_button.click()
    wait_until(lambda: "nbchat-error" in panel.status.value)
    assert "no-such-model:9b" in panel.status.value and not panel.pull_button.disabled


def test_the_site_policy_also_governs_pulls(session: ChatSession) -> None:
    from nbchat.config import Policy

    strict = ChatSession(
        replace(session.config, policy=Policy(models=("ollama:qwen3:*",))), accounts=session.accounts
    )
    strict.login("bob", PASSWORD)
    with pytest.raises(nbchat.PolicyError, match="not allowed"):
        strict.pull("gemma3:1b")
    assert strict.pull("ollama:qwen3:0.6b") == "ollama:qwen3:0.6b"
