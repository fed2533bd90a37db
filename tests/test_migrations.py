"""Older conversation files stay readable, and stay as they are until nbchat must write more.

Each step of nbchat/migrations.py is checked on its own, then a real version 1 file
(data/examples/conversation-v1.jsonl) goes through a real ConversationStore: read the same,
left byte for byte alone by reads and by appends it can hold, rewritten once at version 2 when
it receives a message with context, and a file from a newer nbchat is never touched.
"""

from __future__ import annotations

import copy
import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from test_schemas import EXAMPLE_V1, assert_conversation_file_valid, lines_of

from nbchat import (
    ConversationStore,
    CorruptFile,
    Message,
    NbchatWarning,
    UnsupportedVersion,
    migrations,
    records,
)
from nbchat.types import ContextItem

V1_LINES = lines_of(EXAMPLE_V1)
V1_HEADER: dict[str, Any] = json.loads(V1_LINES[0])
V1_MESSAGES: list[dict[str, Any]] = [json.loads(line) for line in V1_LINES[1:]]
CONVERSATION_ID: str = V1_HEADER["id"]

DF = ContextItem("object", "df", "DataFrame 3 × 2", "pandas DataFrame: 3 rows × 2 columns\n…")
CELLS = ContextItem("cells", "cells", "1 cell", "The last 1 cell run in this kernel, oldest first:\n…")


@pytest.fixture
def v1_file(data_dir: Path) -> Path:
    """The version 1 example, placed where Alice's store finds it."""
    folder = data_dir / "conversations" / "alice"
    folder.mkdir(parents=True)
    path = folder / f"{CONVERSATION_ID}.jsonl"
    shutil.copy(EXAMPLE_V1, path)
    return path


@pytest.fixture
def store(data_dir: Path, v1_file: Path) -> ConversationStore:
    return ConversationStore(data_dir, "alice")


def header_of(path: Path) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(lines_of(path)[0])
    return header


# -- each step on its own ---------------------------------------------------------------------


def test_there_is_one_step_from_each_version_to_the_next_up_to_what_nbchat_writes() -> None:
    """No gap: every version from the oldest read has a step, and the last step ends at FORMAT_VERSION."""
    assert sorted(migrations.STEPS) == list(range(records.OLDEST_VERSION, records.FORMAT_VERSION))
    assert migrations.LATEST == records.FORMAT_VERSION == 2


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
        assert message_step(message) == original
        assert "context" not in message_step(message)
        assert message == original


def test_upgrading_a_record_of_the_latest_version_leaves_it_as_it_is() -> None:
    header = {**V1_HEADER, "version": migrations.LATEST}
    assert migrations.upgrade_header(header, migrations.LATEST) == header
    question = {**V1_MESSAGES[0], "context": [DF.to_dict()]}
    assert migrations.upgrade_message(question, migrations.LATEST) == question


def test_upgrading_from_version_1_runs_the_steps_to_the_latest() -> None:
    assert migrations.upgrade_header(V1_HEADER, 1)["version"] == migrations.LATEST
    assert [migrations.upgrade_message(m, 1) for m in V1_MESSAGES] == V1_MESSAGES


# -- a version 1 file in a store ----------------------------------------------------------------


def test_a_version_1_file_reads_the_same_messages_it_holds(store: ConversationStore) -> None:
    """Every field of every line, compared with the JSON itself rather than with the parser."""
    conversation = store.get(CONVERSATION_ID)
    assert conversation.title == V1_HEADER["title"]
    assert conversation.settings.to_dict() == V1_HEADER["settings"]
    assert conversation.created == datetime.fromisoformat(V1_HEADER["created"])
    read = [
        {
            "id": m.id,
            "role": m.role,
            "content": m.content,
            "thinking": m.thinking,
            "time": m.time.isoformat(timespec="microseconds"),
            "model": m.model,
            "stats": m.stats,
        }
        for m in conversation.messages
    ]
    assert read == V1_MESSAGES
    assert all(m.context == () for m in conversation.messages)


def test_listing_and_reading_a_version_1_file_leave_it_byte_for_byte_untouched(
    store: ConversationStore, v1_file: Path
) -> None:
    before = v1_file.stat()
    assert [s.id for s in store.list()] == [CONVERSATION_ID]
    store.get(CONVERSATION_ID)
    ConversationStore(store.directory.parent.parent, "alice").get(CONVERSATION_ID)  # a cold read too
    assert v1_file.read_bytes() == EXAMPLE_V1.read_bytes()
    assert (v1_file.stat().st_ino, v1_file.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_message_without_context_is_appended_to_a_version_1_file_which_stays_version_1(
    store: ConversationStore, v1_file: Path
) -> None:
    """Version 1 can hold it: one line at the end, the old bytes and the header untouched."""
    inode = v1_file.stat().st_ino
    message = store.append(CONVERSATION_ID, Message("user", "And for quail eggs?"))
    assert v1_file.read_bytes() == EXAMPLE_V1.read_bytes() + records.message_line(message)
    assert v1_file.stat().st_ino == inode  # appended in place, not rewritten
    assert header_of(v1_file)["version"] == 1
    assert_conversation_file_valid(v1_file)
    fresh = ConversationStore(store.directory.parent.parent, "alice")
    assert fresh.get(CONVERSATION_ID).messages[-1] == message


def test_a_message_with_context_rewrites_a_version_1_file_once_at_version_2_keeping_every_message(
    store: ConversationStore, v1_file: Path
) -> None:
    old = store.get(CONVERSATION_ID)
    question = store.append(CONVERSATION_ID, Message("user", "What does @df say?", context=(DF, CELLS)))
    header, *lines = lines_of(v1_file)
    assert json.loads(header) == {**V1_HEADER, "version": 2}  # title, times and settings as they were
    assert lines[:-1] == V1_LINES[1:]  # every old message, byte for byte, ids included
    assert records.parse_message(lines[-1]) == question
    assert_conversation_file_valid(v1_file)
    for reader in (store, ConversationStore(store.directory.parent.parent, "alice")):
        conversation = reader.get(CONVERSATION_ID)
        assert conversation.messages == (*old.messages, question)
        assert conversation.messages[-1].context == (DF, CELLS)
    # Once at version 2, the next message is a plain append again.
    inode = v1_file.stat().st_ino
    answer = store.append(CONVERSATION_ID, Message("assistant", "Three rows.", model="ollama:qwen3:1.7b"))
    assert v1_file.stat().st_ino == inode
    assert lines_of(v1_file)[-1] == records.message_line(answer)


def test_another_kernel_holding_the_version_1_file_sees_it_rewritten_at_version_2(
    store: ConversationStore, v1_file: Path
) -> None:
    """A store that cached the file at version 1 reads the rewritten file, context included."""
    other = ConversationStore(store.directory.parent.parent, "alice")
    assert len(other.get(CONVERSATION_ID).messages) == 4
    question = store.append(CONVERSATION_ID, Message("user", "What does @df say?", context=(DF,)))
    assert other.get(CONVERSATION_ID).messages[-1] == question
    answer = other.append(CONVERSATION_ID, Message("assistant", "It has 3 rows."))
    assert [m.id for m in store.get(CONVERSATION_ID).messages][-2:] == [question.id, answer.id]
    assert_conversation_file_valid(v1_file)


@pytest.mark.parametrize("rewrite", ["rename", "update_settings"])
def test_renaming_or_changing_the_settings_of_a_version_1_file_writes_it_at_version_2(
    store: ConversationStore, v1_file: Path, rewrite: str
) -> None:
    """The file is rewritten whole anyway, so it is written in the newest format."""
    if rewrite == "rename":
        store.rename(CONVERSATION_ID, "Eggs")
    else:
        store.update_settings(CONVERSATION_ID, temperature=0.2)
    header, *lines = lines_of(v1_file)
    assert json.loads(header)["version"] == 2
    assert lines == V1_LINES[1:]
    assert_conversation_file_valid(v1_file)


def test_a_version_1_file_holding_a_context_line_is_damaged_not_read_as_version_2(
    data_dir: Path, v1_file: Path
) -> None:
    """Only version 2 knows context: nbchat moves such a file aside rather than guess."""
    question = {**V1_MESSAGES[0], "context": [DF.to_dict()]}
    v1_file.write_bytes(V1_LINES[0] + json.dumps(question).encode() + b"\n")
    with pytest.raises(CorruptFile, match="version 1"):
        ConversationStore(data_dir, "alice").get(CONVERSATION_ID)
    assert not v1_file.exists()
    assert len(list(v1_file.parent.glob(f"{v1_file.name}.corrupt-*"))) == 1


# -- a file from a newer nbchat -----------------------------------------------------------------


def test_a_file_of_a_version_newer_than_nbchat_writes_is_refused_and_left_untouched(
    data_dir: Path, v1_file: Path
) -> None:
    """Read, list, append, rename: each refuses it, and the bytes on disk never change."""
    newer = {**V1_HEADER, "version": records.FORMAT_VERSION + 1, "folders": ["kitchen"]}
    content = json.dumps(newer).encode() + b"\n" + b'{"turn": "a layout nbchat does not know"}\n'
    v1_file.write_bytes(content)
    store = ConversationStore(data_dir, "alice")
    with pytest.raises(UnsupportedVersion, match=f"format version {records.FORMAT_VERSION + 1}"):
        store.get(CONVERSATION_ID)
    with pytest.raises(UnsupportedVersion):
        store.append(CONVERSATION_ID, Message("user", "Hello", context=(DF,)))
    with pytest.raises(UnsupportedVersion):
        store.rename(CONVERSATION_ID, "Mine now")
    with pytest.warns(NbchatWarning, match="newer nbchat"):
        assert store.list() == []
    assert v1_file.read_bytes() == content
    assert list(v1_file.parent.glob("*.corrupt-*")) == []
