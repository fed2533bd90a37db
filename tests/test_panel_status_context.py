"""The status line says how full the model's context is: tokens sent of its window, and how many
older messages were left out to fit; the wording is ``render.context_facts``."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from polling import wait_until

from conftest import PASSWORD
from nbchat import ChatSession
from nbchat.panel import ChatPanel
from nbchat.panel.live_reply import generating_status
from nbchat.render import context_facts
from nbchat.reply import Reply
from nbchat.testing.ollama_server import FakeModel, OllamaTestServer
from nbchat.types import GenerationStats, Message


def unstarted_reply() -> Reply:
    """A reply that is never started: its fields are set by hand, as the session sets them."""
    return Reply("c1", "ollama:tiny:ctx", Message("user", "hi"), lambda _reply: None, lambda _reply: None)


def test_the_context_line_gives_tokens_of_the_window_and_messages_left_out() -> None:
    reply = unstarted_reply()
    reply.context_window, reply.prompt_tokens, reply.dropped_messages = 8192, 1234, 3
    line = " · ".join(context_facts(reply))
    assert line == "context 1,234 / 8,192 tokens (15%) · 3 older messages left out"
    reply.dropped_messages = 1
    assert context_facts(reply)[1] == "1 older message left out"


def test_the_count_the_prompt_was_fitted_by_wins_over_the_engines_report() -> None:
    reply = unstarted_reply()
    reply.context_window, reply.prompt_tokens = 4096, 1000
    reply.stats = GenerationStats("stop", prompt_tokens=12)  # Ollama counting only what was not cached
    assert context_facts(reply) == ["context 1,000 / 4,096 tokens (24%)"]
    reply.prompt_tokens = None  # fitted by no count of its own: the engine's report is all there is
    reply.stats = GenerationStats("stop", prompt_tokens=2048)
    assert context_facts(reply) == ["context 2,048 / 4,096 tokens (50%)"]


def test_a_nearly_empty_context_is_not_called_zero_percent_full() -> None:
    reply = unstarted_reply()
    reply.context_window, reply.prompt_tokens = 131072, 12
    assert context_facts(reply) == ["context 12 / 131,072 tokens (<1%)"]


def test_before_the_reply_starts_nothing_is_claimed_about_the_context() -> None:
    reply = unstarted_reply()
    assert context_facts(reply) == []
    assert "context" not in generating_status(reply)
    reply.context_window, reply.prompt_tokens = 300, 150
    assert generating_status(reply).endswith("… · context 150 / 300 tokens (50%)")


@pytest.fixture
def panel(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> ChatPanel:
    server.add_model(FakeModel("tiny:ctx", thinking=False, context_length=300))
    panel = ChatPanel(make_session(server, "bob"))
    panel.username.value, panel.password.value = "alice", PASSWORD
    panel.register_button.click()
    panel.new_button.click()
    panel.session.configure(model="ollama:tiny:ctx", max_new_tokens=100)
    return panel


def send(panel: ChatPanel, text: str) -> Reply:
    panel.prompt.value = text
    panel.send_button.click()
    reply = panel.session.reply
    assert reply is not None
    wait_until(lambda: reply.done and panel._live is None)
    return reply


def test_a_long_chat_says_in_the_status_line_how_full_the_context_is(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    server.reply_words = ["ok"]
    reply = send(panel, "a first short question")
    assert reply.error is None, reply.error
    assert reply.dropped_messages == 0 and reply.context_window == 300
    first = re.search(r"context (\d+) / 300 tokens \((\d+)%\)", panel.status.value)
    assert first is not None, panel.status.value
    assert "left out" not in panel.status.value
    for number in range(7):
        reply = send(panel, f"message {number} " + "blah " * 40)
    assert reply.dropped_messages > 0
    status = panel.status.value
    assert f"{reply.dropped_messages} older messages left out" in status, status
    fill = re.search(r"context (\d+) / 300 tokens \((\d+)%\)", status)
    assert fill is not None and reply.prompt_tokens is not None and int(fill[1]) == reply.prompt_tokens
    assert 100 < reply.prompt_tokens <= 200  # full up to the room left for the answer (100 tokens)
    assert int(fill[2]) == round(100 * int(fill[1]) / 300)


def test_while_a_reply_streams_the_status_line_already_says_how_full_the_context_is(
    panel: ChatPanel, server: OllamaTestServer
) -> None:
    server.reply_words = [f"w{i} " for i in range(40)]
    server.chunk_delay_s = 0.05
    panel.prompt.value = "stream please"
    panel.send_button.click()
    wait_until(lambda: "context" in panel.status.value)
    assert panel.status.value.startswith("Generating with")
    reply = panel.session.reply
    assert reply is not None and not reply.done  # seen mid-stream, not only at the end
    wait_until(lambda: reply.done and panel._live is None)
