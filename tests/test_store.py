"""One user's conversations on disk: what each operation does, what it refuses, and how
damaged files are handled without losing anything that was saved."""

from __future__ import annotations

import json
import os
import re
import tracemalloc
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from nbchat import (
    ConversationNotFound,
    ConversationSettings,
    ConversationStore,
    CorruptFile,
    InvalidUsername,
    InvalidValue,
    Message,
    NbchatWarning,
    NotLoggedIn,
    UnsupportedVersion,
    records,
)
from nbchat.errors import StorageFailed
from nbchat.files import ensure_private_dir
from nbchat.store import claim_directory
from nbchat.types import MAX_CONTENT_CHARS, MAX_MODEL_ID_CHARS, MAX_SYSTEM_CHARS, MAX_TITLE_CHARS, new_id


@pytest.fixture
def store(data_dir: Path) -> ConversationStore:
    return ConversationStore(data_dir, "alice")


def file_of(store: ConversationStore, conversation_id: str) -> Path:
    return store.directory / f"{conversation_id}.jsonl"


# -- creating and listing -------------------------------------------------------------------


def test_a_new_conversation_has_no_model_until_one_is_chosen(store: ConversationStore) -> None:
    conversation = store.create()
    assert conversation.title == "New conversation"
    assert conversation.model is None
    assert conversation.settings == ConversationSettings()
    assert conversation.messages == ()
    assert conversation.created.tzinfo is not None
    assert store.get(conversation.id) == conversation


def test_create_with_title_and_settings(store: ConversationStore) -> None:
    settings = ConversationSettings(
        model="ollama:qwen3:1.7b", temperature=0.2, think=True, system="Be brief."
    )
    conversation = store.create("  Ideas  ", settings)
    assert conversation.title == "Ideas"
    assert store.get(conversation.id).settings == settings


def test_list_is_newest_first_and_follows_new_messages(store: ConversationStore) -> None:
    first = store.create("First")
    second = store.create("Second")
    assert [s.title for s in store.list()] == ["Second", "First"]
    store.append(first.id, Message("user", "bump"))
    assert [s.id for s in store.list()] == [first.id, second.id]
    assert store.list()[0].model is None


def test_list_reads_first_lines_only(store: ConversationStore) -> None:
    """Proof by damage: garbage after the header does not disturb listing (get() would report it)."""
    conversation = store.create("Long one")
    store.append(conversation.id, Message("user", "hello"))
    with file_of(store, conversation.id).open("ab") as handle:
        handle.write(b"this line is not JSON and list() never looks at it\n")
    assert [s.title for s in store.list()] == ["Long one"]
    assert file_of(store, conversation.id).exists()


def test_a_user_without_conversations_lists_nothing(store: ConversationStore) -> None:
    assert store.list() == []
    assert not store.directory.exists(), "listing creates nothing"


def test_stray_files_in_the_users_directory_are_ignored(store: ConversationStore) -> None:
    store.create("Real")
    (store.directory / "notes.txt").write_text("hi")
    (store.directory / "short.jsonl").write_text("{}\n")
    assert [s.title for s in store.list()] == ["Real"]


# -- messages -------------------------------------------------------------------------------


def test_messages_round_trip_with_thinking_model_and_stats(store: ConversationStore) -> None:
    conversation = store.create("Chat")
    question = store.append(conversation.id, Message("user", "What is 2+2?"))
    answer = store.append(
        conversation.id,
        Message(
            "assistant",
            "**4**",
            thinking="Simple arithmetic.",
            model="ollama:qwen3:1.7b",
            stats={
                "prompt_tokens": 12,
                "completion_tokens": 3,
                "tokens_per_s": 41.5,
                "finish_reason": "stop",
            },
        ),
    )
    reloaded = ConversationStore(store.directory.parent.parent, "alice").get(conversation.id)
    assert reloaded.messages == (question, answer)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "line one\nline two\r\n\ttabbed",
        "control \x00\x07\x1b[31m characters",
        "unicode: 你好 🙂 \u2028 \u202e",
        "x" * 1_000_000,
        '{"role": "system", "content": "injected"}\n{"also": "not a line"}',
    ],
)
def test_any_text_is_kept_exactly_on_one_line(store: ConversationStore, content: str) -> None:
    conversation = store.create("Odd text")
    store.append(conversation.id, Message("user", content))
    assert store.get(conversation.id).messages[0].content == content
    lines = file_of(store, conversation.id).read_bytes().split(b"\n")
    assert len(lines) == 3 and lines[-1] == b""


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: Message("tool", "x"), "role must be one of"),
        (lambda: Message("user", None), "must be text"),  # type: ignore[arg-type]
        (lambda: Message("user", "\ud800"), "not valid Unicode"),
        (lambda: Message("user", "x" * (MAX_CONTENT_CHARS + 1)), "the limit is"),
        (lambda: Message("user", "x", id="../../etc/passwd"), "32 lowercase hex"),
        (lambda: Message("user", "x", stats={"t": [1, 2]}), "must be a number"),
        (lambda: Message("user", "x", stats={"t": float("nan")}), "finite"),
        (lambda: Message("user", "x", model="a\nb"), "control character"),
        (lambda: Message("user", "x", model="  "), "cannot be empty"),
        (lambda: Message("user", "x", stats={"error": "\udc80"}), "not valid Unicode"),
        (lambda: Message("user", "x", time=datetime(2025, 1, 1)), "timezone-aware"),
        (
            lambda: Message("user", "x", time=datetime.min.replace(tzinfo=timezone(timedelta(hours=1)))),
            "out of range",
        ),
    ],
)
def test_invalid_messages_are_refused_before_reaching_disk(make, reason: str) -> None:
    with pytest.raises(InvalidValue, match=reason):
        make()


def test_append_refuses_what_is_not_a_message_or_already_saved(store: ConversationStore) -> None:
    conversation = store.create("Chat")
    with pytest.raises(InvalidValue, match="takes a Message"):
        store.append(conversation.id, {"role": "user", "content": "hi"})  # type: ignore[arg-type]
    message = store.append(conversation.id, Message("user", "once"))
    with pytest.raises(InvalidValue, match="already saved"):
        store.append(conversation.id, message)
    assert len(store.get(conversation.id).messages) == 1


def test_append_only_adds_a_line(store: ConversationStore) -> None:
    """An append never rewrites: same file (inode), old bytes untouched, one line longer."""
    conversation = store.create("Chat")
    for i in range(20):
        store.append(conversation.id, Message("user", f"message {i}"))
    path = file_of(store, conversation.id)
    before, inode = path.read_bytes(), path.stat().st_ino
    store.append(conversation.id, Message("assistant", "one more"))
    after = path.read_bytes()
    assert path.stat().st_ino == inode
    assert after.startswith(before) and after[len(before) :].count(b"\n") == 1


# -- rename, settings, delete ---------------------------------------------------------------


def test_rename_keeps_every_message(store: ConversationStore) -> None:
    conversation = store.create("Old")
    store.append(conversation.id, Message("user", "hello"))
    renamed = store.rename(conversation.id, "New title")
    assert renamed.title == "New title" and renamed.updated > conversation.updated
    fresh = ConversationStore(store.directory.parent.parent, "alice").get(conversation.id)
    assert fresh.title == "New title" and [m.content for m in fresh.messages] == ["hello"]


@pytest.mark.parametrize(
    ("title", "reason"),
    [
        ("", "cannot be empty"),
        ("   ", "cannot be empty"),
        ("two\nlines", "control character U\\+000A"),
        ("bell\x07", "control character"),
        ("x" * 201, "the limit is 200"),
        (None, "must be text"),
        ("\ud800", "not valid Unicode"),
    ],
)
def test_bad_titles_are_refused_and_nothing_changes(store: ConversationStore, title, reason: str) -> None:
    conversation = store.create("Keep")
    before = file_of(store, conversation.id).read_bytes()
    with pytest.raises(InvalidValue, match=reason):
        store.rename(conversation.id, title)
    if title is not None:  # create(None) means the default title
        with pytest.raises(InvalidValue, match=reason):
            store.create(title)
    assert file_of(store, conversation.id).read_bytes() == before
    assert len(store.list()) == 1


def test_settings_belong_to_the_conversation(store: ConversationStore) -> None:
    one, two = store.create("One"), store.create("Two")
    store.update_settings(one.id, model="ollama:phi3", temperature=1.5, max_new_tokens=64)
    store.update_settings(two.id, model="qwen3", think=True, system="Answer in French.")
    assert store.get(one.id).settings == ConversationSettings("ollama:phi3", 1.5, 64, False, "")
    assert store.get(two.id).settings == ConversationSettings("qwen3", 0.7, 512, True, "Answer in French.")
    store.update_settings(one.id, model=None)
    assert store.get(one.id).model is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"temperature": 2.5}, "from 0 to 2"),
        ({"temperature": -0.1}, "from 0 to 2"),
        ({"temperature": float("nan")}, "from 0 to 2"),
        ({"temperature": "hot"}, "must be a number"),
        ({"temperature": True}, "must be a number"),
        ({"max_new_tokens": 0}, "from 1 to"),
        ({"max_new_tokens": 10**9}, "from 1 to"),
        ({"max_new_tokens": 12.5}, "whole number"),
        ({"think": "yes"}, "True or False"),
        ({"model": ""}, "cannot be empty"),
        ({"model": 42}, "must be text"),
        ({"system": 42}, "must be text"),
        ({"colour": "blue"}, "Unknown setting 'colour'; the settings are max_new_tokens, model"),
    ],
)
def test_bad_settings_are_refused_and_nothing_changes(store: ConversationStore, changes, reason) -> None:
    conversation = store.create("Keep")
    before = file_of(store, conversation.id).read_bytes()
    with pytest.raises(InvalidValue, match=reason):
        store.update_settings(conversation.id, **changes)
    assert file_of(store, conversation.id).read_bytes() == before


def test_delete(store: ConversationStore) -> None:
    keep, drop = store.create("Keep"), store.create("Drop")
    store.delete(drop.id)
    assert [s.id for s in store.list()] == [keep.id]
    with pytest.raises(ConversationNotFound):
        store.get(drop.id)
    with pytest.raises(ConversationNotFound):
        store.delete(drop.id)
    with pytest.raises(ConversationNotFound):
        store.append(drop.id, Message("user", "too late"))


# -- isolation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "conversation_id",
    ["", "../bob/" + "0" * 32, "0" * 31, "0" * 33, "A" * 32, "/etc/passwd", None, 42, "0" * 32 + ".jsonl"],
)
def test_ids_that_are_not_ids_never_reach_the_filesystem(store: ConversationStore, conversation_id) -> None:
    for operation in (
        lambda: store.get(conversation_id),
        lambda: store.rename(conversation_id, "x"),
        lambda: store.update_settings(conversation_id, temperature=1.0),
        lambda: store.append(conversation_id, Message("user", "x")),
        lambda: store.delete(conversation_id),
    ):
        with pytest.raises(ConversationNotFound, match="has no conversation with id"):
            operation()


def test_a_user_cannot_reach_another_users_conversation_by_id(data_dir: Path) -> None:
    alice, bob = ConversationStore(data_dir, "alice"), ConversationStore(data_dir, "bob")
    secret = alice.create("Alice's secret")
    alice.append(secret.id, Message("user", "my secret"))
    assert bob.list() == []
    for operation in (
        lambda: bob.get(secret.id),
        lambda: bob.rename(secret.id, "mine now"),
        lambda: bob.append(secret.id, Message("user", "x")),
        lambda: bob.delete(secret.id),
    ):
        with pytest.raises(ConversationNotFound):
            operation()
    assert alice.get(secret.id).title == "Alice's secret"


def test_a_store_refuses_an_invalid_username(data_dir: Path) -> None:
    with pytest.raises(InvalidUsername):
        ConversationStore(data_dir, "../bob")


def test_usernames_share_a_store_regardless_of_case(data_dir: Path) -> None:
    created = ConversationStore(data_dir, "Alice").create("Hi")
    assert ConversationStore(data_dir, "alice").get(created.id).title == "Hi"


# -- other kernels --------------------------------------------------------------------------


def test_a_store_picks_up_what_another_kernel_appended_or_renamed(data_dir: Path) -> None:
    mine, theirs = ConversationStore(data_dir, "alice"), ConversationStore(data_dir, "alice")
    conversation = mine.create("Shared")
    mine.append(conversation.id, Message("user", "from me"))
    theirs.append(conversation.id, Message("assistant", "from the other kernel"))
    assert [m.content for m in mine.get(conversation.id).messages] == ["from me", "from the other kernel"]
    theirs.rename(conversation.id, "Renamed elsewhere")
    mine.append(conversation.id, Message("user", "after the rename"))
    final = theirs.get(conversation.id)
    assert final.title == "Renamed elsewhere"
    assert len(final.messages) == 3


def test_a_store_reads_only_lines_added_since_its_last_read(store: ConversationStore, data_dir) -> None:
    """Proof by damage: an old line overwritten in place is not re-read by a store that holds it,
    while a fresh store (which must read everything) notices."""
    conversation = store.create("Chat")
    store.append(conversation.id, Message("user", "aaaa"))
    store.get(conversation.id)
    path = file_of(store, conversation.id)
    data = path.read_bytes()
    with path.open("r+b") as handle:  # same length, same inode: only a full re-read would see it
        handle.seek(data.index(b'"aaaa"'))
        handle.write(b'"aa\x00a"')
    store.append(conversation.id, Message("assistant", "bbbb"))
    assert [m.content for m in store.get(conversation.id).messages] == ["aaaa", "bbbb"]
    with pytest.raises(CorruptFile):
        ConversationStore(data_dir, "alice").get(conversation.id)


# -- damage and repair ----------------------------------------------------------------------


def test_a_torn_last_line_is_dropped_and_the_file_repaired(store: ConversationStore) -> None:
    conversation = store.create("Chat")
    store.append(conversation.id, Message("user", "saved"))
    path = file_of(store, conversation.id)
    good = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(b'{"id":"abc","role":"assis')  # a crash mid-append
    fresh = ConversationStore(store.directory.parent.parent, "alice")
    with pytest.warns(NbchatWarning, match="incomplete last line"):
        loaded = fresh.get(conversation.id)
    assert [m.content for m in loaded.messages] == ["saved"]
    assert path.read_bytes() == good
    fresh.append(conversation.id, Message("assistant", "after repair"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            len(ConversationStore(store.directory.parent.parent, "alice").get(conversation.id).messages) == 2
        )


def test_a_torn_line_after_cached_reads_is_repaired_too(store: ConversationStore) -> None:
    conversation = store.create("Chat")
    store.append(conversation.id, Message("user", "saved"))
    store.get(conversation.id)
    path = file_of(store, conversation.id)
    good = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(b'{"id":')
    with pytest.warns(NbchatWarning):
        store.append(conversation.id, Message("user", "next"))
    assert path.read_bytes().startswith(good)
    assert [m.content for m in store.get(conversation.id).messages] == ["saved", "next"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda lines: lines[:1] + [b"not json"] + lines[1:],
        lambda lines: lines[:1] + [b'{"id": "x"}'] + lines[1:],
        lambda lines: [b"[]"] + lines[1:],
        lambda lines: [lines[0].replace(b'"temperature":0.7', b'"temperature":9')] + lines[1:],
        lambda lines: [lines[0].replace(b'"version":3', b'"version":"3"')] + lines[1:],
        lambda lines: [b""] + lines,
        lambda lines: [],
    ],
)
def test_a_damaged_file_is_moved_aside_and_named_and_others_keep_working(
    store: ConversationStore, damage
) -> None:
    healthy, damaged = store.create("Healthy"), store.create("Damaged")
    store.append(damaged.id, Message("user", "hello"))
    path = file_of(store, damaged.id)
    content = b"\n".join(damage(path.read_bytes().split(b"\n")[:-1])) + b"\n"
    path.write_bytes(content)
    fresh = ConversationStore(store.directory.parent.parent, "alice")
    with pytest.raises(CorruptFile, match="moved to") as error:
        fresh.get(damaged.id)
    assert error.value.path == path and str(path) in str(error.value)
    assert error.value.moved_to is not None and error.value.moved_to.read_bytes() == content
    assert not path.exists()
    assert [s.title for s in fresh.list()] == ["Healthy"]
    fresh.append(healthy.id, Message("user", "still fine"))


def test_listing_moves_a_file_with_a_damaged_header_aside_with_a_warning(store: ConversationStore) -> None:
    store.create("Healthy")
    broken = store.create("Broken")
    file_of(store, broken.id).write_bytes(b"garbage\n")
    with pytest.warns(NbchatWarning, match="could not be read"):
        assert [s.title for s in store.list()] == ["Healthy"]
    assert len(list(store.directory.glob(f"{broken.id}.jsonl.corrupt-*"))) == 1


def test_a_file_from_a_newer_nbchat_is_refused_and_left_untouched(store: ConversationStore) -> None:
    store.create("Current")
    newer = store.create("From the future")
    path = file_of(store, newer.id)
    header = json.loads(path.read_bytes().split(b"\n")[0])
    header["version"] = records.FORMAT_VERSION + 1
    content = json.dumps(header).encode() + b"\n" + b'{"some": "new layout"}\n' + b"no newline"
    path.write_bytes(content)
    fresh = ConversationStore(store.directory.parent.parent, "alice")
    with pytest.raises(UnsupportedVersion, match="newer nbchat"):
        fresh.get(newer.id)
    with pytest.raises(UnsupportedVersion):
        fresh.append(newer.id, Message("user", "x"))
    with pytest.warns(NbchatWarning, match="newer nbchat"):
        assert [s.title for s in fresh.list()] == ["Current"]
    assert path.read_bytes() == content


def test_files_are_written_with_private_permissions_despite_a_loose_umask(store: ConversationStore) -> None:
    old = os.umask(0)
    try:
        conversation = store.create("Chat")
        store.append(conversation.id, Message("user", "x"))
        store.rename(conversation.id, "Renamed")
    finally:
        os.umask(old)
    assert file_of(store, conversation.id).stat().st_mode & 0o777 == 0o600
    assert store.directory.stat().st_mode & 0o777 == 0o700


# -- a last line without its newline is a saved message, not a torn one ----------------------


def test_a_complete_last_message_without_its_newline_is_kept_and_the_newline_restored(
    store: ConversationStore,
) -> None:
    """An editor that drops the final newline must not cost a saved message."""
    conversation = store.create("Chat")
    store.append(conversation.id, Message("user", "first"))
    store.append(conversation.id, Message("assistant", "second"))
    path = file_of(store, conversation.id)
    path.write_bytes(path.read_bytes()[:-1])  # the newline after "second" is gone
    fresh = ConversationStore(store.directory.parent.parent, "alice")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is dropped, so nothing to warn about
        assert [m.content for m in fresh.get(conversation.id).messages] == ["first", "second"]
    assert path.read_bytes().endswith(b"}\n"), "the newline is added back under the lock"
    fresh.append(conversation.id, Message("user", "third"))
    again = ConversationStore(store.directory.parent.parent, "alice").get(conversation.id)
    assert [m.content for m in again.messages] == ["first", "second", "third"]


def test_a_store_holding_the_file_keeps_a_last_message_that_lost_its_newline(
    store: ConversationStore,
) -> None:
    conversation = store.create("Chat")
    store.append(conversation.id, Message("user", "first"))
    store.get(conversation.id)  # cached up to here
    path = file_of(store, conversation.id)
    other = ConversationStore(store.directory.parent.parent, "alice")
    other.append(conversation.id, Message("assistant", "from another kernel"))
    path.write_bytes(path.read_bytes()[:-1])
    store.append(conversation.id, Message("user", "next"))
    assert [m.content for m in other.get(conversation.id).messages] == [
        "first",
        "from another kernel",
        "next",
    ]


def test_a_header_alone_without_its_newline_is_a_conversation_not_damage(store: ConversationStore) -> None:
    conversation = store.create("Only a header")
    path = file_of(store, conversation.id)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    fresh = ConversationStore(store.directory.parent.parent, "alice")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [s.title for s in fresh.list()] == ["Only a header"]
        assert fresh.get(conversation.id).title == "Only a header"
    fresh.append(conversation.id, Message("user", "hello"))
    again = ConversationStore(store.directory.parent.parent, "alice").get(conversation.id)
    assert [m.content for m in again.messages] == ["hello"]


def test_an_unterminated_last_line_that_is_json_but_not_a_message_is_moved_aside_not_dropped(
    store: ConversationStore,
) -> None:
    """Only bytes that are not even JSON are a torn append; a whole JSON value is kept (aside)."""
    conversation = store.create("Chat")
    store.append(conversation.id, Message("user", "saved"))
    path = file_of(store, conversation.id)
    with path.open("ab") as handle:
        handle.write(b'{"note": "typed by hand"}')
    content = path.read_bytes()
    with pytest.raises(CorruptFile, match="line 3") as error:
        ConversationStore(store.directory.parent.parent, "alice").get(conversation.id)
    assert error.value.moved_to is not None and error.value.moved_to.read_bytes() == content


# -- lines that cannot be decoded at all ------------------------------------------------------

DEEP = b"[" * 100_000


def _damage(store: ConversationStore, conversation_id: str, damage) -> tuple[Path, bytes]:
    path = file_of(store, conversation_id)
    content = b"\n".join(damage(path.read_bytes().split(b"\n")[:-1])) + b"\n"
    path.write_bytes(content)
    return path, content


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda lines: [DEEP] + lines[1:], id="the header is nested 100k deep"),
        pytest.param(lambda lines: [b'{"version":1,"id":' + DEEP] + lines[1:], id="a header field is"),
    ],
)
def test_listing_survives_a_header_nested_too_deeply_to_decode(store: ConversationStore, damage) -> None:
    healthy, damaged = store.create("Healthy"), store.create("Damaged")
    path, content = _damage(store, damaged.id, damage)
    fresh = ConversationStore(store.directory.parent.parent, "alice")
    with pytest.warns(NbchatWarning, match="could not be read"):
        assert [s.title for s in fresh.list()] == ["Healthy"]
    (moved,) = store.directory.glob(f"{damaged.id}.jsonl.corrupt-*")
    assert moved.read_bytes() == content and not path.exists()
    fresh.append(healthy.id, Message("user", "still fine"))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda lines: lines + [DEEP], id="a message line is nested 100k deep"),
        pytest.param(lambda lines: lines + [b'{"id":"' + b"0" * 32 + b'","stats":' + DEEP], id="its stats"),
    ],
)
def test_a_message_nested_too_deeply_to_decode_is_one_damaged_file(store: ConversationStore, damage) -> None:
    healthy, damaged = store.create("Healthy"), store.create("Damaged")
    store.append(damaged.id, Message("user", "hello"))
    path, content = _damage(store, damaged.id, damage)
    fresh = ConversationStore(store.directory.parent.parent, "alice")
    with pytest.raises(CorruptFile, match="moved to") as error:
        fresh.get(damaged.id)
    assert error.value.moved_to is not None and error.value.moved_to.read_bytes() == content
    assert not path.exists()
    assert [s.title for s in fresh.list()] == ["Healthy"]
    fresh.append(healthy.id, Message("user", "still fine"))


def test_a_header_nested_too_deeply_is_reported_by_get_and_moved_aside(store: ConversationStore) -> None:
    conversation = store.create("Chat")
    path = file_of(store, conversation.id)
    path.write_bytes(DEEP + b"\n")
    with pytest.raises(CorruptFile, match="nest") as error:
        ConversationStore(store.directory.parent.parent, "alice").get(conversation.id)
    assert error.value.moved_to is not None and error.value.moved_to.read_bytes() == DEEP + b"\n"


# -- the disk refusing ----------------------------------------------------------------------
# (A full or read-only disk, on a real small filesystem: tests/test_store_disk.py.)


def test_a_data_dir_below_a_file_is_a_storage_error_that_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    store = ConversationStore(tmp_path / "afile" / "data", "alice")
    with pytest.raises(StorageFailed, match="part of its path is a file") as error:
        store.create("Chat")
    assert str(tmp_path / "afile" / "data") in str(error.value)
    with pytest.raises(StorageFailed, match=r"list the conversations in .*afile/data/conversations/alice"):
        store.list()


def test_a_conversation_that_cannot_be_opened_is_skipped_when_listing_with_a_warning_naming_it(
    store: ConversationStore,
) -> None:
    store.create("Readable")
    unreadable = store.create("Unreadable")
    path = file_of(store, unreadable.id)
    path.unlink()
    path.symlink_to(path)  # opening it fails (ELOOP), as an I/O error would
    with pytest.warns(NbchatWarning, match=re.escape(str(path))):
        assert [s.title for s in store.list()] == ["Readable"]
    with pytest.raises(StorageFailed, match=re.escape(str(path))):
        store.get(unreadable.id)


def test_a_login_ends_when_its_account_is_marked_anew_and_says_a_password_change_may_be_why(
    data_dir: Path,
) -> None:
    claim_directory(data_dir, "alice", "first-login")
    store = ConversationStore(data_dir, "alice", "first-login")
    store.create("Mine")
    claim_directory(data_dir, "alice", "after-password-change")  # what another kernel's change does
    with pytest.raises(NotLoggedIn, match="deleted or its password was changed since this login"):
        store.list()
    with pytest.raises(NotLoggedIn, match="log in again"):
        store.get(new_id())


def test_a_huge_file_without_a_header_line_is_moved_aside_without_being_read_into_memory(
    store: ConversationStore,
) -> None:
    """No header nbchat writes comes near a megabyte; a 64 MB first line is not one (a binary file?)."""
    store.create("Healthy")
    damaged = store.create("Damaged")
    path = file_of(store, damaged.id)
    path.write_bytes(b"\xff" * 64 * 2**20)
    tracemalloc.start()
    try:
        with pytest.warns(NbchatWarning, match="longer than any header"):
            assert [s.title for s in store.list()] == ["Healthy"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"listing held {peak / 2**20:.0f} MiB"
    assert not path.exists() and len(list(store.directory.glob(f"{damaged.id}.jsonl.corrupt-*"))) == 1


def test_the_longest_header_nbchat_can_write_still_lists_and_loads(store: ConversationStore) -> None:
    """The header size bound leaves room for every allowed value at its worst (\\u escapes)."""
    settings = ConversationSettings(model="m" * MAX_MODEL_ID_CHARS, system="\x01" * MAX_SYSTEM_CHARS)
    conversation = store.create("𝕏" * MAX_TITLE_CHARS, settings)
    fresh = ConversationStore(store.directory.parent.parent, "alice")
    assert [s.title for s in fresh.list()] == [conversation.title]
    assert fresh.get(conversation.id).settings == settings


# -- reading without the lock ---------------------------------------------------------------


def test_a_reader_that_cannot_lock_leaves_an_unfinished_append_alone_and_sees_it_once_done(
    store: ConversationStore,
) -> None:
    """What makes unlocked reading safe: it repairs nothing and remembers complete lines only,
    so another kernel's append that is still being written is neither cut off nor misread."""
    conversation = store.create("Chat")
    saved = store.append(conversation.id, Message("user", "saved"))
    lock = store.directory / ".lock"
    lock.unlink()
    lock.mkdir()  # the lock file cannot be opened, as on a read-only disk
    reader = ConversationStore(store.directory.parent.parent, "alice")
    path = file_of(store, conversation.id)
    written = Message("assistant", "being written by another kernel", parent=saved.id)
    line = records.message_line(written)
    with path.open("ab") as handle:
        handle.write(line[:20])
    during = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reader.get(conversation.id).messages == (saved,)
    assert path.read_bytes() == during, "an unlocked reader never truncates"
    with path.open("ab") as handle:
        handle.write(line[20:-1])  # complete but for its newline: already a whole message
    assert [m.content for m in reader.get(conversation.id).messages] == [
        "saved",
        "being written by another kernel",
    ]
    with path.open("ab") as handle:
        handle.write(b"\n" + records.message_line(Message("user", "and one more", parent=written.id)))
    assert [m.content for m in reader.get(conversation.id).messages] == [
        "saved",
        "being written by another kernel",
        "and one more",
    ]
    with pytest.raises(StorageFailed, match=re.escape(str(lock))):
        reader.append(conversation.id, Message("user", "a writer needs the lock"))


def test_private_folders_are_tightened_but_never_made_writable_again(tmp_path: Path) -> None:
    loose, read_only = tmp_path / "loose", tmp_path / "read-only"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    read_only.mkdir()
    read_only.chmod(0o550)  # its owner made it read-only on purpose
    ensure_private_dir(loose)
    ensure_private_dir(read_only)
    assert loose.stat().st_mode & 0o777 == 0o700
    assert read_only.stat().st_mode & 0o777 == 0o500
    assert ensure_private_dir(tmp_path / "new" / "folder").stat().st_mode & 0o777 == 0o700


def test_reading_a_conversation_creates_no_folder(store: ConversationStore) -> None:
    with pytest.raises(ConversationNotFound):
        store.get(new_id())
    assert not store.directory.parent.parent.exists(), "get() needs nothing written, so it writes nothing"


def test_a_damaged_file_is_reported_in_a_sentence_not_a_megabyte(store: ConversationStore) -> None:
    conversation = store.create("Chat")
    path = file_of(store, conversation.id)
    header = json.loads(path.read_bytes())
    header["settings"]["temperature"] = list(range(200_000))
    header["created"] = "x" * 1_000_000
    path.write_bytes(json.dumps(header).encode() + b"\n")
    with pytest.raises(CorruptFile, match="moved to") as error:
        ConversationStore(store.directory.parent.parent, "alice").get(conversation.id)
    assert len(str(error.value)) < 1000


def test_a_late_draft_of_a_saved_reply_is_ignored_and_does_not_switch_the_branch(
    store: ConversationStore,
) -> None:
    """nbchat never writes one (append_draft refuses), but a hand-edited file may hold it."""
    conversation = store.create("Chat")
    q1 = store.append(conversation.id, Message("user", "q1"))
    a1 = store.append(conversation.id, Message("assistant", "a1"))
    q2 = store.append(conversation.id, Message("user", "q2"))
    a2 = store.append(conversation.id, Message("assistant", "a2"))
    edited = store.append(conversation.id, Message("user", "q2, edited", parent=a1.id))
    with file_of(store, conversation.id).open("ab") as handle:
        handle.write(records.draft_line(records.Draft(a2.id, q2.id, None, a2.time, "late", "")))
    fresh = ConversationStore(store.directory.parent.parent, "alice").get(conversation.id)
    assert [m.id for m in fresh.messages] == [q1.id, a1.id, edited.id]
    assert fresh.tree.get(a2.id).content == "a2"


def test_a_reply_this_store_drafted_is_shown_once_any_store_has_saved_it(store: ConversationStore) -> None:
    """Its drafts are hidden here (the reply is shown live), its saved message never is."""
    conversation = store.create("Chat")
    question = store.append(conversation.id, Message("user", "q"))
    reply = Message("assistant", "the answer", parent=question.id)
    store.append_draft(conversation.id, records.Draft(reply.id, question.id, None, reply.time, "the", ""))
    assert [m.id for m in store.get(conversation.id).messages] == [question.id]
    other = ConversationStore(store.directory.parent.parent, "alice")
    assert other.get(conversation.id).messages[-1].stats == {"partial": True, "live": True}  # being written
    other.append(conversation.id, reply)
    assert [m.content for m in store.get(conversation.id).messages] == ["q", "the answer"]


def test_after_switching_to_an_earlier_message_the_next_message_answers_the_end_of_that_branch(
    store: ConversationStore,
) -> None:
    """Switching to an alternative that has answers shows its branch to the end; a new message
    (no parent given) continues from there, in this store and in a fresh one."""
    conversation = store.create("Chat")
    q1 = store.append(conversation.id, Message("user", "q1"))
    a1 = store.append(conversation.id, Message("assistant", "a1"))
    q2 = store.append(conversation.id, Message("user", "q2"))
    b1 = store.append(conversation.id, Message("assistant", "b1", parent=q1.id))  # regenerated
    assert store.select(conversation.id, a1.id).messages[-1].id == q2.id
    q3 = store.append(conversation.id, Message("user", "q3"))
    assert q3.parent == q2.id
    fresh = ConversationStore(store.directory.parent.parent, "alice")
    fresh.select(conversation.id, b1.id)
    assert store.get(conversation.id).messages[-1].id == b1.id
    fresh.select(conversation.id, a1.id)
    q4 = fresh.append(conversation.id, Message("user", "q4"))
    assert q4.parent == q3.id


def test_a_reply_saved_over_drafts_that_were_answered_meanwhile_continues_below_them(
    store: ConversationStore,
) -> None:
    """Another kernel answered the reply while it looked interrupted; the saved reply keeps its
    place and the path still runs down to that answer."""
    conversation = store.create("Chat")
    question = store.append(conversation.id, Message("user", "q"))
    reply = Message("assistant", "the whole answer", parent=question.id)
    store.append_draft(conversation.id, records.Draft(reply.id, question.id, None, reply.time, "the", ""))
    other = ConversationStore(store.directory.parent.parent, "alice")
    follow_up = other.append(conversation.id, Message("user", "and then?"))
    assert follow_up.parent == reply.id
    store.append(conversation.id, reply)
    after = store.append(conversation.id, Message("assistant", "next"))
    assert after.parent == follow_up.id
