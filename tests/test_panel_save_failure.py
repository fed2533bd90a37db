"""A reply that cannot be saved (a full disk) stays in the panel, marked, and the status says why.

The data dir is a real 2 MiB tmpfs; it fills up while the reply streams, after
the question was saved, exactly as a disk filling up under a running kernel.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path

import pytest
from disks import fill
from polling import wait_until

from conftest import CHEAP_KDF, PASSWORD
from nbchat import Accounts, ChatSession, Config, StoreError
from nbchat.panel import ChatPanel
from nbchat.testing.ollama_server import OllamaTestServer

MODEL = "ollama:llama3.2:1b"
#: The reply is long enough (over 8 KiB) that appending it needs fresh pages of the tmpfs.
REPLY_WORDS = [f"word{i:04d} " * 8 for i in range(120)]


@pytest.fixture
def session(small_disk: Path, server: OllamaTestServer) -> Iterator[ChatSession]:
    config = Config(data_dir=small_disk / "nbchat-data", max_users=10, ollama_host=server.url)
    session = ChatSession(config, accounts=Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF))
    session.register("alice", PASSWORD)
    session.login("alice", PASSWORD)
    session.new_conversation()
    session.configure(model=MODEL)
    yield session
    if session.reply is not None:
        session.stop()
        session.reply.join(10)


def shown(panel: ChatPanel) -> list[str]:
    return [
        child.outputs[0]["data"]["text/markdown"] if hasattr(child, "outputs") else child.value
        for child in panel.messages.children
    ]


def send_while_the_disk_fills(panel: ChatPanel, server: OllamaTestServer, disk: Path) -> Path:
    """Send a question; once it is saved and the reply streams, fill the disk; wait for the end."""
    server.reply_words, server.first_chunk_delay_s, server.chunk_delay_s = REPLY_WORDS, 0.2, 0.001
    panel.prompt.value = "write a lot"
    panel.send_button.click()
    filler = fill(disk)
    reply = panel.session.reply
    assert reply is not None
    wait_until(lambda: reply.done, seconds=10)
    wait_until(lambda: panel._live is None and panel.stop_button.disabled)
    return filler


def test_an_unsaved_reply_stays_shown_with_the_reason_in_the_status_line(
    session: ChatSession, server: OllamaTestServer, small_disk: Path
) -> None:
    panel = ChatPanel(session)
    filler = send_while_the_disk_fills(panel, server, small_disk)
    reply = session.reply
    assert reply is not None and reply.message is None and isinstance(reply.save_error, StoreError)
    assert "full" in str(reply.save_error)
    assert [m.role for m in session.history()] == ["user"]  # the reply is in no history
    status = panel.status.value
    assert "nbchat-error" in status and "not saved" in status
    assert html.escape(str(reply.save_error)) in status
    last = panel.messages.children[-1]
    assert "nbchat-unsaved" in last._dom_classes
    assert shown(panel)[-1].startswith(reply.text) and "word0119" in shown(panel)[-1]

    filler.unlink()  # space is back: the session goes on, the unsaved reply stays after its question
    session.configure(temperature=0.3)  # a change of the session: every panel redraws from history
    panel.refresh()
    assert panel.messages.children[-1] is last and "not saved" in panel.status.value
    assert "nbchat-unsaved" in ChatPanel(session).messages.children[-1]._dom_classes  # any panel

    server.reply_words, server.first_chunk_delay_s = None, 0.0
    panel.prompt.value = "and now?"
    panel.send_button.click()
    wait_until(lambda: session.reply is not reply and session.reply is not None and session.reply.done)
    wait_until(lambda: panel._live is None and len(panel.messages.children) == 4)
    assert [m.role for m in session.history()] == ["user", "user", "assistant"]
    texts = shown(panel)
    assert "write a lot" in texts[0] and texts[1].startswith(reply.text)
    assert "and now?" in texts[2] and texts[3] == "You said: and now?"
    assert "not saved" not in panel.status.value


def test_the_unsaved_reply_comes_back_with_its_conversation_and_goes_with_the_login(
    session: ChatSession, server: OllamaTestServer, small_disk: Path
) -> None:
    panel = ChatPanel(session)
    filler = send_while_the_disk_fills(panel, server, small_disk)
    filler.unlink()
    first = session.current
    assert first is not None
    session.new_conversation()
    assert panel.messages.children == ()
    session.select(first.id)
    assert "nbchat-unsaved" in panel.messages.children[-1]._dom_classes
    session.logout()
    session.login("alice", PASSWORD)
    session.select(first.id)
    assert [c._dom_classes for c in panel.messages.children] == [("nbchat-message", "nbchat-message-user")]
