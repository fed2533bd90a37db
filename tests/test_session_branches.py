"""Regenerate and edit start branches; switching shows (and sends) another; nothing is ever lost.

Through a real ChatSession against the loopback Ollama server, whose reply says what it was
asked ("You said: …") and records every request, so each test sees what history was sent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import another_kernel, chatting
from nbchat import ChatSession, Message
from nbchat.errors import ExportError, InvalidValue, MessageNotFound, ReplyInProgress
from nbchat.testing.ollama_server import OllamaTestServer


@pytest.fixture
def session(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> ChatSession:
    return chatting(make_session(server, "alice"))


def contents(session: ChatSession) -> list[str]:
    return [m.content for m in session.history()]


def sent(server: OllamaTestServer) -> list[str]:
    """The message texts of the last chat request the server received."""
    chats = [r["body"] for r in server.requests if r["path"] == "/api/chat"]
    return [m["content"] for m in chats[-1]["messages"]]


def test_regenerate_answers_the_last_question_again_and_keeps_the_first_answer(
    session: ChatSession, server: OllamaTestServer
) -> None:
    session.send("one").wait(30)
    first = session.history()[-1]
    server.reply_words = ["a ", "second ", "answer"]
    regenerated = session.regenerate().wait(30)
    assert contents(session) == ["one", "a second answer"]
    assert regenerated.message is not None and regenerated.message.parent == first.parent
    conversation = session.current
    assert conversation is not None
    assert [m.content for m in conversation.alternatives(first.id)] == ["You said: one", "a second answer"]
    assert sent(server) == ["one"], "the old reply is not sent"


def test_switching_to_an_alternative_shows_it_and_sends_it_as_history(
    session: ChatSession, server: OllamaTestServer
) -> None:
    session.send("one").wait(30)
    first = session.history()[-1]
    server.reply_words = ["other"]
    session.regenerate().wait(30)
    server.reply_words = None
    session.switch_to(first.id)
    assert contents(session) == ["one", "You said: one"]
    session.send("two").wait(30)
    assert sent(server) == ["one", "You said: one", "two"]
    assert contents(session) == ["one", "You said: one", "two", "You said: two"]
    # A fresh reader (another kernel, or this one tomorrow) derives the same path from the file.
    fresh = another_kernel(session.config)
    current = session.current
    assert current is not None
    assert [m.content for m in fresh.get(current.id).messages] == contents(session)
    assert len(fresh.get(current.id).tree) == 5


def test_editing_a_question_starts_a_branch_there_and_keeps_the_old_one(
    session: ChatSession, server: OllamaTestServer
) -> None:
    session.send("one").wait(30)
    session.send("two").wait(30)
    old_two = session.history()[2]
    session.edit(old_two.id, "two, edited").wait(30)
    assert contents(session) == ["one", "You said: one", "two, edited", "You said: two, edited"]
    assert sent(server) == ["one", "You said: one", "two, edited"]
    current = session.current
    assert current is not None
    edited = session.history()[2]
    assert [m.id for m in current.alternatives(edited.id)] == [old_two.id, edited.id]
    session.switch_to(old_two.id)
    assert contents(session) == ["one", "You said: one", "two", "You said: two"]


def test_editing_the_first_question_starts_a_second_root(session: ChatSession) -> None:
    session.send("first").wait(30)
    original = session.history()[0]
    session.edit(original.id, "first, better").wait(30)
    assert contents(session) == ["first, better", "You said: first, better"]
    roots = session.tree().children(None)
    assert [m.content for m in roots] == ["first", "first, better"]
    assert all(m.parent is None for m in roots)


def test_an_edited_question_keeps_what_the_original_attached_and_resolves_new_mentions(
    session: ChatSession,
) -> None:
    session.send("look at @x", namespace={"x": 41}).wait(30)
    original = session.history()[0]
    assert [item.name for item in original.context] == ["x"]
    session.edit(original.id, "now @y", namespace={"y": [1, 2]}).wait(30)
    edited = session.history()[0]
    assert [item.name for item in edited.context] == ["y"]


def test_only_questions_can_be_edited_and_unknown_ids_are_refused(session: ChatSession) -> None:
    session.send("one").wait(30)
    reply = session.history()[-1]
    with pytest.raises(InvalidValue, match="Only a question"):
        session.edit(reply.id, "no")
    with pytest.raises(MessageNotFound):
        session.edit("0" * 32, "no")
    with pytest.raises(MessageNotFound):
        session.switch_to("0" * 32)
    with pytest.raises(InvalidValue, match="empty"):
        session.edit(session.history()[0].id, "   ")


def test_regenerate_needs_a_question(session: ChatSession) -> None:
    with pytest.raises(InvalidValue, match="no question"):
        session.regenerate()


def test_no_branch_changes_while_a_reply_streams(session: ChatSession, server: OllamaTestServer) -> None:
    session.send("one").wait(30)
    first = session.history()[-1]
    server.chunk_delay_s = 0.2
    server.chunk_count = 50
    reply = session.regenerate()
    with pytest.raises(ReplyInProgress):
        session.regenerate()
    with pytest.raises(ReplyInProgress):
        session.switch_to(first.id)
    session.stop()
    reply.join(10)


def test_every_branch_stays_in_the_tree_and_the_file_only_grows(
    session: ChatSession, server: OllamaTestServer
) -> None:
    session.send("one").wait(30)
    current = session.current
    assert current is not None
    path = session.config.data_dir / "conversations" / "alice" / f"{current.id}.jsonl"
    before = path.read_bytes()
    server.reply_words = ["again"]
    session.regenerate().wait(30)
    after_regenerate = path.read_bytes()
    assert after_regenerate.startswith(before)
    session.switch_to(session.tree().children(session.history()[0].id)[0].id)
    assert path.read_bytes().startswith(after_regenerate)
    assert [m.content for m in session.tree().messages] == ["one", "You said: one", "again"]


def test_open_at_selects_the_conversation_on_the_branch_holding_a_message(
    session: ChatSession, server: OllamaTestServer
) -> None:
    session.send("one").wait(30)
    old = session.history()[-1]
    server.reply_words = ["new"]
    session.regenerate().wait(30)
    conversation = session.current
    assert conversation is not None
    session.new_conversation()
    opened = session.open_at(conversation.id, old.id)
    assert opened.id == conversation.id
    assert [m.content for m in session.history()] == ["one", "You said: one"]


def test_export_from_a_kernel_whose_folder_was_deleted_says_so(
    session: ChatSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session.send("one").wait(30)
    current = session.current
    assert current is not None
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(ExportError, match="working folder no longer exists"):
        session.export(current.id, "markdown")
    written = session.export(current.id, None, tmp_path / "kept.md")
    assert written == tmp_path / "kept.md" and "one" in written.read_text()


def test_regenerate_answers_a_question_that_was_left_without_a_reply(
    session: ChatSession, server: OllamaTestServer
) -> None:
    """Its kernel died before any of the reply was saved: the path ends in the question."""
    session.send("one").wait(30)
    current = session.current
    assert current is not None
    another_kernel(session.config).append(current.id, Message("user", "two"))
    session.regenerate().wait(30)
    assert contents(session) == ["one", "You said: one", "two", "You said: two"]
    assert sent(server) == ["one", "You said: one", "two"]
