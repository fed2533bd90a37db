"""The panel tells the browser's scroll keeper when to jump to the newest text: on send, on
another conversation; what it does in the page is in ``test_browser_scroll.py``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from polling import wait_until

from conftest import PASSWORD
from nbchat import ChatSession
from nbchat.panel import ChatPanel
from nbchat.panel.follow_newest import FollowNewest
from nbchat.testing.ollama_server import OllamaTestServer

MODEL = "ollama:llama3.2:1b"


@pytest.fixture
def panel(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> ChatPanel:
    panel = ChatPanel(make_session(server, "bob"))
    panel.username.value, panel.password.value = "alice", PASSWORD
    panel.register_button.click()
    panel.new_button.click()
    panel.model.value = MODEL
    return panel


def test_the_scroll_keeper_sits_right_under_the_message_list(panel: ChatPanel) -> None:
    children = list(panel.chat_view.children)
    keeper = children[children.index(panel.messages) + 1]
    assert isinstance(keeper, FollowNewest) and keeper is panel.message_list.follower


def test_sending_jumps_to_the_newest_text_even_when_scrolled_up(panel: ChatPanel) -> None:
    follower = panel.message_list.follower
    before = follower.jumps
    panel.prompt.value = "hello"
    panel.send_button.click()
    assert follower.jumps == before + 1
    wait_until(lambda: panel.session.reply is not None and panel.session.reply.done)


def test_switching_or_starting_a_conversation_jumps_to_its_newest_message(panel: ChatPanel) -> None:
    follower = panel.message_list.follower
    first = panel.session.current
    assert first is not None
    before = follower.jumps
    panel.new_button.click()
    assert follower.jumps == before + 1
    panel.conversations.value = first.id
    assert follower.jumps == before + 2
    assert panel.session.current is not None and panel.session.current.id == first.id


def test_closing_the_panel_closes_its_scroll_keeper(panel: ChatPanel) -> None:
    follower = panel.message_list.follower
    panel.close()
    assert follower.comm is None
