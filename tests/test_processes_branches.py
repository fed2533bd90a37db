"""Branches under real concurrency and real crashes: separate processes regenerating, editing and
switching in one conversation lose nothing, and a SIGKILL at any moment leaves it loadable.

The workers (tests/workers.py ``branch-loop``) print each operation only after the store
acknowledged it, so every printed message must be in the tree and every printed switch must
name a message that exists. Each test runs on clear stores and on an encrypted account's stores
(where, afterwards, no message text is in any byte under the data dir).
"""

from __future__ import annotations

import itertools
import random
import time
import warnings
from pathlib import Path

import pytest
from worker_process import STORE_KINDS, StoreKind, Worker, leaked_texts

from nbchat import NbchatWarning
from nbchat.tree import MessageTree

# In every message the workers write (with a space: never inside base64url ciphertext).
WORKER_TEXT = " message "


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> StoreKind:
    return StoreKind(request.param)


def assert_nothing_leaked(kind: StoreKind, data: Path, texts: list[str]) -> None:
    """Encrypted: none of ``texts`` in any byte under ``data``; clear: the same search finds them."""
    found = leaked_texts(data, texts)
    if kind.encrypted:
        assert found == []
    else:
        assert found, f"none of {texts} in the clear files: the leak check looks in the wrong place"


def acked_messages(worker: Worker) -> list[str]:
    return [line.split()[1] for line in worker.acks if line.split()[0] in ("append", "branch", "root")]


def check_tree(tree: MessageTree) -> None:
    """Every message reachable, the active path a root-to-leaf path."""
    path = tree.path()
    assert path[0].parent is None
    assert all(child.parent == parent.id for parent, child in itertools.pairwise(path))
    assert tree.children(path[-1].id) == ()
    for message in tree.messages:
        assert message in tree.path_through(message.id)


def test_four_processes_regenerating_editing_and_switching_in_one_conversation_lose_nothing(
    tmp_path: Path, spawn, kind: StoreKind
) -> None:
    data, go = tmp_path / "data", tmp_path / "go"
    conversation = kind.open(data, "alice").create("Busy")
    workers = [
        spawn("branch-loop", data, "alice", conversation.id, tag, tag * 7, go, key=kind.key)
        for tag in range(1, 5)
    ]
    for worker in workers:
        worker.wait_for_line("ready")
    go.touch()
    time.sleep(3.0)
    for worker in workers:
        worker.kill()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tree = kind.open(data, "alice").get(conversation.id).tree
    assert all(
        "incomplete last line" in str(w.message) for w in caught if issubclass(w.category, NbchatWarning)
    )
    saved = {m.id for m in tree.messages}
    acked = [message_id for worker in workers for message_id in acked_messages(worker)]
    assert len(acked) > 40, "the workers did real work"
    missing = [message_id for message_id in acked if message_id not in saved]
    assert not missing, f"{len(missing)} acknowledged messages were lost"
    assert len(saved) <= len(acked) + len(workers)  # at most one unacknowledged append per killed worker
    check_tree(tree)
    assert_nothing_leaked(kind, data, [WORKER_TEXT])


def test_sigkill_during_branch_switches_and_appends_leaves_a_loadable_conversation(
    tmp_path: Path, spawn, kind: StoreKind
) -> None:
    data, go = tmp_path / "data", tmp_path / "go"
    go.touch()
    conversation = kind.open(data, "alice").create("Crashy")
    rng = random.Random(5)
    acked: list[str] = []
    for round_ in range(6):
        worker = spawn("branch-loop", data, "alice", conversation.id, round_ + 1, round_, go, key=kind.key)
        worker.wait_for_line("ready")
        time.sleep(rng.uniform(0.05, 0.6))
        worker.kill()
        acked += acked_messages(worker)
        reader = kind.open(data, "alice")  # a fresh kernel each time
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NbchatWarning)  # a torn last line is repaired, with a warning
            tree = reader.get(conversation.id).tree
        assert set(acked) <= {m.id for m in tree.messages}, (
            f"round {round_}: an acknowledged message was lost"
        )
        if tree.messages:
            check_tree(tree)
    assert acked, "the workers did real work"
    assert_nothing_leaked(kind, data, [WORKER_TEXT])
