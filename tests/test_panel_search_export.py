"""The panel's search box and Export control, in process against a real session.

The session talks to the loopback Ollama server and keeps its conversations in
scratch space; searching is the store's real index, exporting writes real files
into the test's own folder (the kernel's working directory stands for the
notebook's folder). What the browser does with a hit (scrolling to its message)
is the browser suite's (``test_browser_search_export.py``); here a hit's click
is ``HitList.pick``, what the page's click sends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import pytest
from polling import wait_until

from conftest import PASSWORD
from nbchat import ChatSession
from nbchat.panel import ChatPanel
from nbchat.panel.export_control import ExportControl, shown_path
from nbchat.panel.search_box import SearchBox, hit_html, snippet_html
from nbchat.search import SearchHit
from nbchat.store import ConversationStore
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.types import Message

MODEL = "ollama:llama3.2:1b"


@pytest.fixture
def panel(make_session: Callable[..., ChatSession], server: OllamaTestServer) -> Iterator[ChatPanel]:
    session = make_session(server, "alice", "bob")
    session.login("alice", PASSWORD)
    panel = ChatPanel(session)
    yield panel
    panel.close()


def ask(panel: ChatPanel, text: str) -> None:
    """A question answered (the server echoes it) and drawn in the panel."""
    panel.session.send(text).join(10)
    wait_until(lambda: panel._live is None and panel.stop_button.disabled)


def chat(panel: ChatPanel, title: str, *questions: str) -> str:
    panel.session.new_conversation(title)
    panel.session.configure(model=MODEL)
    for question in questions:
        ask(panel, question)
    current = panel.session.current
    assert current is not None
    return current.id


def hooked(panel: ChatPanel, message_id: str) -> int:
    """How many shown widgets carry ``message_id``'s DOM hook: a reply has it in its classes, a
    question (one anywidget that draws its own body) on the body it draws from its ``message_id``."""
    shown = panel.messages.children
    return sum(
        f"nbchat-msg-{message_id}" in view._dom_classes or getattr(view, "message_id", None) == message_id
        for view in shown
    )


def hit(title: str, snippet: str, *, message_id: str | None = "m1", role: str | None = "user") -> SearchHit:
    return SearchHit(
        conversation_id="c1",
        title=title,
        message_id=message_id,
        role=role,
        snippet=snippet,
        score=1.0,
        time=datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc),
    )


def test_a_snippet_is_escaped_and_only_its_hit_words_are_bold() -> None:
    assert snippet_html("a <b>tag</b> & [zebra] then [x<y]") == (
        "a &lt;b&gt;tag&lt;/b&gt; &amp; <b>zebra</b> then <b>x&lt;y</b>"
    )
    shown = hit_html(hit("<img src=x onerror=alert(1)>", "…[okapi] facts…"))
    assert "<img" not in shown and "&lt;img" in shown
    assert "<b>okapi</b>" in shown and "your question" in shown and "2026-01-0" in shown
    assert "the title" in hit_html(hit("Okapi", "[Okapi]", message_id=None, role=None))


def test_the_search_box_searches_once_per_query_and_opens_the_hit_clicked() -> None:
    searched: list[str] = []
    opened: list[tuple[str, str | None]] = []
    box = SearchBox(on_search=searched.append, on_open=lambda c, m: opened.append((c, m)))
    box.query.value = "  okapi  "  # Enter (the field sends its value then)
    box.search_button.click()  # the click right after it: the same words, not searched again
    assert searched == ["okapi"]
    box.show_hits("okapi", [hit("Zoo", "[okapi]"), hit("Trip", "an [okapi]", message_id="m2")])
    assert box.shown and len(box.hit_list.hits) == 2 and "2 matches" in box.note.value
    box.hit_list.pick(1, box.hit_list.generation)
    assert opened == [("c1", "m2")]
    box.hit_list.pick(0, box.hit_list.generation - 1)  # a click on hits shown before: ignored
    box.set_busy(True)
    box.hit_list.pick(0, box.hit_list.generation)  # while a reply streams: no other conversation
    assert opened == [("c1", "m2")]
    box.set_busy(False)
    box.close_hits()
    assert not box.shown and box.hits == () and box.hit_list.hits == []
    box.query.value = ""
    box.search_button.click()
    assert searched == ["okapi"] and "Type some words" in box.note.value and box.shown
    box.close()


def test_the_panel_finds_words_of_an_older_conversation_and_opens_it_at_that_message(
    panel: ChatPanel,
) -> None:
    older = chat(panel, "Zoo trip", "first question", "what does an okapi eat?", "and a giraffe?")
    chat(panel, "Something else", "how do I sort a list?")
    panel.search.value = "okapi"
    hits = panel.search_box.hits
    assert [h.conversation_id for h in hits] == [older, older]  # the question and the echoed reply
    assert "<b>okapi</b>" in panel.search_hits.hits[0]["html"]
    assert "2 matches" in panel.search_box.note.value
    target = hits[0].message_id
    assert target is not None

    panel.search_hits.pick(0, panel.search_hits.generation)
    current = panel.session.current
    assert current is not None and current.id == older and panel.conversations.value == older
    assert target in {m.id for m in current.messages}
    assert panel.search_hits.reveal["id"] == target  # the page scrolls there and highlights it
    assert hooked(panel, target) == 1  # the message the page looks for is shown, with its DOM hook


def test_a_hit_far_back_in_a_long_conversation_is_shown_though_older_than_the_first_page(
    panel: ChatPanel,
) -> None:
    other_kernel = ConversationStore(panel.session.config.data_dir, "alice")
    long = other_kernel.create("Long")
    for i in range(60):
        other_kernel.append(long.id, Message("user", "where do okapis live?" if i == 1 else f"question {i}"))
        other_kernel.append(long.id, Message("assistant", f"answer {i}"))
    chat(panel, "Newer", "hello")
    panel.search.value = "okapis"
    (found,) = panel.search_box.hits
    assert found.conversation_id == long.id and found.message_id is not None
    panel.search_hits.pick(0, panel.search_hits.generation)
    assert panel.conversations.value == long.id
    assert hooked(panel, found.message_id) == 1  # drawn, though 117 messages are newer
    assert panel.message_list.hidden <= 2
    assert panel.search_hits.reveal["id"] == found.message_id


def test_a_hit_on_another_branch_opens_that_branch(panel: ChatPanel) -> None:
    chat(panel, "Animals", "tell me about the okapi", "and its stripes?")
    first = panel.session.history()[0]
    panel.session.edit(first.id, "tell me about the zebra").join(10)
    wait_until(lambda: panel._live is None and panel.stop_button.disabled)
    assert "okapi" not in " ".join(m.content for m in panel.session.history())
    chat(panel, "Later", "unrelated")

    panel.search.value = "okapi"
    question = next(h for h in panel.search_box.hits if h.role == "user")
    panel.search_hits.pick(panel.search_box.hits.index(question), panel.search_hits.generation)
    shown = [m.content for m in panel.session.history()]
    assert shown[0] == "tell me about the okapi" and question.message_id == first.id
    assert panel.search_hits.reveal["id"] == first.id


def test_no_matches_a_deleted_conversation_and_logging_out_are_said_or_cleared(panel: ChatPanel) -> None:
    gone = chat(panel, "Doomed", "a word like quokka")
    panel.search.value = "wombat"
    assert "No matches for <b>wombat</b>" in panel.search_box.note.value and panel.search_box.shown
    panel.search.value = " ".join(f"w{i}" for i in range(40))  # more words than a search takes
    assert "nbchat-error" in panel.search_box.note.value and "at most" in panel.search_box.note.value
    panel.search.value = "quokka"
    assert panel.search_box.hits
    panel.session.delete(gone)
    panel.search_hits.pick(0, panel.search_hits.generation)
    assert "nbchat-error" in panel.search_box.note.value  # the conversation is gone: said, no traceback
    assert panel.session.current is None

    panel.session.logout()
    assert panel.search.value == "" and not panel.search_box.shown and panel.search_hits.hits == []


def test_bob_never_finds_alices_words(panel: ChatPanel) -> None:
    chat(panel, "Secret", "alice likes the axolotl")
    panel.session.logout()
    panel.session.login("bob", PASSWORD)
    panel.search.value = "axolotl"
    assert panel.search_box.hits == () and "No matches" in panel.search_box.note.value


def test_export_writes_each_format_next_to_the_notebook_and_says_where(
    panel: ChatPanel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    monkeypatch.chdir(notebook_dir)
    assert panel.export_button.disabled  # no conversation yet
    panel.session.new_conversation("Sums")
    panel.session.configure(model=MODEL)
    assert not panel.export_button.disabled
    ask(panel, "how do I add up a list?")

    panel.export_format.value = "ipynb"
    panel.export_button.click()
    assert panel.export_control.note.value == "Exported to <code>Sums.ipynb</code>, next to the notebook."
    book = nbformat.read(notebook_dir / "Sums.ipynb", as_version=4)
    nbformat.validate(book)
    assert any("how do I add up a list?" in cell.source for cell in book.cells)

    panel.export_button.click()  # again: a new file, the first one kept
    assert "Sums (2).ipynb" in panel.export_control.note.value
    panel.export_format.value = "json"
    panel.export_button.click()
    assert "Sums.json" in panel.export_control.note.value
    assert json.loads((notebook_dir / "Sums.json").read_text())
    panel.export_format.value = "markdown"
    panel.export_button.click()
    assert "how do I add up a list?" in (notebook_dir / "Sums.md").read_text()
    written = sorted(p.name for p in notebook_dir.iterdir())
    assert written == ["Sums (2).ipynb", "Sums.ipynb", "Sums.json", "Sums.md"]

    panel.session.new_conversation("Other")
    assert panel.export_control.note.value == ""  # the note was about the other conversation


def test_an_export_that_cannot_be_written_says_why(
    panel: ChatPanel, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from disks import fill

    chat(panel, "Big", "a question " * 200)
    monkeypatch.chdir(small_disk)
    fill(small_disk)
    panel.export_button.click()
    note = panel.export_control.note.value
    assert "nbchat-error" in note and "full" in note.lower(), note
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no partial file left


def test_a_path_outside_the_notebooks_folder_is_shown_whole(tmp_path: Path) -> None:
    assert shown_path(tmp_path / "a" / "b.md", tmp_path) == str(Path("a") / "b.md")
    assert shown_path(Path("/elsewhere/b.md"), tmp_path) == "/elsewhere/b.md"
    control = ExportControl(on_export=lambda _format: None)
    control.exported(Path("/elsewhere/b.md"), tmp_path)
    assert control.note.value == "Exported to <code>/elsewhere/b.md</code>."
    control.close()
