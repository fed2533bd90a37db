"""``%chat`` when things go wrong and after a logout, in a real IPython shell: a reply the disk cannot
hold says so in the cell, and after ``%chat --logout`` nothing the magic keeps reaches the user's
conversation (what stays is the answers' text in ``Out[n]``, the user's own output)."""

from __future__ import annotations

import gc
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from disks import fill
from IPython.core.interactiveshell import InteractiveShell
from polling import wait_until
from test_magic import markdown_shown, run

import nbchat.magic
import nbchat.session
from conftest import CHEAP_KDF, PASSWORD
from nbchat import Accounts, ChatSession, Config
from nbchat.magic import ChatAnswer, ChatMagics
from nbchat.reply import Reply
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.types import Conversation, ConversationSummary, Message

MODEL = "ollama:llama3.2:1b"


@pytest.fixture
def session(
    small_disk: Path, server: OllamaTestServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ChatSession]:
    """The kernel's one session (what ``%chat`` uses), its data on the small disk."""
    config = Config(data_dir=small_disk / "nbchat", max_users=10, ollama_host=server.url)
    session = ChatSession(config, accounts=Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF))
    session.register("alice", PASSWORD)
    session.register("bob", PASSWORD)
    monkeypatch.setattr(nbchat.session, "_session", session)
    yield session
    if session.reply is not None:
        session.stop()
        session.reply.join(10)


def chat_as_alice(shell: InteractiveShell, passwords: list[str]) -> None:
    passwords.append(PASSWORD)
    run(shell, "%chat --login alice")
    run(shell, f'%chat --new "Plans" -m {MODEL}')


def test_a_reply_the_disk_cannot_hold_shows_the_error_in_the_cell_and_keeps_its_text(
    shell: InteractiveShell,
    session: ChatSession,
    server: OllamaTestServer,
    small_disk: Path,
    passwords: list[str],
) -> None:
    chat_as_alice(shell, passwords)
    words = [f"{n:03d}" + "x" * 400 + " " for n in range(30)]  # the reply needs new 4 KiB pages
    server.reply_words, server.chunk_delay_s = words, 0.02
    fillers: list[Path] = []

    def fill_while_it_streams() -> None:
        wait_until(lambda: session.reply is not None and len(session.reply.text) > 0, 10)
        fillers.append(fill(small_disk))

    filling = threading.Thread(target=fill_while_it_streams, daemon=True)
    filling.start()
    captured = run(shell, "answer = %chat Tell me something")
    filling.join(10)
    final = markdown_shown(captured)[-1]
    assert final.startswith("".join(words).rstrip()), final[:200]
    assert "**Error:**" in final and "saved" in final, final[-400:]
    assert "Traceback" not in captured.stdout + captured.stderr
    answer = shell.user_ns["answer"]
    assert answer == "".join(words) and answer.reply.message is None and answer.reply.error is not None
    assert [m.role for m in session.history()] == ["user"]  # only the question reached the disk

    fillers[0].unlink()  # space is back: the next %chat works and is saved
    server.reply_words, server.chunk_delay_s = None, 0.0
    final = markdown_shown(run(shell, "%chat And now?"))[-1]
    assert final.startswith("You said: And now?") and "**Error:**" not in final
    assert [m.content for m in session.history()][-2:] == ["And now?", "You said: And now?"]


def reachable(roots: list[object]) -> Iterator[object]:
    """Every object reachable from ``roots`` through data: not through code, classes, modules or the
    shell (a function's globals would reach the whole interpreter; the shell's Out[n] is the user's)."""
    stop = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, InteractiveShell)
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        todo.extend(o for o in gc.get_referents(obj) if not isinstance(o, stop))


def test_after_logout_nothing_the_magic_keeps_reaches_the_users_conversation(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    chat_as_alice(shell, passwords)
    run(shell, "answer = %chat alice's secret plan")
    run(shell, "%chat and the second part")  # a cell's value: IPython keeps it in Out[n]
    answer = shell.user_ns["answer"]
    assert isinstance(answer.reply, Reply)  # while alice is logged in, the reply is there to read
    run(shell, "%chat --logout")
    gc.collect()

    magics = [m for m in shell.magics_manager.registry.values() if isinstance(m, ChatMagics)]
    answers = [answer, *(v for v in shell.user_ns["Out"].values() if isinstance(v, ChatAnswer))]
    roots: list[object] = [vars(nbchat.magic), *magics, *answers]
    users_data = (Message, Conversation, ConversationSummary, Reply)
    held = [type(o).__name__ for o in reachable(roots) if isinstance(o, users_data)]
    assert held == [], f"the magic still holds {held} of the user who logged out"
    assert answer == "You said: alice's secret plan" and answer.reply is None  # its text stays
    assert len(answers) == 2 and all(a.reply is None for a in answers)


def test_another_users_login_also_makes_the_previous_users_answers_forget_their_replies(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    chat_as_alice(shell, passwords)
    run(shell, "answer = %chat alice's secret plan")
    passwords.append(PASSWORD)
    run(shell, "%chat --login bob")
    assert session.user == "bob" and shell.user_ns["answer"].reply is None
    run(shell, '%chat --new "Bob" -m ollama:llama3.2:1b')
    run(shell, "mine = %chat bob's question")
    assert shell.user_ns["mine"].reply is not None and shell.user_ns["mine"].reply.saved
