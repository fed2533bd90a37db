"""Exporting a conversation: each format written, then opened again as its readers open it.

Conversations are built through a real ``ConversationStore`` (branches, context, an
interrupted reply); the files go to a real directory (or a real 2 MiB tmpfs for the
full disk), and are read back with markdown-it, ``nbformat`` and the JSON Schemas of data/.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import pytest
from markdown_it import MarkdownIt
from test_schemas import assert_valid, header_validator, message_validator

from nbchat import records
from nbchat.errors import ExportError, StorageFailed
from nbchat.export import FALLBACK_NAME, MAX_NAME_BYTES, _write_without_links, export_conversation, safe_name
from nbchat.files import os_errors
from nbchat.notebook import code_blocks
from nbchat.store import ConversationStore
from nbchat.types import ContextItem, Conversation, ConversationSettings, Message

MODEL = "ollama:qwen3:1.7b"
QUESTION = "Why is ```this``` slow?\n# not a heading\n<!-- not a comment"
FIRST_REPLY = "Old answer:\n\n```python\nold = 1\n```"
REPLY = (
    "Use a vectorised sum:\n\n```python\ntotal = df['x'].sum()\n```\n\nThen check it:\n\n"
    '```bash\nls -l\n```\n\n```\nprint(total)\n```\n\n```json\n{"a": 1}\n```'
)
FOLLOW_UP = "And **faster**?"
STOPPED = "Like this:\n\n```python\nfor i in range(3):\n    print(i)"  # stopped inside its fence


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConversationStore]:
    store = ConversationStore(tmp_path / "data", "alice")
    yield store
    store.close()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    return folder


@pytest.fixture
def conversation(store: ConversationStore) -> Conversation:
    """A question with context, two replies to it (the second active), a follow-up and a stopped reply."""
    settings = ConversationSettings(model=MODEL, system="Be brief.")
    conversation = store.create("Pandas: speed/tips", settings)
    context = (ContextItem("object", "df", "DataFrame 3 × 1", "x\n1\n2\n3"),)
    question = store.append(conversation.id, Message("user", QUESTION, context=context))
    store.append(conversation.id, Message("assistant", FIRST_REPLY, model=MODEL))
    store.append(
        conversation.id,
        Message("assistant", REPLY, model=MODEL, thinking="They want speed.", parent=question.id),
    )
    store.append(conversation.id, Message("user", FOLLOW_UP))
    stats = {"finish_reason": "cancelled", "partial": True}
    store.append(conversation.id, Message("assistant", STOPPED, model=MODEL, stats=stats))
    return store.get(conversation.id)


def test_markdown_shows_the_active_path_with_who_speaks_in_order(
    conversation: Conversation, out: Path
) -> None:
    text = export_conversation(conversation, "markdown", directory=out).read_text(encoding="utf-8")
    tokens = MarkdownIt("commonmark").parse(text)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == [
        "Pandas: speed/tips",
        "User",
        f"Assistant · {MODEL} · reply 2 of 2",
        "User",
        f"Assistant · {MODEL}",
    ]
    assert FIRST_REPLY not in text  # another branch: the JSON export has it
    assert "4 messages shown, 5 in all branches" in text


def test_markdown_keeps_a_replys_code_blocks_exactly_and_folds_its_thinking(
    conversation: Conversation, out: Path
) -> None:
    text = export_conversation(conversation, "markdown", directory=out).read_text(encoding="utf-8")
    assert REPLY in text
    assert "<details><summary>Thinking</summary>\n\nThey want speed.\n\n</details>" in text
    fences = [t for t in MarkdownIt("commonmark").parse(text) if t.type == "fence"]
    exported = [(t.info, t.content) for t in fences]
    for block in code_blocks(REPLY):
        assert (block.language, block.code) in exported


def test_markdown_shows_the_users_text_as_typed_so_its_markup_cannot_break_the_document(
    conversation: Conversation, out: Path
) -> None:
    text = export_conversation(conversation, "markdown", directory=out).read_text(encoding="utf-8")
    tokens = MarkdownIt("commonmark").parse(text)
    texts = [t.content for t in tokens if t.type == "fence" and t.info == "text"]
    assert QUESTION + "\n" in texts and FOLLOW_UP + "\n" in texts
    assert not any(t.type == "html_block" and "not a comment" in t.content for t in tokens)


def test_markdown_folds_what_a_question_attached(conversation: Conversation, out: Path) -> None:
    text = export_conversation(conversation, "markdown", directory=out).read_text(encoding="utf-8")
    assert "<details><summary>Context: @df (DataFrame 3 × 1)</summary>" in text
    assert "```text\nx\n1\n2\n3\n```\n\n</details>" in text


def test_a_reply_stopped_inside_a_code_block_is_closed_so_nothing_after_it_is_swallowed(
    store: ConversationStore, conversation: Conversation, out: Path
) -> None:
    store.append(conversation.id, Message("user", "Thanks"))
    text = export_conversation(store.get(conversation.id), "markdown", directory=out).read_text("utf-8")
    tokens = MarkdownIt("commonmark").parse(text)
    assert [t.content for t in tokens if t.type == "fence" and t.info == "python"][-1] == (
        "for i in range(3):\n    print(i)\n"
    )
    assert "Thanks\n" in [t.content for t in tokens if t.type == "fence" and t.info == "text"]
    assert "    print(i)\n```\n\n*(stopped)*" in text


def test_an_interrupted_reply_is_exported_marked_as_such(
    store: ConversationStore, conversation: Conversation, out: Path, tmp_path: Path
) -> None:
    question = store.append(conversation.id, Message("user", "One more?"))
    now = datetime.now(timezone.utc)
    store.append_draft(conversation.id, records.Draft("ab" * 16, question.id, MODEL, now, "Half a", ""))
    store.close()  # the kernel that wrote the drafts is gone
    reopened = ConversationStore(tmp_path / "data", "alice")
    try:
        text = export_conversation(reopened.get(conversation.id), "markdown", directory=out).read_text()
    finally:
        reopened.close()
    assert f"## Assistant · {MODEL} · interrupted\n\nHalf a\n" in text


def test_the_notebook_is_valid_and_has_a_markdown_cell_per_message_and_the_python_blocks_as_code(
    conversation: Conversation, out: Path
) -> None:
    path = export_conversation(conversation, "ipynb", directory=out)
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    markdown = [cell for cell in notebook.cells if cell.cell_type == "markdown"]
    assert len(markdown) == 1 + len(conversation.messages)
    assert [cell.metadata["nbchat"]["message_id"] for cell in markdown[1:]] == [
        m.id for m in conversation.messages
    ]
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    # bash and json blocks are not Python; the stopped reply's unfinished block is no cell to run
    assert code == ["total = df['x'].sum()", "print(total)"]
    reply_cell = next(i for i, c in enumerate(notebook.cells) if "reply 2 of 2" in c.source)
    assert [c.cell_type for c in notebook.cells[reply_cell + 1 : reply_cell + 3]] == ["code", "code"]
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    about = notebook.metadata["nbchat"]
    assert about["conversation_id"] == conversation.id and about["model"] == MODEL


def test_a_notebook_code_cell_is_each_python_block_and_nothing_else(
    store: ConversationStore, out: Path
) -> None:
    conversation = store.create("Blocks", ConversationSettings(model=MODEL))
    store.append(conversation.id, Message("user", "code?"))
    store.append(conversation.id, Message("assistant", REPLY, model=MODEL))
    notebook = nbformat.read(export_conversation(store.get(conversation.id), "ipynb", directory=out), 4)
    expected = [b.code.rstrip("\n") for b in code_blocks(REPLY) if b.language in ("python", "")]
    assert [cell.source for cell in notebook.cells if cell.cell_type == "code"] == expected


def test_json_holds_the_header_the_active_path_and_every_message_of_every_branch(
    conversation: Conversation, out: Path
) -> None:
    document = json.loads(export_conversation(conversation, "json", directory=out).read_text("utf-8"))
    header = {key: document[key] for key in ("version", "id", "title", "created", "updated", "settings")}
    assert_valid(header_validator(), header)
    assert document["version"] == records.FORMAT_VERSION
    assert document["active_path"] == [m.id for m in conversation.messages]
    assert [m["id"] for m in document["messages"]] == [m.id for m in conversation.tree.messages]
    assert len(document["messages"]) == len(conversation.messages) + 1
    for record in document["messages"]:
        assert_valid(message_validator(), record)
    reread = [records.parse_message(json.dumps(record).encode()) for record in document["messages"]]
    assert reread == list(conversation.tree.messages)


def test_the_format_comes_from_the_extension_of_a_path_given(conversation: Conversation, out: Path) -> None:
    (out / "notes").mkdir()
    path = export_conversation(conversation, None, "notes/chat.IPYNB", directory=out)
    assert path == out / "notes" / "chat.IPYNB"
    nbformat.validate(nbformat.read(path, as_version=4))


def test_an_explicit_path_is_relative_to_the_directory_and_returned_absolute(
    conversation: Conversation, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(out.parent)
    path = export_conversation(conversation, None, "chat.md", directory=Path(out.name))
    assert path == out / "chat.md" and path.is_absolute()
    assert path.read_text(encoding="utf-8").startswith("# Pandas: speed/tips\n")


@pytest.mark.parametrize(
    ("format", "path", "words"),
    [
        (None, "chat.txt", "Cannot tell the format from the name 'chat.txt'"),
        ("pdf", None, "Unknown export format 'pdf'"),
        ("json", "chat.md", "says markdown but the format asked for is json"),
        (None, None, "Say which format"),
    ],
)
def test_an_unknown_format_is_refused_listing_the_formats(
    conversation: Conversation, out: Path, format: str | None, path: str | None, words: str
) -> None:
    with pytest.raises(ExportError, match=words) as refused:
        export_conversation(conversation, format, path, directory=out)
    assert "markdown" in str(refused.value) or ".md" in str(refused.value)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("title", "name"),
    [
        ("Pandas: speed/tips", "Pandas_ speed_tips"),
        ("..\\..\\etc/passwd", "_.._etc_passwd"),
        (".hidden plans", "hidden plans"),
        ('a<b>c"d|e?f*g', "a_b_c_d_e_f_g"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("ends with dots...", "ends with dots"),
        ("tab\there  and  spaces", "tab here and spaces"),
        ("\u202eevil\u202cfdp.exe", "evilfdp.exe"),
        ("...", FALLBACK_NAME),
        ("///", FALLBACK_NAME),
        ("Größe 📈", "Größe 📈"),
    ],
)
def test_a_title_becomes_a_safe_file_name(title: str, name: str) -> None:
    assert safe_name(title) == name


def test_a_long_title_is_capped_without_splitting_a_character() -> None:
    name = safe_name("é" * 200)
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES and set(name) == {"é"}


def test_the_file_is_named_after_the_title_in_the_directory(conversation: Conversation, out: Path) -> None:
    assert export_conversation(conversation, "json", directory=out) == out / "Pandas_ speed_tips.json"


def test_an_existing_file_is_never_overwritten_the_next_free_name_is_taken(
    conversation: Conversation, out: Path
) -> None:
    first = export_conversation(conversation, "markdown", directory=out)
    first.write_text("my edits", encoding="utf-8")
    second = export_conversation(conversation, "markdown", directory=out)
    third = export_conversation(conversation, "markdown", directory=out)
    assert (second.name, third.name) == ("Pandas_ speed_tips (2).md", "Pandas_ speed_tips (3).md")
    assert first.read_text(encoding="utf-8") == "my edits"
    assert sorted(p.name for p in out.iterdir()) == sorted([first.name, second.name, third.name])


def test_an_explicit_path_that_exists_is_refused_and_left_alone(
    conversation: Conversation, out: Path
) -> None:
    (out / "chat.md").write_text("keep me", encoding="utf-8")
    with pytest.raises(ExportError, match="already exists") as refused:
        export_conversation(conversation, None, "chat.md", directory=out)
    assert "chat (2).md" in str(refused.value)
    assert (out / "chat.md").read_text(encoding="utf-8") == "keep me"
    assert [p.name for p in out.iterdir()] == ["chat.md"]


def test_a_symlink_at_an_explicit_path_is_not_followed(
    conversation: Conversation, out: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.md"
    victim.write_text("precious", encoding="utf-8")
    (out / "chat.md").symlink_to(victim)
    (out / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    for name in ("chat.md", "dangling.md"):
        with pytest.raises(ExportError, match="already exists"):
            export_conversation(conversation, None, name, directory=out)
    assert victim.read_text(encoding="utf-8") == "precious"
    assert not (tmp_path / "nowhere.md").exists()


def test_a_symlink_where_the_titles_name_would_go_is_passed_over(
    conversation: Conversation, out: Path, tmp_path: Path
) -> None:
    (out / "Pandas_ speed_tips.md").symlink_to(tmp_path / "nowhere.md")
    path = export_conversation(conversation, "markdown", directory=out)
    assert path.name == "Pandas_ speed_tips (2).md" and not path.is_symlink()
    assert not (tmp_path / "nowhere.md").exists()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_an_export_gets_the_umasks_default_mode_for_sharing(
    conversation: Conversation, out: Path, umask: int, mode: int
) -> None:
    old = os.umask(umask)
    try:
        path = export_conversation(conversation, "json", directory=out)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_full_disk_leaves_no_partial_file_and_says_so(store: ConversationStore, small_disk: Path) -> None:
    from disks import fill

    conversation = store.create("Big", ConversationSettings(model=MODEL))
    store.append(conversation.id, Message("user", "x" * 20_000))
    fill(small_disk)
    for format in ("markdown", "ipynb", "json"):
        with pytest.raises(StorageFailed, match="full"):
            export_conversation(store.get(conversation.id), format, directory=small_disk)
    assert [p.name for p in small_disk.iterdir()] == ["filler"]


def test_a_missing_folder_is_a_storage_error_naming_it(conversation: Conversation, out: Path) -> None:
    with pytest.raises(StorageFailed, match="does not exist"):
        export_conversation(conversation, None, "no/such/folder/chat.md", directory=out)


# -- where the filesystem has no hard links (FAT, some network mounts) -----------------------------


def test_without_hard_links_an_existing_file_or_symlink_is_still_never_replaced(
    out: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.md"
    victim.write_text("precious", encoding="utf-8")
    (out / "a.md").symlink_to(victim)
    (out / "a (2).md").write_text("mine", encoding="utf-8")
    written = _write_without_links([out / "a.md", out / "a (2).md", out / "a (3).md"], b"new", explicit=False)
    assert written == out / "a (3).md" and written.read_bytes() == b"new"
    assert victim.read_text(encoding="utf-8") == "precious"
    assert (out / "a (2).md").read_text(encoding="utf-8") == "mine"
    with pytest.raises(ExportError, match="already exists"):
        _write_without_links([out / "a (2).md"], b"new", explicit=True)


def test_without_hard_links_a_full_disk_leaves_no_partial_file(small_disk: Path) -> None:
    from disks import fill

    fill(small_disk)
    with pytest.raises(StorageFailed, match="full"), os_errors(small_disk / "a.md", "export to"):
        _write_without_links([small_disk / "a.md"], b"x" * 20_000, explicit=False)
    assert [p.name for p in small_disk.iterdir()] == ["filler"]


def test_a_folder_given_as_the_path_is_refused_asking_for_a_file_name(
    conversation: Conversation, out: Path
) -> None:
    (out / "exports").mkdir()
    with pytest.raises(ExportError, match="is a folder: name a file in it"):
        export_conversation(conversation, "markdown", "exports", directory=out)
    assert list((out / "exports").iterdir()) == []
