"""``%chat --regenerate``, ``--at``, ``--export`` and ``--search`` in a real IPython shell.

Cells go through ``InteractiveShell.run_cell`` as a notebook sends them, against the loopback
Ollama server (which records every request, so what was sent as history is checked); exports
land in a real folder, the kernel's working directory, and are opened again with ``nbformat``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import CapturedIO, capture_output

from conftest import PASSWORD
from nbchat import ChatSession
from nbchat.magic import ChatAnswer
from nbchat.testing.ollama_server import OllamaTestServer

MODEL = "ollama:llama3.2:1b"


@pytest.fixture
def session(kernel_session: ChatSession) -> ChatSession:
    return kernel_session


@pytest.fixture
def notebook_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The kernel's working directory: where the notebook is, and where exports go."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def run(shell: InteractiveShell, cell: str) -> CapturedIO:
    with capture_output() as captured:
        shell.run_cell(cell, store_history=True)
    return captured


def markdown_shown(captured: CapturedIO) -> list[str]:
    return [o.data["text/markdown"] for o in captured.outputs if "text/markdown" in o.data]


def chats_sent(server: OllamaTestServer) -> list[dict[str, object]]:
    return [r["body"] for r in server.requests if r["path"] == "/api/chat"]


def logged_in_chat(shell: InteractiveShell, passwords: list[str], title: str = "Chat") -> None:
    passwords.append(PASSWORD)
    run(shell, "%chat --login alice")
    run(shell, f'%chat --new "{title}" -m {MODEL}')


def assert_one_clear_line(captured: CapturedIO, words: str) -> None:
    assert words in captured.stderr, captured.stderr
    assert captured.stderr.startswith("nbchat: ") and captured.stderr.count("\n") == 1
    assert "Traceback" not in captured.stdout + captured.stderr


# -- regenerate ---------------------------------------------------------------------------------


def test_regenerate_streams_a_new_reply_to_the_last_question_and_keeps_the_old_one(
    shell: InteractiveShell, session: ChatSession, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "%chat what is a monad?")
    question, first = session.history()
    server.reply_words = ["A ", "burrito, ", "really."]
    captured = run(shell, "%chat --regenerate")
    final = markdown_shown(captured)[-1]
    assert final.startswith("A burrito, really.") and f"`{MODEL}`" in final
    shown_question, second = session.history()
    assert shown_question == question and second.content == "A burrito, really."
    assert [m.id for m in session.current.alternatives(second.id)] == [first.id, second.id]
    sent = chats_sent(server)[-1]["messages"]
    assert sent[-1] == {"role": "user", "content": "what is a monad?"}
    assert all(m["content"] != first.content for m in sent)  # the old reply is not history


def test_regenerate_uses_the_settings_given_with_it(
    shell: InteractiveShell, session: ChatSession, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "%chat hello")
    run(shell, "%chat --regenerate -t 0.1")
    assert chats_sent(server)[-1]["options"]["temperature"] == 0.1
    assert session.settings.temperature == 0.1


def test_regenerate_returns_the_new_answer_to_code(
    shell: InteractiveShell, session: ChatSession, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "%chat hello")
    server.reply_words = ["Again."]
    run(shell, "again = %chat --regenerate")
    answer = shell.user_ns["again"]
    assert isinstance(answer, ChatAnswer) and answer == "Again."
    assert answer.reply is session.reply


def test_regenerate_with_a_new_question_is_refused_and_sends_nothing(
    shell: InteractiveShell, session: ChatSession, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "%chat hello")
    before = len(chats_sent(server))
    captured = run(shell, "%chat --regenerate something else")
    assert_one_clear_line(captured, "--regenerate answers the last question again and takes no new one")
    assert len(chats_sent(server)) == before and len(session.history()) == 2


def test_regenerate_in_a_conversation_with_no_question_says_so(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    assert_one_clear_line(run(shell, "%chat --regenerate"), "There is no question")


def test_regenerate_without_a_login_says_how_to_log_in(shell: InteractiveShell, session: ChatSession) -> None:
    captured = run(shell, "%chat --regenerate")
    assert_one_clear_line(captured, "Log in first")
    assert "%chat --login NAME" in captured.stderr


# -- branches -----------------------------------------------------------------------------------


def test_at_shows_the_branch_holding_a_message_and_that_branch_is_sent_next(
    shell: InteractiveShell, session: ChatSession, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "%chat hello")
    first = session.history()[-1]
    server.reply_words = ["Second ", "try."]
    run(shell, "%chat --regenerate")
    captured = run(shell, f"%chat --at {first.id[:12]}")
    assert "at message" in captured.stdout
    assert session.history()[-1].id == first.id
    server.reply_words = None
    run(shell, "%chat and then?")
    sent = chats_sent(server)[-1]["messages"]
    assert [m["content"] for m in sent[-3:]] == ["hello", first.content, "and then?"]


def test_at_a_message_that_is_not_there_is_one_clear_line(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "%chat hello")
    assert_one_clear_line(run(shell, "%chat --at 0123456789ab"), "has no message '0123456789ab'")


# -- export -------------------------------------------------------------------------------------


def test_export_writes_a_notebook_next_to_the_notebook_and_says_where(
    shell: InteractiveShell,
    session: ChatSession,
    server: OllamaTestServer,
    passwords: list[str],
    notebook_dir: Path,
) -> None:
    logged_in_chat(shell, passwords)
    server.reply_words = ["Try:\n\n", "```python\n", "print(42)\n", "```\n"]
    run(shell, "%chat show me code")
    captured = run(shell, "%chat --export chat.ipynb")
    path = notebook_dir / "chat.ipynb"
    assert captured.stdout.strip() == f"Exported 'Chat' to {path}"
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert [c.source for c in notebook.cells if c.cell_type == "code"] == ["print(42)"]
    assert notebook.metadata["nbchat"]["conversation_id"] == session.current.id


def test_export_takes_the_format_from_the_extension_and_a_quoted_name(
    shell: InteractiveShell, session: ChatSession, passwords: list[str], notebook_dir: Path
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "%chat hello")
    run(shell, '%chat --export "my chat.md"')
    run(shell, "%chat --export chat.json")
    assert (notebook_dir / "my chat.md").read_text(encoding="utf-8").startswith("# Chat\n")
    assert '"active_path"' in (notebook_dir / "chat.json").read_text(encoding="utf-8")


def test_export_never_overwrites_a_file_and_says_so_in_one_line(
    shell: InteractiveShell, session: ChatSession, passwords: list[str], notebook_dir: Path
) -> None:
    logged_in_chat(shell, passwords)
    (notebook_dir / "chat.md").write_text("my notes", encoding="utf-8")
    assert_one_clear_line(run(shell, "%chat --export chat.md"), "already exists")
    assert (notebook_dir / "chat.md").read_text(encoding="utf-8") == "my notes"


def test_export_to_an_unknown_extension_lists_the_formats(
    shell: InteractiveShell, session: ChatSession, passwords: list[str], notebook_dir: Path
) -> None:
    logged_in_chat(shell, passwords)
    captured = run(shell, "%chat --export chat.txt")
    assert_one_clear_line(captured, "Cannot tell the format from the name 'chat.txt'")
    assert ".ipynb" in captured.stderr and list(notebook_dir.iterdir()) == []


def test_export_with_no_conversation_says_how_to_pick_one(
    shell: InteractiveShell, session: ChatSession, passwords: list[str], notebook_dir: Path
) -> None:
    passwords.append(PASSWORD)
    run(shell, "%chat --login alice")
    assert_one_clear_line(run(shell, "%chat --export chat.md"), "No conversation is selected")
    assert list(notebook_dir.iterdir()) == []


# -- search -------------------------------------------------------------------------------------


def test_search_prints_ranked_hits_each_with_the_line_that_opens_it(
    shell: InteractiveShell, session: ChatSession, server: OllamaTestServer, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords, title="Functional programming")
    run(shell, "%chat what is a monad in Haskell?")
    wanted = session.current
    run(shell, f'%chat --new "Cooking" -m {MODEL}')
    run(shell, "%chat how long do I boil an egg?")
    captured = run(shell, "%chat --search monad")
    out = captured.stdout
    assert "Functional programming" in out and "Cooking" not in out
    assert "monad" in out.lower()
    opener = re.search(r"%chat -c (\w+) --at (\w+)", out)
    assert opener is not None, out
    run(shell, opener.group(0))
    assert session.current is not None and session.current.id == wanted.id
    assert any(m.id.startswith(opener.group(2)) for m in session.history())


def test_search_with_no_hits_and_with_no_words_say_so(
    shell: InteractiveShell, session: ChatSession, passwords: list[str]
) -> None:
    logged_in_chat(shell, passwords)
    run(shell, "%chat hello")
    assert "Nothing in your conversations matches 'zebra'" in run(shell, "%chat --search zebra").stdout
    assert_one_clear_line(run(shell, "%chat --search"), "--search needs words")
