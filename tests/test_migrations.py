"""Older conversation files stay readable, and stay as they are until nbchat writes to them.

Each step of nbchat/migrations.py is checked on its own, then real version 1 and version 2 files
(data/examples/conversation-v1.jsonl and conversation-v2.jsonl, what earlier releases wrote) go
through a real ConversationStore: read as one branch, left byte for byte alone by reads,
rewritten once at version 3 by the first append of any kind (every message kept, each one's
parent the message on the line before), seen rewritten by another kernel's store; lines an older
version cannot hold are damage, and a file from a newer nbchat is never touched.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from test_schemas import EXAMPLE_V1, EXAMPLE_V2, assert_conversation_file_valid, lines_of

from nbchat import (
    ConversationStore,
    CorruptFile,
    Message,
    NbchatWarning,
    UnsupportedVersion,
    migrations,
    records,
)
from nbchat.types import ContextItem, utcnow

EXAMPLES = {1: EXAMPLE_V1, 2: EXAMPLE_V2}
V1_LINES = lines_of(EXAMPLE_V1)
V1_HEADER: dict[str, Any] = json.loads(V1_LINES[0])
V1_MESSAGES: list[dict[str, Any]] = [json.loads(line) for line in V1_LINES[1:]]
V2_LINES = lines_of(EXAMPLE_V2)
V2_HEADER: dict[str, Any] = json.loads(V2_LINES[0])
V2_MESSAGES: list[dict[str, Any]] = [json.loads(line) for line in V2_LINES[1:]]

DF = ContextItem("object", "df", "DataFrame 3 × 2", "pandas DataFrame: 3 rows × 2 columns\n…")
CELLS = ContextItem("cells", "cells", "1 cell", "The last 1 cell run in this kernel, oldest first:\n…")


def chained(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decoded older message lines as version 3 has them: each follows the line before."""
    parents = [None, *(m["id"] for m in messages)][: len(messages)]
    return [{**m, "parent": parent} for m, parent in zip(messages, parents, strict=True)]


def header_of(path: Path) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(lines_of(path)[0])
    return header


def place(data_dir: Path, version: int) -> Path:
    """The version ``version`` example, placed where Alice's store finds it."""
    folder = data_dir / "conversations" / "alice"
    folder.mkdir(parents=True, exist_ok=True)
    example = EXAMPLES[version]
    path = folder / f"{json.loads(lines_of(example)[0])['id']}.jsonl"
    shutil.copy(example, path)
    return path


@pytest.fixture(params=[1, 2], ids=["version 1", "version 2"])
def version(request: pytest.FixtureRequest) -> int:
    number: int = request.param
    return number


@pytest.fixture
def old_file(data_dir: Path, version: int) -> Path:
    return place(data_dir, version)


@pytest.fixture
def store(data_dir: Path, old_file: Path) -> ConversationStore:
    return ConversationStore(data_dir, "alice")


def conversation_id(path: Path) -> str:
    return path.name.removesuffix(".jsonl")


def old_lines(version: int) -> list[bytes]:
    return lines_of(EXAMPLES[version])


# -- each step on its own ---------------------------------------------------------------------


def test_there_is_one_step_from_each_version_to_the_next_up_to_what_nbchat_writes() -> None:
    """No gap: every version from the oldest read has a step, and the last step ends at FORMAT_VERSION."""
    assert sorted(migrations.STEPS) == list(range(records.OLDEST_VERSION, records.FORMAT_VERSION))
    assert migrations.LATEST == records.FORMAT_VERSION == records.TREE_VERSION == 3


def test_the_header_step_from_1_to_2_changes_the_version_and_nothing_else() -> None:
    header_step, _ = migrations.STEPS[1]
    original = copy.deepcopy(V1_HEADER)
    upgraded = header_step(V1_HEADER)
    assert upgraded == {**original, "version": 2}
    assert original == V1_HEADER  # the decoded line it was given is left as it was


def test_the_message_step_from_1_to_2_keeps_every_field_and_adds_no_context() -> None:
    _, message_step = migrations.STEPS[1]
    for message in V1_MESSAGES:
        original = copy.deepcopy(message)
        assert message_step(message, None) == original
        assert "context" not in message_step(message, "0" * 32)
        assert message == original


def test_the_header_step_from_2_to_3_changes_the_version_and_nothing_else() -> None:
    header_step, _ = migrations.STEPS[2]
    original = copy.deepcopy(V2_HEADER)
    assert header_step(V2_HEADER) == {**original, "version": 3}
    assert original == V2_HEADER


def test_the_message_step_from_2_to_3_sets_the_parent_to_the_previous_lines_message() -> None:
    """One branch: the first message answers nothing, every later one the message on the line before;
    every other field, context included, is kept, and the decoded line is not changed in place."""
    _, message_step = migrations.STEPS[2]
    previous = None
    for message, expected in zip(V2_MESSAGES, chained(V2_MESSAGES), strict=True):
        original = copy.deepcopy(message)
        upgraded = message_step(message, previous)
        assert upgraded == expected
        assert upgraded.keys() - original.keys() == {"parent"}
        assert message == original
        previous = message["id"]
    assert "context" in message_step(V2_MESSAGES[0], None)  # the question that attached @df


def test_upgrading_a_record_of_the_latest_version_leaves_it_as_it_is() -> None:
    header = {**V2_HEADER, "version": migrations.LATEST}
    assert migrations.upgrade_header(header, migrations.LATEST) == header
    question = {**V2_MESSAGES[0], "parent": None}
    assert migrations.upgrade_message(question, migrations.LATEST, "f" * 32) == question


@pytest.mark.parametrize(
    ("header", "messages"), [(V1_HEADER, V1_MESSAGES), (V2_HEADER, V2_MESSAGES)], ids=["from 1", "from 2"]
)
def test_upgrading_an_older_record_runs_every_step_to_the_latest(
    header: dict[str, Any], messages: list[dict[str, Any]]
) -> None:
    version = header["version"]
    assert migrations.upgrade_header(header, version) == {**header, "version": migrations.LATEST}
    previous_ids = [None, *(m["id"] for m in messages[:-1])]
    upgraded = [
        migrations.upgrade_message(m, version, p) for m, p in zip(messages, previous_ids, strict=True)
    ]
    assert upgraded == chained(messages)


# -- an older file in a store -------------------------------------------------------------------


def test_an_older_file_reads_the_messages_it_holds_as_one_branch(
    store: ConversationStore, old_file: Path, version: int
) -> None:
    """Every field of every line, compared with the JSON itself rather than with the parser."""
    header, *lines = old_lines(version)
    decoded = json.loads(header)
    conversation = store.get(conversation_id(old_file))
    assert conversation.title == decoded["title"]
    assert conversation.settings.to_dict() == decoded["settings"]
    assert conversation.created == datetime.fromisoformat(decoded["created"])
    read = [json.loads(records.message_line(m)) for m in conversation.messages]
    assert read == chained([json.loads(line) for line in lines])
    assert conversation.tree.messages == conversation.messages  # one branch: the path is everything
    assert all(len(conversation.alternatives(m.id)) == 1 for m in conversation.messages)


def test_listing_and_reading_an_older_file_leave_it_byte_for_byte_untouched(
    store: ConversationStore, old_file: Path, version: int, data_dir: Path
) -> None:
    before = old_file.stat()
    assert [s.id for s in store.list()] == [conversation_id(old_file)]
    store.get(conversation_id(old_file))
    ConversationStore(data_dir, "alice").get(conversation_id(old_file))  # a cold read too
    assert old_file.read_bytes() == EXAMPLES[version].read_bytes()
    assert (old_file.stat().st_ino, old_file.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_selecting_a_message_already_on_the_path_of_an_older_file_writes_nothing(
    store: ConversationStore, old_file: Path, version: int
) -> None:
    """A single branch has nothing to switch to: no select line, so no rewrite either."""
    cid = conversation_id(old_file)
    first_answer = store.get(cid).messages[1]
    assert store.select(cid, first_answer.id).messages == store.get(cid).messages
    assert old_file.read_bytes() == EXAMPLES[version].read_bytes()


def _plain(store: ConversationStore, cid: str) -> Message:
    return store.append(cid, Message("user", "And for quail eggs?"))


def _regenerated(store: ConversationStore, cid: str) -> Message:
    last_question = store.get(cid).messages[-2]
    return store.append(cid, Message("assistant", "2½ minutes.", parent=last_question.id))


def _edited(store: ConversationStore, cid: str) -> Message:
    first_answer = store.get(cid).messages[1]
    return store.append(cid, Message("user", "And for duck eggs?", parent=first_answer.id))


def _new_root(store: ConversationStore, cid: str) -> Message:
    return store.append(cid, Message("user", "How long for a hard yolk?"), new_root=True)


def _with_context(store: ConversationStore, cid: str) -> Message:
    return store.append(cid, Message("user", "What does @df say?", context=(DF, CELLS)))


def _draft(store: ConversationStore, cid: str) -> Message:
    """A reply's first draft, then a kernel that dies: the next reader shows it interrupted."""
    leaf = store.get(cid).messages[-1]
    reply = Message("assistant", "Boil them for", parent=leaf.id, model="ollama:qwen3:1.7b")
    store.append_draft(cid, records.Draft(reply.id, leaf.id, reply.model, reply.time, reply.content, ""))
    return reply


FIRST_WRITES: dict[str, Callable[[ConversationStore, str], Message]] = {
    "a plain message": _plain,
    "a regenerated reply": _regenerated,
    "an edited question": _edited,
    "a new first question": _new_root,
    "a question with context": _with_context,
    "a reply's draft": _draft,
}


@pytest.mark.parametrize("write", FIRST_WRITES.values(), ids=FIRST_WRITES.keys())
def test_the_first_append_of_any_kind_rewrites_an_older_file_once_at_version_3_keeping_every_message(
    store: ConversationStore,
    old_file: Path,
    version: int,
    data_dir: Path,
    write: Callable[[ConversationStore, str], Message],
) -> None:
    """Any append, not only one the old format cannot hold: an older nbchat then refuses the file as
    newer instead of misreading it. Header and messages keep every field; each message gains its parent."""
    cid = conversation_id(old_file)
    old = store.get(cid)
    added = write(store, cid)
    header, *lines = lines_of(old_file)
    old_header, *old_messages = old_lines(version)
    assert json.loads(header) == {**json.loads(old_header), "version": 3}  # title, times, settings kept
    assert [json.loads(line) for line in lines[:-1]] == chained([json.loads(line) for line in old_messages])
    assert lines[:-1] == [records.message_line(m) for m in old.messages]  # ids and text byte for byte
    assert json.loads(lines[-1]).get("id", json.loads(lines[-1]).get("draft")) == added.id
    assert_conversation_file_valid(old_file)
    for reader in (store, ConversationStore(data_dir, "alice")):
        tree = reader.get(cid).tree
        assert tree.messages[:4] == old.messages
        if write is _draft and reader is store:
            assert added.id not in tree  # still streaming here: the store that drafts it hides it
            continue
        assert added.id in tree and tree.get(added.id).parent == added.parent
    if write is _draft:  # another reader shows the reply so far, still being written by ``store``
        shown = ConversationStore(data_dir, "alice").get(cid).messages[-1]
        assert (shown.id, shown.stats) == (added.id, {"partial": True, "live": True})
    # Once at version 3, the next line is a plain append: same file, old bytes untouched.
    before, inode = old_file.read_bytes(), old_file.stat().st_ino
    leaf = store.get(cid).messages[-1]
    answer = store.append(cid, Message("assistant", "Three minutes.", parent=leaf.id))
    assert old_file.stat().st_ino == inode
    assert old_file.read_bytes() == before + records.message_line(answer)


def test_another_kernel_holding_the_older_file_sees_it_rewritten_at_version_3(
    store: ConversationStore, old_file: Path, data_dir: Path
) -> None:
    """A store that cached the file at its old version reads the rewritten file, and appends to it."""
    cid = conversation_id(old_file)
    other = ConversationStore(data_dir, "alice")
    assert len(other.get(cid).messages) == 4
    question = store.append(cid, Message("user", "What does @df say?", context=(DF,)))
    assert other.get(cid).messages[-1] == question
    assert other.get(cid).messages[-1].context == (DF,)
    answer = other.append(cid, Message("assistant", "It has 3 rows."))
    assert answer.parent == question.id
    regenerated = store.append(cid, Message("assistant", "Three rows.", parent=question.id))
    for reader in (store, other):
        conversation = reader.get(cid)
        assert [m.id for m in conversation.messages][-2:] == [question.id, regenerated.id]
        assert conversation.alternatives(answer.id) == (answer, regenerated)
    assert header_of(old_file)["version"] == 3
    assert_conversation_file_valid(old_file)


@pytest.mark.parametrize("rewrite", ["rename", "update_settings"])
def test_renaming_or_changing_the_settings_of_an_older_file_writes_it_at_version_3(
    store: ConversationStore, old_file: Path, version: int, rewrite: str
) -> None:
    """The file is rewritten whole anyway, so it is written in the newest format."""
    cid = conversation_id(old_file)
    if rewrite == "rename":
        store.rename(cid, "Eggs")
    else:
        store.update_settings(cid, temperature=0.2)
    header, *lines = lines_of(old_file)
    assert json.loads(header)["version"] == 3
    assert [json.loads(line) for line in lines] == chained(
        [json.loads(line) for line in old_lines(version)[1:]]
    )
    assert_conversation_file_valid(old_file)


def test_a_version_1_file_holding_a_context_line_is_damaged_not_read_as_version_2(data_dir: Path) -> None:
    """Only version 2 on knows context: nbchat moves such a file aside rather than guess."""
    path = place(data_dir, 1)
    question = {**V1_MESSAGES[0], "context": [DF.to_dict()]}
    path.write_bytes(V1_LINES[0] + json.dumps(question).encode() + b"\n")
    with pytest.raises(CorruptFile, match="version 1"):
        ConversationStore(data_dir, "alice").get(conversation_id(path))
    assert not path.exists()
    assert len(list(path.parent.glob(f"{path.name}.corrupt-*"))) == 1


def _with_parent(lines: list[bytes]) -> bytes:
    second = {**json.loads(lines[2]), "parent": json.loads(lines[1])["id"]}
    return lines[1] + json.dumps(second).encode() + b"\n"


def _with_select(lines: list[bytes]) -> bytes:
    select = records.Select(json.loads(lines[1])["id"], utcnow())
    return lines[1] + lines[2] + records.select_line(select)


def _with_draft(lines: list[bytes]) -> bytes:
    question = json.loads(lines[1])["id"]
    draft = records.Draft("d" * 32, question, "ollama:qwen3:1.7b", utcnow(), "Six", "")
    return lines[1] + records.draft_line(draft)


VERSION_3_LINES: dict[str, tuple[Callable[[list[bytes]], bytes], str]] = {
    "a parent": (_with_parent, "has a parent field, which only version 3 knows"),
    "a select line": (_with_select, "holds a draft or select line, which only version 3 knows"),
    "a draft line": (_with_draft, "holds a draft or select line, which only version 3 knows"),
}


@pytest.mark.parametrize(("body", "reason"), VERSION_3_LINES.values(), ids=VERSION_3_LINES.keys())
def test_an_older_file_holding_what_only_version_3_knows_is_damaged_not_read_as_a_tree(
    data_dir: Path, old_file: Path, version: int, body: Callable[[list[bytes]], bytes], reason: str
) -> None:
    """A parent, a select or a draft in a file whose header says 1 or 2 is not a branch to follow:
    the header and the body disagree, so nbchat moves the file aside (never deleting it)."""
    lines = old_lines(version)
    content = lines[0] + body(lines)
    old_file.write_bytes(content)
    with pytest.raises(CorruptFile, match=f"version {version} .*{reason}"):
        ConversationStore(data_dir, "alice").get(conversation_id(old_file))
    assert not old_file.exists()
    (moved,) = old_file.parent.glob(f"{old_file.name}.corrupt-*")
    assert moved.read_bytes() == content


# -- a file from a newer nbchat -----------------------------------------------------------------


def test_a_file_of_a_version_newer_than_nbchat_writes_is_refused_and_left_untouched(
    data_dir: Path, old_file: Path, version: int
) -> None:
    """Read, list, append, draft, select, rename: each refuses it, and the bytes on disk never change."""
    header = json.loads(old_lines(version)[0])
    newer = {**header, "version": records.FORMAT_VERSION + 1, "folders": ["kitchen"]}
    content = json.dumps(newer).encode() + b"\n" + b'{"turn": "a layout nbchat does not know"}\n'
    old_file.write_bytes(content)
    store = ConversationStore(data_dir, "alice")
    cid = conversation_id(old_file)
    with pytest.raises(UnsupportedVersion, match=f"format version {records.FORMAT_VERSION + 1}"):
        store.get(cid)
    with pytest.raises(UnsupportedVersion):
        store.append(cid, Message("user", "Hello", context=(DF,)))
    with pytest.raises(UnsupportedVersion):
        store.append_draft(cid, records.Draft("d" * 32, None, None, utcnow(), "Hel", ""))
    with pytest.raises(UnsupportedVersion):
        store.select(cid, "e" * 32)
    with pytest.raises(UnsupportedVersion):
        store.rename(cid, "Mine now")
    with pytest.warns(NbchatWarning, match="newer nbchat"):
        assert store.list() == []
    assert old_file.read_bytes() == content
    assert list(old_file.parent.glob("*.corrupt-*")) == []


# -- files the earlier releases wrote (tests/fixtures/make_older_files.py) ----------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RELEASE_FILES = sorted(FIXTURES.glob("v[12]-*.jsonl"))


def test_there_are_files_of_each_older_version_from_the_releases_that_wrote_them() -> None:
    assert sorted({header_of(path)["version"] for path in RELEASE_FILES}) == [1, 2]
    assert len(RELEASE_FILES) >= 4


@pytest.mark.parametrize("release_file", RELEASE_FILES, ids=[p.stem for p in RELEASE_FILES])
def test_a_file_an_earlier_release_wrote_reads_as_one_branch_and_migrates_on_its_first_append(
    data_dir: Path, release_file: Path
) -> None:
    """An empty conversation and one of awkward text (line separators, CR LF, NUL, emoji, right to
    left; a rename and a settings change; an empty reply), as the releases writing versions 1 and 2
    saved them: read unchanged, then rewritten once at version 3 with every line's text intact."""
    header, *lines = lines_of(release_file)
    cid = json.loads(header)["id"]
    folder = data_dir / "conversations" / "alice"
    folder.mkdir(parents=True)
    path = folder / f"{cid}.jsonl"
    shutil.copy(release_file, path)
    store = ConversationStore(data_dir, "alice")
    assert [s.title for s in store.list()] == [json.loads(header)["title"]]
    old = store.get(cid)
    assert [json.loads(records.message_line(m)) for m in old.messages] == chained(
        [json.loads(x) for x in lines]
    )
    assert path.read_bytes() == release_file.read_bytes()
    added = store.append(cid, Message("user", "Still there?"))
    assert added.parent == (json.loads(lines[-1])["id"] if lines else None)
    new_header, *new_lines = lines_of(path)
    assert json.loads(new_header) == {**json.loads(header), "version": 3}
    assert [json.loads(x) for x in new_lines] == [
        *chained([json.loads(x) for x in lines]),
        json.loads(records.message_line(added)),
    ]
    assert_conversation_file_valid(path)
    fresh = ConversationStore(data_dir, "alice").get(cid)
    assert fresh.messages == (*old.messages, added)
    assert fresh.title == old.title and fresh.settings == old.settings
