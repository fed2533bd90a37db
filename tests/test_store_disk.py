"""The conversation store on a real disk that is full or read-only (a small tmpfs, mounted as root).

A refused write is a ``StorageFailed`` (``StorageFull`` when out of space) that
names the file and says what to do; it leaves the file and the store as they
were, so the same message saves once there is space again. A read-only data
dir can still be read.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from disks import fill, mount_small_disk, remount_read_only, unmount

from nbchat import ConversationStore, CorruptFile, Message, NbchatWarning
from nbchat.errors import StorageFailed, StorageFull
from nbchat.files import atomic_write_bytes, ensure_private_dir, locked, try_locked
from nbchat.store import claim_directory


@pytest.fixture
def disk(small_disk: Path) -> Path:
    """A 2 MiB filesystem of its own, so filling it up harms nothing else."""
    return small_disk


def contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


BIG = "x" * 100_000  # far more than the unused end of the file's last page


# -- a full disk ----------------------------------------------------------------------------


def test_an_append_on_a_full_disk_names_the_file_and_leaves_it_as_it_was(disk: Path) -> None:
    store = ConversationStore(disk / "data", "alice")
    conversation = store.create("Chat")
    first = store.append(conversation.id, Message("user", "saved before the disk filled"))
    path = store.directory / f"{conversation.id}.jsonl"
    before = path.read_bytes()
    filler = fill(disk)
    reply = Message("assistant", BIG)
    with pytest.raises(StorageFull) as error:
        store.append(conversation.id, reply)
    message = str(error.value)
    assert str(path) in message and "full" in message
    assert "Free some space" in message and "nothing saved before was lost" in message
    assert error.value.path == path
    assert isinstance(error.value, OSError) and error.value.errno == errno.ENOSPC
    assert path.read_bytes() == before, "the half that fitted was cut off again"
    assert store.get(conversation.id).messages == (first,), "the store does not think it was saved"

    filler.unlink()  # space is back: the very same message saves, and nothing is lost
    saved = store.append(conversation.id, reply)
    assert saved == replace(reply, parent=first.id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torn line to repair
        reloaded = ConversationStore(disk / "data", "alice").get(conversation.id)
    assert reloaded.messages == (first, saved)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda store, cid: store.rename(cid, "T" * 200), id="rename"),
        pytest.param(lambda store, cid: store.update_settings(cid, system=BIG), id="settings"),
        pytest.param(lambda store, cid: store.create("Another"), id="create"),
    ],
)
def test_a_rewrite_or_create_on_a_full_disk_changes_nothing_and_leaves_no_temp_file(
    disk: Path, change
) -> None:
    store = ConversationStore(disk / "data", "alice")
    conversation = store.create("Chat")
    store.append(conversation.id, Message("user", "hello"))
    before = contents(store.directory)
    filler = fill(disk)
    with pytest.raises(StorageFull, match=re.escape(str(store.directory)) + r"/[0-9a-f]{32}\.jsonl"):
        change(store, conversation.id)
    assert contents(store.directory) == before, "no temp file is left behind, no file is changed"
    assert [s.title for s in store.list()] == ["Chat"]
    filler.unlink()
    change(store, conversation.id)
    assert ConversationStore(disk / "data", "alice").get(conversation.id).messages[0].content == "hello"


def test_a_disk_out_of_inodes_refuses_the_lock_file_but_reading_still_works(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    mount_small_disk(disk, "size=2m,nr_inodes=16,mode=0700")
    try:
        store = ConversationStore(disk / "data", "alice")
        conversation = store.create("Chat")
        saved = store.append(conversation.id, Message("user", "hello"))
        lock = store.directory / ".lock"
        lock.unlink()  # as on a data dir copied without its lock files
        number = 0
        with pytest.raises(OSError) as full:
            while True:
                (disk / f"empty-{number}").touch()
                number += 1
        assert full.value.errno == errno.ENOSPC
        fresh = ConversationStore(disk / "data", "alice")
        assert [s.title for s in fresh.list()] == ["Chat"]
        assert fresh.get(conversation.id).messages == (saved,)
        with pytest.raises(StorageFull, match=re.escape(str(lock))) as error:
            fresh.append(conversation.id, Message("user", "more"))
        assert "lock the conversations of 'alice'" in str(error.value)
        (disk / "empty-0").unlink()
        fresh.append(conversation.id, Message("user", "more"))
        assert len(store.get(conversation.id).messages) == 2
    finally:
        unmount(disk)


# -- a read-only data dir -------------------------------------------------------------------


def test_a_read_only_data_dir_can_still_be_listed_and_read_and_nothing_is_changed(disk: Path) -> None:
    data = disk / "data"
    claim_directory(data, "alice", "account-1")
    writer = ConversationStore(data, "alice", "account-1")
    healthy = writer.create("Healthy")
    question = writer.append(healthy.id, Message("user", "question"))
    torn = writer.create("Torn")
    kept = writer.append(torn.id, Message("user", "kept"))
    with (writer.directory / f"{torn.id}.jsonl").open("ab") as handle:
        handle.write(b'{"id":"0123')  # a crash mid-append, never acknowledged
    unterminated = writer.create("No final newline")
    last = writer.append(unterminated.id, Message("user", "the last line lost its newline"))
    path = writer.directory / f"{unterminated.id}.jsonl"
    path.write_bytes(path.read_bytes()[:-1])
    damaged = writer.create("Damaged inside")
    writer.append(damaged.id, Message("user", "x"))
    with (writer.directory / f"{damaged.id}.jsonl").open("ab") as handle:
        handle.write(b"not json\n")
    broken_header = writer.create("Broken header")
    (writer.directory / f"{broken_header.id}.jsonl").write_bytes(b"garbage\n")
    writer.get(healthy.id)  # this store has read it before the remount
    before = contents(writer.directory)

    remount_read_only(disk)
    for store in (writer, ConversationStore(data, "alice", "account-1"), ConversationStore(data, "alice")):
        with pytest.warns(NbchatWarning, match="left in place"):
            titles = [s.title for s in store.list()]
        assert sorted(titles) == ["Damaged inside", "Healthy", "No final newline", "Torn"]
        assert store.get(healthy.id).messages == (question,)
        assert store.get(torn.id).messages == (kept,)
        assert store.get(unterminated.id).messages == (last,)
        with pytest.raises(CorruptFile, match="left in place") as error:
            store.get(damaged.id)
        assert error.value.moved_to is None and "read-only" in str(error.value)
        with pytest.raises(StorageFailed, match="read-only filesystem") as refused:
            store.append(healthy.id, Message("user", "more"))
        assert "NBCHAT_DATA_DIR" in str(refused.value)
        with pytest.raises(StorageFailed, match="read-only filesystem"):
            store.create("New")
    assert contents(writer.directory) == before


# -- the file primitives the account store shares -------------------------------------------


def test_a_whole_file_write_on_a_full_disk_keeps_the_old_file_and_leaves_no_temp_file(disk: Path) -> None:
    target = disk / "users.json"
    atomic_write_bytes(target, b'{"old": true}\n')
    filler = fill(disk)
    full = f"Could not save {re.escape(str(target))}: the disk holding it is full"
    with pytest.raises(StorageFull, match=full):
        atomic_write_bytes(target, b"x" * 50_000)
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "users.json"]
    assert target.read_bytes() == b'{"old": true}\n'
    filler.unlink()
    atomic_write_bytes(target, b"x" * 50_000)
    assert target.read_bytes() == b"x" * 50_000


def test_on_a_read_only_disk_the_lock_is_refused_by_name_and_try_locked_says_why(disk: Path) -> None:
    ensure_private_dir(disk / "data")
    remount_read_only(disk)
    lock = disk / "data" / ".users.lock"
    refusal = f"Could not lock the accounts file with the lock file {lock}"
    with pytest.raises(StorageFailed, match=refusal), locked(lock, "The accounts file"):
        pytest.fail("the body must not run without the lock")
    with try_locked(lock, "The accounts file") as refused:
        assert refused is not None and refused.errno == errno.EROFS and "read-only" in str(refused)
    with pytest.raises(KeyError) as raised, try_locked(lock, "The accounts file"):
        raise KeyError("an error of the body")
    assert raised.value.__context__ is None, "the refusal is not chained onto the body's own errors"
    assert ensure_private_dir(disk / "data") == disk / "data", "an existing private folder needs no write"
    with pytest.raises(StorageFailed, match=f"create the folder {disk / 'new'}: it is on a read-only"):
        ensure_private_dir(disk / "new")
    assert not lock.exists()


READ_AS_OWNER = """
import json, sys, warnings
from nbchat import ConversationStore, CorruptFile, Message
from nbchat.errors import StorageFailed
data, healthy, damaged = sys.argv[1:]
store = ConversationStore(data, "alice")
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out["titles"] = sorted(s.title for s in store.list())
out["warnings"] = [str(w.message) for w in caught]
out["messages"] = [m.content for m in store.get(healthy).messages]
try:
    store.get(damaged)
except CorruptFile as exc:
    out["damaged"] = [str(exc), exc.moved_to and str(exc.moved_to)]
attempts = {
    "create": lambda: store.create("New"),
    "append": lambda: store.append(healthy, Message("user", "x")),
}
for name, attempt in attempts.items():
    try:
        attempt()
        out[name] = "saved"
    except StorageFailed as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


def test_a_data_dir_its_owner_cannot_write_to_can_still_be_read(tmp_path: Path) -> None:
    """chmod 0500, for an ordinary user (root would ignore the permission bits)."""
    if os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists():
        pytest.skip("needs root and setpriv to act as an ordinary user")
    data = Path(tempfile.mkdtemp(prefix="nbchat-0500-", dir="/tmp")) / "data"
    try:
        store = ConversationStore(data, "alice")
        healthy = store.create("Healthy")
        store.append(healthy.id, Message("user", "readable"))
        damaged = store.create("Damaged inside")
        with (store.directory / f"{damaged.id}.jsonl").open("ab") as handle:
            handle.write(b"not json\n")
        (store.directory / ".lock").unlink()  # so it cannot be created in a 0500 folder
        subprocess.run(["chown", "-R", "65534:65534", str(data.parent)], check=True)
        store.directory.chmod(0o500)
        before = contents(store.directory)
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
            + ["-c", READ_AS_OWNER, str(data), healthy.id, damaged.id],
            capture_output=True,
            text=True,
            env={**os.environ, "HOME": str(data.parent)},
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["titles"] == ["Damaged inside", "Healthy"] and out["warnings"] == []
        assert out["messages"] == ["readable"]
        assert "left in place" in out["damaged"][0] and out["damaged"][1] is None
        assert "permission was denied" in out["create"] and "NBCHAT_DATA_DIR" in out["create"]
        assert str(store.directory / ".lock") in out["append"]
        assert contents(store.directory) == before
    finally:
        subprocess.run(["rm", "-rf", str(data.parent)], check=True)
