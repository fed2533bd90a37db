"""A reply another kernel is still writing reads as such, never as interrupted; a dead one at once.

Both are drafts with no saved message on disk. The writing store holds an ``flock`` on
``.live/<message id>`` from its first draft until the message is saved or the store closes;
the OS drops it when the process dies, so a reader tells the two apart with no clock.
Writers here are a second store in this process (a second kernel of the same user) or a
real child process, SIGKILLed.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from polling import wait_until

from conftest import PASSWORD
from nbchat import ChatSession, ConversationStore
from nbchat.export import message_heading
from nbchat.file_state import INTERRUPTED_STATS, LIVE_STATS
from nbchat.live_replies import LEASE_DIR, STALE_LEASE_S
from nbchat.panel import ChatPanel
from nbchat.panel.controller import WATCH_S
from nbchat.records import Draft
from nbchat.render import INTERRUPTED_NOTE, LIVE_NOTE, message_markdown
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.types import Message, new_id, utcnow

WRITER = """
import sys, time
from pathlib import Path
from nbchat import ConversationStore
from nbchat.records import Draft
from nbchat.types import Message, new_id, utcnow
store = ConversationStore(Path(sys.argv[1]), "alice")
conversation = store.create("Written elsewhere")
question = store.append(conversation.id, Message("user", "tell me about fjords"))
reply_id = new_id()
store.append_draft(conversation.id, Draft(reply_id, question.id, "ollama:qwen3", utcnow(), "Fjords are ", ""))
print(conversation.id, reply_id, flush=True)
time.sleep(600)
"""


@pytest.fixture
def writer(data_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """A child process that drafted half a reply and is still writing it (it sleeps)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(data_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    conversation_id, reply_id = proc.stdout.readline().split()
    yield proc, conversation_id, reply_id
    proc.kill()
    proc.wait(10)
    proc.stdout.close()


def draft_half_a_reply(store: ConversationStore) -> tuple[str, Message, str]:
    conversation = store.create("Two kernels")
    question = store.append(conversation.id, Message("user", "tell me about fjords"))
    reply_id = new_id()
    draft = Draft(reply_id, question.id, "ollama:qwen3", utcnow(), "Fjords are ", "")
    store.append_draft(conversation.id, draft)
    return conversation.id, question, reply_id


def test_a_reply_another_store_is_drafting_reads_as_still_being_written(data_dir: Path) -> None:
    writing, reading = ConversationStore(data_dir, "alice"), ConversationStore(data_dir, "alice")
    conversation_id, question, reply_id = draft_half_a_reply(writing)

    shown = reading.get(conversation_id).messages[-1]
    assert (shown.id, shown.content, shown.stats) == (reply_id, "Fjords are ", LIVE_STATS)
    assert LIVE_NOTE in message_markdown(shown) and INTERRUPTED_NOTE not in message_markdown(shown)
    assert message_heading(reading.get(conversation_id), shown).endswith("still being written")
    assert [m.role for m in writing.get(conversation_id).messages] == ["user"], "its writer shows it live"

    writing.append_draft(conversation_id, Draft(reply_id, question.id, "ollama:qwen3", utcnow(), "long.", ""))
    assert reading.get(conversation_id).messages[-1].content == "Fjords are long."
    saved_reply = Message("assistant", "Fjords are long.", id=reply_id, model="ollama:qwen3")
    writing.append(conversation_id, saved_reply)

    saved = reading.get(conversation_id).messages
    assert [(m.id, m.content, m.stats) for m in saved[1:]] == [(reply_id, "Fjords are long.", None)]
    assert not (writing.directory / LEASE_DIR / reply_id).exists(), "a saved reply leaves no lease"


def test_a_store_closed_mid_reply_leaves_it_interrupted(data_dir: Path) -> None:
    """A logout (or a kernel shut down) while a reply was unsaved: nobody is writing it any more."""
    writing, reading = ConversationStore(data_dir, "alice"), ConversationStore(data_dir, "alice")
    conversation_id, _, reply_id = draft_half_a_reply(writing)
    assert reading.get(conversation_id).messages[-1].stats == LIVE_STATS
    writing.close()
    shown = reading.get(conversation_id).messages[-1]
    assert (shown.id, shown.stats) == (reply_id, INTERRUPTED_STATS)
    assert INTERRUPTED_NOTE in message_markdown(shown)


def test_a_store_dropped_without_close_lets_its_leases_go(data_dir: Path) -> None:
    writing, reading = ConversationStore(data_dir, "alice"), ConversationStore(data_dir, "alice")
    conversation_id, _, _ = draft_half_a_reply(writing)
    del writing
    gc.collect()
    assert reading.get(conversation_id).messages[-1].stats == INTERRUPTED_STATS


def test_a_writer_killed_mid_reply_reads_as_interrupted_at_once(
    data_dir: Path, writer: tuple[subprocess.Popen[str], str, str]
) -> None:
    proc, conversation_id, reply_id = writer
    reading = ConversationStore(data_dir, "alice")
    assert reading.get(conversation_id).messages[-1].stats == LIVE_STATS
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    shown = reading.get(conversation_id).messages[-1]  # no wait: the lock went with the process
    assert (shown.id, shown.content, shown.stats) == (reply_id, "Fjords are ", INTERRUPTED_STATS)
    assert reply_id in {hit.message_id for hit in reading.search("fjords")}, "its text is searchable"


def test_a_dead_writers_lease_file_is_swept_by_the_next_store_once_stale(
    data_dir: Path, writer: tuple[subprocess.Popen[str], str, str]
) -> None:
    proc, conversation_id, reply_id = writer
    leases = data_dir / "conversations" / "alice" / LEASE_DIR
    held = ConversationStore(data_dir, "alice")
    held_conversation, _, held_id = draft_half_a_reply(held)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert (leases / reply_id).read_bytes() == b"", "a lease holds nothing, not even a word of the reply"

    ConversationStore(data_dir, "alice")
    assert (leases / reply_id).exists(), "a fresh lease is kept: its writer may be about to lock it"
    old = time.time() - STALE_LEASE_S - 1
    for name in (reply_id, held_id):
        os.utime(leases / name, (old, old))
    reader = ConversationStore(data_dir, "alice")
    assert sorted(os.listdir(leases)) == [held_id], "the dead writer's lease is gone, the held one kept"
    assert reader.get(conversation_id).messages[-1].stats == INTERRUPTED_STATS
    assert reader.get(held_conversation).messages[-1].stats == LIVE_STATS


def shown_text(panel: ChatPanel) -> str:
    """Every message the panel's list shows, as Markdown, one after the other."""
    return "\n".join(
        child.outputs[0]["data"]["text/markdown"] if hasattr(child, "outputs") else child.value
        for child in panel.messages.children
    )


def test_a_panel_follows_a_reply_another_kernel_streams_until_it_is_saved(
    make_session: object, server: OllamaTestServer
) -> None:
    """Two kernels of one user: the second one's panel shows the first one's reply growing."""
    assert callable(make_session)
    streaming: ChatSession = make_session(server, "alice")
    watching: ChatSession = make_session(server)
    for session in (streaming, watching):
        session.login("alice", PASSWORD)
    conversation = streaming.new_conversation("Streaming elsewhere")
    streaming.configure(model="ollama:llama3.2:1b")
    server.reply_words = [f"fjord{i} " for i in range(60)]
    server.chunk_delay_s = 0.1  # about 6 s: several drafts, several redraws of the other panel
    reply = streaming.send("tell me about fjords", namespace={})
    watching.select(conversation.id)
    wait_until(lambda: len(watching.history()) == 2, seconds=15)  # its first draft is on disk
    panel = ChatPanel(watching)
    try:

        def shown() -> str:
            return shown_text(panel)

        wait_until(lambda: LIVE_NOTE in shown(), seconds=15)
        first = shown()
        wait_until(lambda: shown() != first and LIVE_NOTE in shown(), seconds=15)  # it grew, redrawn
        reply.wait(30)
        wait_until(lambda: LIVE_NOTE not in shown() and "fjord59" in shown(), seconds=15)
        assert INTERRUPTED_NOTE not in shown()
        assert shown().count("fjord0 ") == 1, "the saved reply replaces the drafts: one reply shown"
    finally:
        panel.close()


def test_a_panel_shows_what_another_kernel_of_the_same_user_adds_until_it_is_closed(
    make_session: Callable[..., ChatSession], server: OllamaTestServer
) -> None:
    """Two notebooks on one conversation: what one sends, the other's panel shows (polled, one
    ``stat`` every 2 s); a rename elsewhere too. A closed panel stops looking."""
    writing, watching = make_session(server, "alice"), make_session(server)
    for session in (writing, watching):
        session.login("alice", PASSWORD)
    conversation = writing.new_conversation("Shared")
    writing.configure(model="ollama:llama3.2:1b")
    watching.select(conversation.id)
    panel = ChatPanel(watching)
    try:
        assert shown_text(panel) == ""
        writing.send("the first question", namespace={}).wait(30)
        wait_until(lambda: "You said: the first question" in shown_text(panel), seconds=10)
        writing.rename(conversation.id, "Renamed elsewhere")
        wait_until(lambda: "Renamed elsewhere" in str(panel.conversations.options), seconds=10)
    finally:
        panel.close()
    before = shown_text(panel)
    writing.send("a second question", namespace={}).wait(30)
    time.sleep(3 * WATCH_S)  # several of its old ticks: nothing redraws a closed panel
    assert shown_text(panel) == before
