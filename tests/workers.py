"""Worker processes for tests/test_processes.py: each run is a real, separate Python process.

Run as ``python tests/workers.py <command> <args...>``. Every command prints one
line per event on stdout, flushed at once, so the test sees exactly what the
worker had *finished* when it was killed:

- ``ready`` once the worker is set up (imports done, store opened);
- for the ``*-loop`` commands, one line per operation, printed only AFTER the
  store call returned (the operation was acknowledged);
- for the one-shot commands, one JSON object with the outcome.

With ``NBCHAT_TEST_STORE_KEY=<hex key>`` in its environment a worker opens its stores
encrypted with that key (``open_store``), as a kernel of an encrypted account does.

Every worker stops by itself after ``DEADLINE_S`` seconds, or as soon as the
test process that started it is gone, so a failing test never leaves a worker
running.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from nbchat import Accounts, Config, ConversationStore, Message
from nbchat.crypto import KdfParams, LineCipher
from nbchat.errors import NbchatError

DEADLINE_S = 60.0
PASSWORD = "correct-horse-battery"
_STARTED = time.monotonic()
_PARENT = os.getppid()

CHEAP_KDF = KdfParams(n=2**10, r=8, p=1)  # the suite's KDF cost (conftest.CHEAP_KDF)
STORE_KEY_VARIABLE = "NBCHAT_TEST_STORE_KEY"  # hex data key: set by ``spawn(..., key=...)``


def open_store(data_dir: str, user: str) -> ConversationStore:
    """The user's store, sealed with the key the test gave this worker (an encrypted account), if any."""
    key = os.environ.get(STORE_KEY_VARIABLE)
    cipher = LineCipher(bytes.fromhex(key)) if key else None
    return ConversationStore(Path(data_dir), user, cipher=cipher)


def message_id(tag: int, seq: int) -> str:
    """The id of message ``seq`` of writer ``tag``: 32 lowercase hex digits, readable back by the test."""
    return f"{tag:08x}{seq:024x}"


def parse_message_id(value: str) -> tuple[int, int]:
    """``(tag, seq)`` from an id made by ``message_id``."""
    return int(value[:8], 16), int(value[8:], 16)


def message_content(tag: int, seq: int, size: int = 0) -> str:
    return f"writer {tag} message {seq}" + " lorem ipsum" * (size // 12)


def scheduled_size(tag: int, seq: int) -> int:
    """The content size of message ``seq`` of writer ``tag`` in ``append``: mostly small, some large
    (a large line takes long enough to write that an unlocked reader could see half of it)."""
    return (20, 300, 2_000, 20, 300, 150_000)[(seq + 2 * tag) % 6]


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def keep_going() -> bool:
    return time.monotonic() - _STARTED < DEADLINE_S and os.getppid() == _PARENT


def wait_for(go_file: str) -> None:
    """The starting gate: spin until the test creates ``go_file``, so all workers start together."""
    while not os.path.exists(go_file):
        if not keep_going():
            raise SystemExit("gave up waiting for the go file")
        time.sleep(0.001)


def cmd_register(data_dir: str, max_users: str, username: str, go_file: str) -> None:
    """Register ``username`` once the gate opens; print the outcome as JSON."""
    accounts = Accounts(
        Config(data_dir=Path(data_dir), max_users=int(max_users)), bcrypt_rounds=4, kdf=CHEAP_KDF
    )
    emit("ready")
    wait_for(go_file)
    try:
        key = accounts.register(username, PASSWORD)
    except NbchatError as exc:
        emit(json.dumps({"name": username, "result": type(exc).__name__, "detail": str(exc)}))
    else:
        emit(json.dumps({"name": username, "result": "ok", "key": key}))


def cmd_login(data_dir: str, username: str, password: str, go_file: str) -> None:
    """Try to log in once the gate opens; print the outcome as JSON."""
    accounts = Accounts(Config(data_dir=Path(data_dir)), bcrypt_rounds=4, kdf=CHEAP_KDF)
    emit("ready")
    wait_for(go_file)
    try:
        accounts.login(username, password)
    except NbchatError as exc:
        emit(json.dumps({"result": type(exc).__name__, "detail": str(exc)}))
    else:
        emit(json.dumps({"result": "ok"}))


def cmd_replace_account(data_dir: str, username: str, old_password: str, new_password: str) -> None:
    """Delete the account, register the name again, and give the new account a conversation."""
    accounts = Accounts(Config(data_dir=Path(data_dir)), bcrypt_rounds=4, kdf=CHEAP_KDF)
    accounts.delete_account(username, old_password)
    accounts.register(username, new_password)
    login = accounts.login(username, new_password)
    conversation = login.conversations.create("the new account's private chat")
    login.conversations.append(conversation.id, Message("user", "the new account's secret"))
    emit(json.dumps({"id": conversation.id}))


def pausing_accounts(data_dir: str, step: str) -> Accounts:
    """Accounts that stop at ``step`` (one of ``Accounts.DELETION_STEPS``/``PASSWORD_STEPS``): they print
    ``reached <step>`` there and wait to be SIGKILLed, so the test crashes the worker exactly there."""

    class Pausing(Accounts):
        def _reached(self, name: str) -> None:
            if name == step:
                emit(f"reached {name}")
                while keep_going():
                    time.sleep(0.01)
                raise SystemExit(f"nobody killed the worker at {name!r}")

    return Pausing(Config(data_dir=Path(data_dir)), bcrypt_rounds=4)


def cmd_delete_pausing(data_dir: str, username: str, password: str, step: str) -> None:
    """Delete the account, pausing at ``step`` to be killed."""
    pausing_accounts(data_dir, step).delete_account(username, password)
    emit("finished")


def cmd_change_password_pausing(data_dir: str, username: str, old: str, new: str, step: str) -> None:
    """Change the password, pausing at ``step`` to be killed."""
    pausing_accounts(data_dir, step).change_password(username, old, new)
    emit("finished")


def cmd_append(data_dir: str, user: str, conversation_ids: str, tag: str, count: str, go_file: str) -> None:
    """Append ``count`` messages once the gate opens, message ``seq`` to conversation ``(seq + tag) % n``."""
    store = open_store(data_dir, user)
    ids = conversation_ids.split(",")
    writer = int(tag)
    for conversation_id in ids:
        store.get(conversation_id)  # a warm cache, like a kernel that has the conversation open
    emit("ready")
    wait_for(go_file)
    for seq in range(int(count)):
        target = ids[(seq + writer) % len(ids)]
        content = message_content(writer, seq, scheduled_size(writer, seq))
        store.append(target, Message("user", content, id=message_id(writer, seq)))
    emit(json.dumps({"tag": writer, "appended": int(count)}))


def cmd_append_loop(
    data_dir: str, user: str, conversation_id: str, tag: str, seed: str, sizes: str = "0,50,400,3000,20000"
) -> None:
    """Append until killed; print each message id only after ``append()`` returned.

    Message sizes (in characters, roughly) are drawn from ``sizes`` with a seeded generator.
    """
    store = open_store(data_dir, user)
    store.get(conversation_id)  # repairs a torn last line left by a killed predecessor
    writer = int(tag)
    rng = random.Random(int(seed))
    choices = [int(size) for size in sizes.split(",")]
    emit("ready")
    seq = 0
    while keep_going():
        size = rng.choice(choices)
        store.append(
            conversation_id,
            Message("user", message_content(writer, seq, size), id=message_id(writer, seq)),
        )
        emit(message_id(writer, seq))
        seq += 1


def cmd_rewrite_loop(data_dir: str, user: str, conversation_id: str, start: str) -> None:
    """Alternate rename() and update_settings() until killed; print ``rename N``/``settings N`` after each."""
    store = open_store(data_dir, user)
    store.get(conversation_id)
    emit("ready")
    number = int(start)
    while keep_going():
        if number % 2 == 0:
            store.rename(conversation_id, f"title {number}")
            emit(f"rename {number}")
        else:
            store.update_settings(conversation_id, system=f"system {number}", temperature=(number % 20) / 10)
            emit(f"settings {number}")
        number += 1


def cmd_branch_loop(
    data_dir: str, user: str, conversation_id: str, tag: str, seed: str, go_file: str
) -> None:
    """Grow a tree until killed, as a user regenerating, editing and switching would.

    Each step is one of: continue the active path, answer a random earlier message again
    (regenerate), start a new first question (edit the first), or select a random message
    (switch). Prints ``<op> <message id>`` only after the store call returned.
    """
    store = open_store(data_dir, user)
    store.get(conversation_id)
    writer = int(tag)
    rng = random.Random(int(seed))
    emit("ready")
    wait_for(go_file)
    seq = 0
    while keep_going():
        known = [m.id for m in store.get(conversation_id).tree.messages]
        roll = rng.random()
        if known and roll < 0.25:
            chosen = rng.choice(known)
            store.select(conversation_id, chosen)
            emit(f"select {chosen}")
            continue
        new_id = message_id(writer, seq)
        content = message_content(writer, seq, rng.choice([0, 40, 2000]))
        if known and roll < 0.5:
            store.append(conversation_id, Message("assistant", content, id=new_id, parent=rng.choice(known)))
            emit(f"branch {new_id}")
        elif roll < 0.55:
            store.append(conversation_id, Message("user", content, id=new_id), new_root=True)
            emit(f"root {new_id}")
        else:
            store.append(conversation_id, Message("user", content, id=new_id))
            emit(f"append {new_id}")
        seq += 1


def cmd_ops(data_dir: str, user: str, conversation_id: str, ops_json: str) -> None:
    """Run a list of operations on one conversation in a fresh store; print the final state as JSON."""
    store = open_store(data_dir, user)
    for op in json.loads(ops_json):
        kind = op["op"]
        if kind == "append":
            store.append(conversation_id, Message(op["role"], op["content"], id=op["id"]))
        elif kind == "rename":
            store.rename(conversation_id, op["title"])
        elif kind == "settings":
            store.update_settings(conversation_id, **op["changes"])
        else:
            raise SystemExit(f"unknown op {kind!r}")
    conversation = store.get(conversation_id)
    emit(json.dumps({"title": conversation.title, "ids": [m.id for m in conversation.messages]}))


COMMANDS = {
    "register": cmd_register,
    "login": cmd_login,
    "replace-account": cmd_replace_account,
    "delete-pausing": cmd_delete_pausing,
    "change-password-pausing": cmd_change_password_pausing,
    "append": cmd_append,
    "append-loop": cmd_append_loop,
    "rewrite-loop": cmd_rewrite_loop,
    "branch-loop": cmd_branch_loop,
    "ops": cmd_ops,
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(f"usage: workers.py {{{','.join(COMMANDS)}}} ARGS...")
    COMMANDS[argv[0]](*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
