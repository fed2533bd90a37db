"""Local accounts: register, log in and out, change password, delete account.

``users.json`` in the data dir holds bcrypt hashes (bcrypt's salt is per
hash). Every read-modify-write of it happens under a cross-process lock, so
the user cap holds even when several kernels register at the same moment.
Failed logins are throttled per name, for known and unknown names alike, and
the refusal never reveals whether a name exists; ``MAX_FAILURES_PER_MINUTE``
failures per data dir across all names pause every login for the rest of the
minute, so spraying many names gains nothing (at the price that an attacker
can hold logins up; hub logins are not throttled). ``login-failures.json``
remembers at most ``MAX_THROTTLED_NAMES`` names.

A hub login (``hub_login``) reaches only the account created for that exact
JupyterHub name, and a password never opens such an account. A password
change gives the account a new login token, which ends every earlier login.
Deleting an account can be interrupted anywhere: the next use finishes it.

Data keys (issue 15): with the site policy ``encrypt_local_accounts`` (on
unless a site turns it off) every local account has a random data key, stored in
its record only wrapped under its password (``nbchat.crypto``; the record's
``data_key`` field). A hub account has one, wrapped under the hub's per-user
secret ``NBCHAT_HUB_SECRET`` (``Config.hub_secret``), when the server has that
secret, whatever the policy says; without it hub accounts stay in clear. A
login unwraps it into ``Login.data_key``; an account made before gets one at its
next login. An account with a key always gets an
encrypted store (``Login.conversations`` seals with ``crypto.LineCipher``),
whatever the policy says later, and each login first seals whatever the account
still has in clear (``_convert``): conversation files, damaged files moved aside;
the clear search index is deleted. A password change re-wraps it in the same write as the new
hash; a deletion first removes it (the data is unreadable from that moment,
and the record is marked ``deleting`` so the next use finishes the deletion).
"""

from __future__ import annotations

import heapq
import json
import math
import re
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import bcrypt

from nbchat import crypto
from nbchat.config import Config, load_config
from nbchat.errors import (
    AuthenticationFailed,
    ConversationNotFound,
    CorruptFile,
    HubAccountConflict,
    HubSecretMismatch,
    InvalidPassword,
    InvalidUsername,
    KeyRecordInvalid,
    KeyUnlockFailed,
    LoginThrottled,
    NbchatError,
    NbchatWarning,
    StorageFailed,
    UnsupportedVersion,
    UserLimitReached,
    UsernameTaken,
)
from nbchat.files import atomic_write_bytes, ensure_private_dir, fsync_dir, locked, os_errors, storage_error
from nbchat.store import ACCOUNT_MARKER, ConversationStore, claim_directory
from nbchat.types import is_valid_id, new_id, utcnow
from nbchat.usernames import (
    HUB_TAG_HEX,
    check_username,
    hub_username,
    is_hub_shaped,
    legacy_hub_username,
    username_key,
)

USERS_VERSION = 1
THROTTLE_VERSION = 1
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 72  # bcrypt ignores everything after the 72nd byte
FREE_FAILURES = 5  # failed logins allowed per name before delays start
MAX_DELAY_S = 300.0
FORGET_FAILURES_AFTER_S = 24 * 3600.0
#: Failed logins allowed per data dir, across all names, in any RATE_WINDOW_S: spraying many names
#: (each under its own limit) gets no more than this, then every login waits for the window.
MAX_FAILURES_PER_MINUTE = 30
RATE_WINDOW_S = 60.0
#: Names login-failures.json remembers at most (the most recent); forgetting one only forgives it.
MAX_THROTTLED_NAMES = 2_000
#: A failure time this far ahead of the clock is impossible (a tampered file): it is forgotten.
CLOCK_SLACK_S = 300.0
#: Nesting deeper than this in users.json is damage: nbchat writes flat records, and very deep
#: values (about 950 levels) decode but cannot be written back without a RecursionError.
MAX_JSON_DEPTH = 64
WRONG_CREDENTIALS = "Wrong username or password."
TRASH_PREFIX = ".deleted-"  # conversations/.deleted-<key>-<32 hex>: an account being deleted
BCRYPT_HASH = re.compile(r"\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53}")
#: The fields of a record's ``data_key`` (``crypto.wrap_data_key``'s record) and their JSON types;
#: the values themselves are checked when the key is unwrapped, so damage there locks one account only.
KEY_RECORD_FIELDS: dict[str, type] = {
    "version": int,
    "kdf": str,
    "n": int,
    "r": int,
    "p": int,
    "salt": str,
    "cipher": str,
    "nonce": str,
    "wrapped": str,
}


def login_delay(failures: int) -> float:
    """Seconds a name must wait after ``failures`` consecutive failed logins: 0, then 2, 4, 8 … 300."""
    if failures < FREE_FAILURES:
        return 0.0
    exponent = failures - FREE_FAILURES + 1
    if exponent >= math.log2(MAX_DELAY_S):  # also keeps 2.0 ** exponent from overflowing
        return MAX_DELAY_S
    return 2.0**exponent


def check_password(password: object, username: str | None = None) -> bytes:
    """The password's UTF-8 bytes if it may be used for a new account or a change."""
    if not isinstance(password, str):
        raise InvalidPassword(f"A password must be text, not {type(password).__name__}.")
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidPassword(f"A password needs at least {MIN_PASSWORD_CHARS} characters.")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise InvalidPassword("A password cannot contain control characters (such as NUL or newline).")
    try:
        encoded = password.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPassword("A password must be valid Unicode text.") from None
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise InvalidPassword(
            f"That password is {len(encoded)} bytes in UTF-8; bcrypt uses at most {MAX_PASSWORD_BYTES}, "
            "so nbchat refuses longer ones rather than silently ignoring the rest. Choose a shorter one."
        )
    if username is not None and password.lower() == username.lower():
        raise InvalidPassword("A password cannot be the same as the username.")
    return encoded


class Login:
    """Proof of a successful login: the user's name and their conversations.

    The only way to reach a user's conversations through accounts. ``logout``
    closes it; afterwards its store forgets everything and refuses all use.
    ``data_key`` is the account's unwrapped data key, or None (an account
    without one, such as a hub login on a server without ``NBCHAT_HUB_SECRET``);
    closing drops the reference (Python cannot wipe bytes).
    """

    def __init__(
        self,
        username: str,
        display_name: str,
        conversations: ConversationStore,
        data_key: bytes | None = None,
    ) -> None:
        self.username = username
        self.display_name = display_name
        self.conversations = conversations
        self.data_key = data_key
        self.logged_in_at = utcnow()
        self.closed = False

    def close(self) -> None:
        self.conversations.close()
        self.data_key = None
        self.closed = True

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Login {self.display_name!r} ({state})>"


class Accounts:
    """The accounts of one data dir. Safe to use from several threads and kernels at once."""

    #: The steps of ``delete_account`` that ``_reached`` announces (tests/workers.py kills a worker there).
    #: ("key-removed": the wrapped key is gone and the record marked ``deleting``; only for accounts
    #: with a data key.)
    DELETION_STEPS = ("authenticated", "key-removed", "renamed", "users-written")
    #: The step of ``change_password`` between saving users.json and rewriting the directory's marker.
    PASSWORD_STEPS = ("password-saved",)
    #: The steps of a login that gives an older account its data key: wrapped, then stored.
    CONVERSION_STEPS = ("key-wrapped", "key-stored")
    #: The step of a login with a key after each clear conversation file it sealed.
    SEALING_STEPS = ("conversation-sealed",)

    def __init__(
        self,
        config: Config | None = None,
        *,
        bcrypt_rounds: int = 12,
        clock: Callable[[], float] = time.time,
        kdf: crypto.KdfParams | None = None,
    ) -> None:
        self.config = config or load_config()
        self._rounds = bcrypt_rounds
        self._kdf = kdf or crypto.KdfParams.default()
        self._kdf.check()
        self._clock = clock
        self._mutex = threading.RLock()
        # Made now, at the configured cost: a lazy one made the first unknown name slower than a real one.
        self._dummy_hash = self._hash(uuid.uuid4().hex.encode("ascii")).encode("ascii")

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    # -- queries ---------------------------------------------------------------------------

    def usernames(self) -> list[str]:
        """Display names of every account, sorted case-insensitively.

        Reads without the lock (so it works on a read-only data dir), unless an
        interrupted deletion must be finished first.
        """
        users = self._read_users()
        if self._trash_dirs() or any("deleting" in record for record in users.values()):
            with self._users_lock():
                users = self._read_users()
        return sorted((u["name"] for u in users.values()), key=str.lower)

    # -- changes ---------------------------------------------------------------------------

    def register(self, username: str, password: str) -> str:
        """Create an account; returns its key (the lower-case name)."""
        check_username(username)
        if is_hub_shaped(username):
            raise InvalidUsername(
                f"{username!r} ends like a JupyterHub account name ('-' and {HUB_TAG_HEX} hex digits); "
                "such names are reserved for JupyterHub users. Choose another."
            )
        key = username.lower()
        encoded = check_password(password, username)
        # Hash and wrap outside the lock (they take a while); re-check everything inside it.
        password_hash = self._hash(encoded)
        wrapped = self._wrap(crypto.new_data_key(), password, key) if self._encrypting else None
        with self._users_lock():
            users = self._read_users()
            if key in users:
                raise UsernameTaken(f"The username {username!r} is taken (names ignore case).")
            self._refuse_when_full(users)
            self._set_aside_orphaned_conversations(key)
            now = utcnow().isoformat(timespec="seconds")
            record: dict[str, Any] = {
                "name": username,
                "account_id": new_id(),
                "password_hash": password_hash,
                "created": now,
                "password_changed": now,
            }
            if wrapped is not None:
                record["data_key"] = wrapped
            claim_directory(self.data_dir, key, _token_of(record))
            users[key] = record
            self._write_users(users)
        return key

    def login(self, username: str, password: str) -> Login:
        """Check the password; returns a ``Login`` that opens the user's conversations."""
        key, record = self._authenticate(username, password)
        record, data_key = self._unlock(key, record, password, give=self._encrypting)
        return self._login_to(key, record, record["name"], data_key)

    def _login_to(
        self, key: str, record: dict[str, Any], display_name: str, data_key: bytes | None = None
    ) -> Login:
        """A login whose store serves only while the account's directory holds this login token."""
        cipher = None if data_key is None else crypto.LineCipher(data_key)
        store = ConversationStore(self.data_dir, key, account_id=_token_of(record), cipher=cipher)
        if cipher is not None:
            self._convert(store)
        return Login(key, display_name, store, data_key)

    def _convert(self, store: ConversationStore) -> None:
        """Seal what an account with a key still has in clear (made before, or with the policy off).

        Each file is one atomic rewrite and the store reads clear and sealed files alike, so a kill
        anywhere leaves every conversation readable; the next login goes on from there. A disk that
        refuses (read-only) leaves the rest for later, with a warning: the login still reads all.
        """
        try:
            for conversation_id in store.unsealed():
                try:
                    store.seal(conversation_id)
                except (CorruptFile, ConversationNotFound):
                    pass  # moved aside (sealed just below), or deleted by another kernel meanwhile
                except UnsupportedVersion:
                    continue  # a newer nbchat's file (or another key's): left untouched, as reading does
                self._reached("conversation-sealed")
            store.seal_leftovers()
        except StorageFailed as exc:
            warnings.warn(
                f"The conversations of {store.username!r} could not all be encrypted yet ({exc}). "
                "They all read as before; the next login finishes the encryption.",
                NbchatWarning,
                stacklevel=4,
            )

    # -- data keys -------------------------------------------------------------------------

    @property
    def _encrypting(self) -> bool:
        """The site policy: whether local accounts get data keys (accounts that have one keep it)."""
        return self.config.policy.encrypt_local_accounts

    def _wrap(self, data_key: bytes, secret: str, key: str) -> dict[str, Any]:
        """``data_key`` wrapped under ``secret``: a password, or a hub account's ``NBCHAT_HUB_SECRET``."""
        return crypto.wrap_data_key(data_key, secret, account=key, params=self._kdf)

    def _unlock(
        self, key: str, record: dict[str, Any], secret: str, *, give: bool
    ) -> tuple[dict[str, Any], bytes | None]:
        """The record and data key of an account whose owner was just proved (by its password, or
        by the hub): its key unwrapped with ``secret``; an account without one gets one if ``give``."""
        if "data_key" in record:
            return record, self._unwrap(record, secret, key)
        if give:
            return self._store_key(key, record, crypto.new_data_key(), secret)
        return record, None

    def _unwrap(self, record: dict[str, Any], secret: str, key: str) -> bytes:
        """The data key of an account whose owner was just proved: failing now means damage, or
        (a hub account) a hub secret other than the one the key was wrapped under."""
        try:
            return crypto.unwrap_data_key(record["data_key"], secret, account=key)
        except KeyUnlockFailed as exc:
            if "hub_name" in record:
                raise self._hub_key_refused(record, exc) from None
            reason = f" ({exc})" if isinstance(exc, KeyRecordInvalid) else ""
            raise type(exc)(
                f"The password of {record['name']!r} is right, but the account's data key in "
                f"{self.config.users_file} does not unlock{reason}: its key record was damaged or "
                "altered. Restore users.json from a backup; nothing was changed."
            ) from None

    def _store_key(
        self, key: str, authenticated: dict[str, Any], data_key: bytes, secret: str
    ) -> tuple[dict[str, Any], bytes]:
        """Store ``data_key`` wrapped under ``secret`` in one locked write of users.json: a new key
        for an account made before data keys, or its own key re-wrapped (a hub secret's rotation).

        The key is wrapped outside the lock; if another kernel changed the account's key
        meanwhile, its key is the one (unwrapped with ``secret``, and this one dropped).
        """
        wrapped = self._wrap(data_key, secret, key)
        self._reached("key-wrapped")
        with self._users_lock():
            users = self._read_users()
            record = users.get(key)
            if record is None or not _unchanged(record, authenticated):
                raise AuthenticationFailed(WRONG_CREDENTIALS)  # deleted, re-made or changed meanwhile
            if record.get("data_key") == authenticated.get("data_key"):
                record["data_key"] = wrapped
                self._write_users(users)
                self._reached("key-stored")
                return record, data_key
        return record, self._unwrap(record, secret, key)

    def hub_login(self, hub_name: str) -> Login:
        """Log a JupyterHub user in without a password: the hub already proved who they are.

        Only for ``JUPYTERHUB_USER`` in a hub-spawned kernel (see ``ChatSession``).
        The account is created on first use, within the user cap, with a random
        password nobody knows; its username is ``hub_username(hub_name)`` and its
        record keeps the exact hub name. A hub login reaches only the account
        created for that exact name: an account of another hub name (or a
        password account) under the same username is refused with
        ``HubAccountConflict``. Accounts made before issue 11 under the old
        8-hex-digit tag are found by ``legacy_hub_username``, for their exact
        hub name only.

        With ``Config.hub_secret`` (``NBCHAT_HUB_SECRET``) the account is encrypted
        like a local one, its data key wrapped under that secret: a new account gets
        a key, an account still in clear gets one now (and its files are sealed). An
        encrypted account is refused (``HubSecretMismatch``, nothing changed) when
        the server lacks the secret it was made with; ``NBCHAT_HUB_SECRET_PREVIOUS``
        holding that one re-wraps the key under the current secret.
        """
        name = hub_username(hub_name)
        key = name.lower()
        secret = self.config.hub_secret
        data_key: bytes | None = None
        with self._users_lock():
            users = self._read_users()
            found = self._hub_account(users, key, hub_name)
            if found is None:
                self._refuse_when_full(users, f"so the hub user {hub_name!r} cannot get one")
                self._set_aside_orphaned_conversations(key)
                now = utcnow().isoformat(timespec="seconds")
                record: dict[str, Any] = {
                    "name": name,
                    "account_id": new_id(),
                    "password_hash": self._hash(uuid.uuid4().hex.encode("ascii")),
                    "created": now,
                    "password_changed": now,
                    "hub_name": hub_name,
                }
                if secret is not None:
                    data_key = crypto.new_data_key()
                    record["data_key"] = self._wrap(data_key, secret, key)
                claim_directory(self.data_dir, key, _token_of(record))
                users[key] = record
                self._write_users(users)
            else:
                key, record = found
                self._repair_marker(key, record)
        if found is not None:
            record, data_key = self._hub_unlock(key, record)
        return self._login_to(key, record, hub_name, data_key)

    def _hub_unlock(self, key: str, record: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        """An existing hub account's record and data key, by the server's hub secret: unwrapped,
        new (an account still in clear), re-wrapped from the previous secret, or none (no secret)."""
        secret, previous = self.config.hub_secret, self.config.hub_secret_previous
        if secret is None:
            if "data_key" in record:
                raise self._hub_key_refused(record, None)
            return record, None
        if "data_key" not in record or previous is None:
            return self._unlock(key, record, secret, give=True)
        try:
            return record, crypto.unwrap_data_key(record["data_key"], secret, account=key)
        except KeyRecordInvalid as exc:
            raise self._hub_key_refused(record, exc) from None
        except KeyUnlockFailed:
            pass  # wrapped under the previous secret, unless it is neither
        try:
            data_key = crypto.unwrap_data_key(record["data_key"], previous, account=key)
        except KeyUnlockFailed as exc:
            raise self._hub_key_refused(record, exc) from None
        return self._store_key(key, record, data_key, secret)

    def _hub_key_refused(self, record: dict[str, Any], exc: KeyUnlockFailed | None) -> KeyUnlockFailed:
        """Why a hub account's data key does not unlock, for its user to hand to the administrator
        (``exc`` None: the server has no hub secret). Never shows a secret."""
        hub_name = record.get("hub_name")
        if isinstance(exc, KeyRecordInvalid):
            return KeyRecordInvalid(
                f"The data key of the JupyterHub user {hub_name!r} in {self.config.users_file} is "
                f"damaged ({exc}). Restore users.json from a backup; nothing was changed."
            )
        if exc is None:
            problem = "this server has no NBCHAT_HUB_SECRET to unlock it"
        else:
            tried = " (nor by NBCHAT_HUB_SECRET_PREVIOUS)" if self.config.hub_secret_previous else ""
            problem = f"it is not unlocked by this server's NBCHAT_HUB_SECRET{tried}"
        return HubSecretMismatch(
            f"The nbchat account of the JupyterHub user {hub_name!r} is encrypted, but {problem}. "
            "The hub's administrator must restore the NBCHAT_HUB_SECRET the account was made with "
            "(or set it as NBCHAT_HUB_SECRET_PREVIOUS beside a new one: the next login then re-wraps "
            "the key). Nothing was changed."
        )

    def _hub_account(
        self, users: dict[str, dict[str, Any]], key: str, hub_name: str
    ) -> tuple[str, dict[str, Any]] | None:
        """The existing account of exactly ``hub_name``, or None; refuses an account of anybody else."""
        legacy_key = legacy_hub_username(hub_name).lower()
        for candidate in (key, legacy_key):
            found = users.get(candidate)
            if found is not None and found.get("hub_name") == hub_name:
                return candidate, found
        record = users.get(key)
        if record is None:
            return None
        owner = record.get("hub_name")
        remedy = (
            f"An administrator can give {hub_name!r} a data dir of its own (NBCHAT_DATA_DIR), or, if "
            f'the account is really theirs, set "hub_name": {json.dumps(hub_name, ensure_ascii=False)} '
            f"in its record in {self.config.users_file}."
        )
        if owner is None:
            raise HubAccountConflict(
                f"The nbchat account {record['name']!r} is a local account with a password, not the "
                f"account of the JupyterHub user {hub_name!r}, so nbchat will not log the hub user into "
                f"it. Its owner can log in with the password (NBCHAT_TRUST_HUB_USER=0). {remedy}"
            )
        raise HubAccountConflict(
            f"The nbchat account {record['name']!r} belongs to the JupyterHub user {owner!r}, not to "
            f"{hub_name!r}: two hub names map to the same account name, and nbchat never lets them "
            f"share it. {remedy}"
        )

    def _refuse_when_full(self, users: dict[str, Any], consequence: str = "") -> None:
        """The user cap: raise ``UserLimitReached`` when no account can be added."""
        if len(users) >= self.config.max_users:
            raise UserLimitReached(
                f"This installation already has {len(users)} accounts, its limit "
                f"(NBCHAT_MAX_USERS={self.config.max_users}){', ' + consequence if consequence else ''}. "
                "Ask an administrator to raise it or delete an unused account."
            )

    def logout(self, login: Login) -> None:
        """End a login: its conversation store drops everything it held in memory."""
        login.close()

    def change_password(self, username: str, old_password: str, new_password: str) -> Login:
        """Set a new password; this ends every login of the account, in every kernel.

        The account gets a new login token, written to ``users.json`` first (the
        truth) and then to its directory's marker: every store opened with the
        old token then raises ``NotLoggedIn``. Returns a fresh ``Login`` for the
        caller, which should replace its own (that one has ended too). A crash
        between the two writes is repaired by the next login.
        """
        check_password(new_password, username)
        key, authenticated = self._authenticate(username, old_password)
        password_hash = self._hash(check_password(new_password, username))
        data_key, wrapped = self._rewrapped(key, authenticated, old_password, new_password)
        with self._users_lock():
            users = self._read_users()
            record = users.get(key)
            if record is None or not _unchanged(record, authenticated):
                raise AuthenticationFailed(WRONG_CREDENTIALS)  # deleted, re-made or changed meanwhile
            if record.get("data_key") != authenticated.get("data_key"):  # converted meanwhile: rare
                data_key, wrapped = self._rewrapped(key, record, old_password, new_password)
            if wrapped is not None:
                record["data_key"] = wrapped
            record["password_hash"] = password_hash
            record["password_changed"] = utcnow().isoformat(timespec="seconds")
            record["login_token"] = new_id()
            self._write_users(users)
            self._reached("password-saved")
            claim_directory(self.data_dir, key, record["login_token"])
        return self._login_to(key, record, record["name"], data_key)

    def _rewrapped(
        self, key: str, record: dict[str, Any], old_password: str, new_password: str
    ) -> tuple[bytes | None, dict[str, Any] | None]:
        """The account's data key and its record under the new password: the same key re-wrapped,
        a new one for an account without (policy on), or none."""
        if "data_key" in record:
            data_key = self._unwrap(record, old_password, key)
        elif self._encrypting:
            data_key = crypto.new_data_key()
        else:
            return None, None
        return data_key, self._wrap(data_key, new_password, key)

    def delete_account(self, username: str, password: str) -> None:
        """Delete the account and every conversation of it, after checking the password.

        An account with a data key first loses it, in a write of its own that also
        marks the record ``deleting``: its encrypted data is unreadable from then on,
        and the next use of the accounts finishes the deletion. Then a recoverable
        sequence, all under the accounts lock: rename the user's
        directory to ``.deleted-<key>-<hex>`` (the point of no return: its
        ``.account`` marker says which account it was), write ``users.json``
        without the account, then remove the renamed directory. A crash before
        the rename changes nothing; after it, the next use of the accounts (by
        any kernel) finishes the deletion (see ``_finish_interrupted_deletions``).
        """
        key, authenticated = self._authenticate(username, password)
        with self._users_lock():
            users = self._read_users()
            if not _unchanged(users.get(key), authenticated):
                raise AuthenticationFailed(WRONG_CREDENTIALS)  # deleted, re-made or changed meanwhile
            self._reached("authenticated")
            record = users[key]
            if "data_key" in record:
                del record["data_key"]
                record["deleting"] = utcnow().isoformat(timespec="seconds")
                self._write_users(users)
                self._reached("key-removed")
            self._remove_account(users, key)

    def _remove_account(self, users: dict[str, dict[str, Any]], key: str) -> None:
        """The deletion past its key: rename the directory aside, write users.json without the
        account, remove the directory (caller holds the lock; each step survives a crash)."""
        user_dir = self.config.conversations_dir / key
        trash: Path | None = None
        if user_dir.exists():
            trash = user_dir.with_name(f"{TRASH_PREFIX}{key}-{uuid.uuid4().hex}")
            with os_errors(user_dir, "move aside for deletion the folder"):
                user_dir.rename(trash)
            fsync_dir(user_dir.parent)
            self._reached("renamed")
        del users[key]
        self._write_users(users)
        self._reached("users-written")
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def _finish_interrupted_deletions(self) -> None:
        """Finish every deletion a crash interrupted after its point of no return (caller holds the lock).

        A record marked ``deleting`` lost its data key to ``delete_account``: the
        rest of its deletion is done now. A ``.deleted-<key>-<hex>`` directory
        exists only once ``delete_account`` renamed the account's directory: if
        ``users.json`` still holds the account its marker names, the account is
        removed now; the directory itself is removed in every case.
        """
        conversations_dir = self.config.conversations_dir
        users = self._read_users()
        marked = [key for key, record in users.items() if "deleting" in record]
        for key in marked:
            name = users[key]["name"]
            self._remove_account(users, key)
            warnings.warn(
                f"The deletion of the account {name!r} was interrupted after its data key was removed "
                "(a kernel stopped half-way); nbchat finished it.",
                NbchatWarning,
                stacklevel=4,
            )
        trashes = self._trash_dirs()
        if not trashes:
            return
        finished = []
        for trash in trashes:
            key = trash.name[len(TRASH_PREFIX) : -33]
            record = users.get(key)
            ours = record is not None and _read_marker(trash) in _markers_of(record)
            if ours and record is not None and not (conversations_dir / key).exists():
                del users[key]
                finished.append(record["name"])
        if finished:
            self._write_users(users)
            warnings.warn(
                f"The deletion of the account(s) {', '.join(map(repr, finished))} was interrupted "
                "(a kernel stopped half-way); nbchat finished it.",
                NbchatWarning,
                stacklevel=4,
            )
        for trash in trashes:
            shutil.rmtree(trash, ignore_errors=True)

    def _trash_dirs(self) -> list[Path]:
        """The ``.deleted-*`` directories: deletions past their point of no return, not yet finished."""
        folder = self.config.conversations_dir
        try:
            entries = list(folder.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise storage_error(exc, folder, "list the folder", writing=False) from exc
        return [path for path in entries if path.name.startswith(TRASH_PREFIX)]

    def _reached(self, step: str) -> None:
        """A seam for the crash tests: tests/workers.py overrides it to be SIGKILLed at ``step``."""

    # -- authentication and throttling -----------------------------------------------------

    def _authenticate(self, username: str, password: str) -> tuple[str, dict[str, Any]]:
        key = username_key(username)
        with self._users_lock():
            # users.json first: when it cannot be read, that is the store's failure, not the user's,
            # and must cost no attempt.
            record = self._read_users().get(key)
            now = self._clock()  # read under the lock, so the times in the throttle file only grow
            throttle = self._read_throttle(now)
            throttle.refuse_if_throttled(key, username, now)
            # Count the attempt as a failure before checking the password: simultaneous attempts
            # from many kernels each see the others and get no extra guesses.
            throttle.count_failure(key, now)
            self._write_throttle(throttle, now)
            attempted_at = now
        if record is None:
            self._password_matches(password, self._dummy_hash)  # same work as a real check: no timing hint
            raise AuthenticationFailed(WRONG_CREDENTIALS)
        if not self._password_matches(password, record["password_hash"].encode("ascii")):
            raise AuthenticationFailed(WRONG_CREDENTIALS)
        if "hub_name" in record:  # only JupyterHub logs a hub account in, whatever its hash
            raise AuthenticationFailed(WRONG_CREDENTIALS)
        with self._users_lock():
            if not _unchanged(self._read_users().get(key), record):
                raise AuthenticationFailed(WRONG_CREDENTIALS)  # deleted, re-made or changed meanwhile
            now = self._clock()
            throttle = self._read_throttle(now)
            # The right password: this attempt was no failure, neither of this name nor of the data
            # dir (40 students logging in within a minute must not lock the 41st out).
            forgotten = throttle.failures.pop(key, None) is not None
            if attempted_at in throttle.recent:
                throttle.recent.remove(attempted_at)
                forgotten = True
            if forgotten:
                self._write_throttle(throttle, now)
            self._repair_marker(key, record)
        return key, record

    def _repair_marker(self, key: str, record: dict[str, Any]) -> None:
        """Give the account's directory its marker if a crash or a hand left it stale or missing.

        ``users.json`` is the truth: a password change killed between its two
        writes leaves the old token in the marker. Caller holds the lock and has
        just read ``record`` from ``users.json``, so the directory is this account's.
        """
        if _read_marker(self.config.conversations_dir / key) != _token_of(record):
            claim_directory(self.data_dir, key, _token_of(record))

    @staticmethod
    def _password_matches(password: object, stored: bytes) -> bool:
        if not isinstance(password, str):
            return False
        try:
            encoded = password.encode("utf-8")
        except UnicodeEncodeError:
            return False
        if len(encoded) > MAX_PASSWORD_BYTES:
            return False  # could never have been registered
        return bcrypt.checkpw(encoded, stored)

    def _hash(self, encoded: bytes) -> str:
        return bcrypt.hashpw(encoded, bcrypt.gensalt(self._rounds)).decode("ascii")

    def _write_throttle(self, throttle: _Throttle, now: float) -> None:
        """Save the failure counts, forgetting names idle for a day and all but the most recent
        ``MAX_THROTTLED_NAMES`` (caller holds the lock)."""
        horizon = now - FORGET_FAILURES_AFTER_S
        kept = [(k, v) for k, v in throttle.failures.items() if v["last"] >= horizon]
        if len(kept) > MAX_THROTTLED_NAMES:
            kept = heapq.nlargest(MAX_THROTTLED_NAMES, kept, key=lambda item: item[1]["last"])
        payload = {
            "version": THROTTLE_VERSION,
            "failures": dict(kept),
            "recent": [t for t in throttle.recent if t > now - RATE_WINDOW_S][-MAX_FAILURES_PER_MINUTE:],
        }
        atomic_write_bytes(self._throttle_file, _json_bytes(payload))

    # -- files -----------------------------------------------------------------------------

    @property
    def _throttle_file(self) -> Path:
        return self.data_dir / "login-failures.json"

    @contextmanager
    def _users_lock(self) -> Iterator[None]:
        with self._mutex:
            ensure_private_dir(self.data_dir)
            with locked(self.data_dir / ".users.lock", "The accounts file"):
                self._finish_interrupted_deletions()
                yield

    def _read_users(self) -> dict[str, dict[str, Any]]:
        """The accounts by key; a damaged file is reported, never repaired or replaced."""
        return read_users_file(self.config.users_file)

    def _write_users(self, users: dict[str, dict[str, Any]]) -> None:
        payload = {"version": USERS_VERSION, "users": users}
        atomic_write_bytes(self.config.users_file, _json_bytes(payload))

    def _read_throttle(self, now: float) -> _Throttle:
        """The throttle state; a file that cannot be decoded is moved aside with a warning."""
        path = self._throttle_file
        raw = _read_if_exists(path, "the login-failures file")
        if raw is None:
            return _Throttle()
        try:
            return _Throttle.from_json(json.loads(raw), now)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            moved = path.with_name(f"{path.name}.corrupt-{uuid.uuid4().hex[:8]}")
            with os_errors(path, "move aside the damaged login-failures file"):
                path.replace(moved)
            reason = "nested too deeply" if isinstance(exc, RecursionError) else "not the expected layout"
            warnings.warn(
                f"{path} was unreadable ({reason}) and was moved to {moved}; login throttling starts afresh.",
                NbchatWarning,
                stacklevel=2,
            )
            return _Throttle()

    def _set_aside_orphaned_conversations(self, key: str) -> None:
        """A new account must never inherit files left by an earlier one of the same name."""
        user_dir = self.config.conversations_dir / key
        if user_dir.exists():
            with os_errors(user_dir, "move aside the leftover folder"):
                user_dir.rename(user_dir.with_name(f".orphaned-{key}-{uuid.uuid4().hex}"))
            warnings.warn(
                f"Conversations left in {user_dir} by an earlier account named {key!r} were moved "
                "aside; the new account starts empty.",
                NbchatWarning,
                stacklevel=3,
            )


def _unchanged(record: dict[str, Any] | None, authenticated: dict[str, Any]) -> bool:
    """True if ``record`` is still the account whose password was checked: not deleted, made
    again or given another password since."""
    return record is not None and all(
        record.get(name) == authenticated.get(name) for name in ("account_id", "password_hash", "login_token")
    )


def _token_of(record: dict[str, Any]) -> str:
    """The token a login of this account opens its store with and its directory's marker holds:
    ``login_token``, new at every password change; until the first one, the account id."""
    token = record.get("login_token")
    return token if isinstance(token, str) else record["account_id"]


def _markers_of(record: dict[str, Any]) -> set[str]:
    """The values the account's directory marker can hold (an old one: its account id)."""
    return {record["account_id"], _token_of(record)}


def read_users_file(path: Path) -> dict[str, dict[str, Any]]:
    """The accounts in the ``users.json`` at ``path``, by key; damage is a ``CorruptFile``, never repaired."""
    raw = _read_if_exists(path, "the accounts file")
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt_users(path, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise _corrupt_users(path, "nested too deeply to decode") from None
    if not isinstance(data, dict):
        raise _corrupt_users(path, "expected a JSON object")
    version = data.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > USERS_VERSION:
        raise UnsupportedVersion(
            f"{path} was written by a newer nbchat (version {version}); upgrade nbchat. "
            "The file was left untouched."
        )
    users = data.get("users")
    if isinstance(version, bool) or version != USERS_VERSION or not isinstance(users, dict):
        raise _corrupt_users(path, "missing 'version': 1 or the 'users' object")
    for key, record in users.items():
        problem = _user_record_problem(key, record)
        if problem:
            raise _corrupt_users(path, f"the account {key!r} {problem}")
    return users


def hub_user_data_dir(shared: Path, hub_name: str) -> Path:
    """The data dir of a JupyterHub user on a shared volume: ``<shared>/<hub username, lower case>``.

    The folder made before issue 11 under the old 8-hex-digit tag is kept while
    it holds this exact hub name's account (and no folder under the new name
    exists), so an upgrade loses nobody's conversations; a hub name whose old
    tag merely collides with it gets the new folder.
    """
    current = shared / hub_username(hub_name).lower()
    legacy = shared / legacy_hub_username(hub_name).lower()
    if legacy == current or current.exists() or not legacy.is_dir():
        return current
    try:
        users = read_users_file(legacy / "users.json")
    except NbchatError:
        return legacy  # damaged: say so where the conversations are, rather than start afresh elsewhere
    if any(record.get("hub_name") == hub_name for record in users.values()):
        return legacy
    return current


def _read_if_exists(path: Path, what: str) -> bytes | None:
    """The file's bytes, or None if there is none; any other refusal is a ``StorageFailed`` naming it."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error(exc, path, f"read {what}", writing=False) from exc


def _read_marker(directory: Path) -> str | None:
    try:
        return (directory / ACCOUNT_MARKER).read_bytes().strip().decode("ascii", "replace")
    except OSError:
        return None


@dataclass
class _Throttle:
    """login-failures.json: each name's consecutive failures, and the data dir's recent failure times."""

    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    recent: list[float] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Any, now: float) -> _Throttle:
        """Checked and made sane: impossible times and counts are forgotten, never waited for."""
        if not isinstance(data, dict) or data.get("version") != THROTTLE_VERSION:
            raise ValueError("unexpected version")
        failures: dict[str, dict[str, Any]] = {}
        for key, entry in data["failures"].items():
            count, last = entry["count"], _time(entry["last"], now)
            if not isinstance(count, int) or isinstance(count, bool):
                raise ValueError("unexpected entry")
            if count > 0 and last is not None:
                failures[key] = {"count": count, "last": last}
        recent = data.get("recent", [])
        if not isinstance(recent, list):
            raise ValueError("unexpected recent failures")
        times = (_time(t, now) for t in recent)
        window = sorted(t for t in times if t is not None and t > now - RATE_WINDOW_S)
        return cls(failures, window[-MAX_FAILURES_PER_MINUTE:])

    def refuse_if_throttled(self, key: str, username: str, now: float) -> None:
        """Raise ``LoginThrottled`` if the data dir or this name must wait before the next attempt."""
        if len(self.recent) >= MAX_FAILURES_PER_MINUTE:
            wait = self.recent[-MAX_FAILURES_PER_MINUTE] + RATE_WINDOW_S - now
            if wait > 0:
                raise LoginThrottled(
                    f"Too many failed logins on this installation ({MAX_FAILURES_PER_MINUTE} within "
                    f"{RATE_WINDOW_S:.0f} s, across all names), so every login waits; try again in "
                    f"{wait:.0f} s.",
                    retry_after=wait,
                )
        entry = self.failures.get(key, {"count": 0, "last": 0.0})
        wait = entry["last"] + login_delay(entry["count"]) - now
        if wait > 0:
            raise LoginThrottled(
                f"Too many failed logins for {username!r}; try again in {wait:.0f} s.",
                retry_after=wait,
            )

    def count_failure(self, key: str, now: float) -> None:
        entry = self.failures.get(key, {"count": 0})
        self.failures[key] = {"count": entry["count"] + 1, "last": now}
        self.recent = [*self.recent, now][-MAX_FAILURES_PER_MINUTE:]


def _time(value: object, now: float) -> float | None:
    """A failure time from the file, at most ``now``; None for one that cannot have happened
    (not finite, or more than ``CLOCK_SLACK_S`` ahead of the clock). Not a number: damage."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError("a failure time is not a number")
    try:
        seconds = float(value)
    except OverflowError:
        return None
    if not math.isfinite(seconds) or seconds > now + CLOCK_SLACK_S:
        return None
    return min(seconds, now)


def _nesting_exceeds(value: object, limit: int) -> bool:
    """True if ``value`` holds lists or objects nested deeper than ``limit`` (checked without recursion)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _user_record_problem(key: object, record: object) -> str | None:
    try:
        if username_key(key) != key:
            return "has a key that is not a lower-case username"
    except InvalidUsername:
        return "has an invalid name"
    if not isinstance(record, dict):
        return "is not an object"
    if _nesting_exceeds(record, MAX_JSON_DEPTH):
        return f"holds values nested more than {MAX_JSON_DEPTH} levels deep"
    for name in ("name", "account_id", "password_hash", "created", "password_changed"):
        if not isinstance(record.get(name), str):
            return f"lacks {name!r}"
    if not is_valid_id(record["account_id"]):
        return "has an invalid account_id"
    if "login_token" in record and not is_valid_id(record["login_token"]):
        return "has an invalid login_token"
    if "hub_name" in record and not isinstance(record["hub_name"], str):
        return "has a hub_name that is not text"
    if "data_key" in record:
        problem = _key_record_problem(record["data_key"])
        if problem:
            return f"has a data_key that {problem}"
    if "deleting" in record and not isinstance(record["deleting"], str):
        return "has a 'deleting' mark that is not text"
    if record["name"].lower() != key:
        return "has a display name that does not match its key"
    if not BCRYPT_HASH.fullmatch(record["password_hash"]):
        return "has no valid bcrypt hash"
    for name in ("created", "password_changed"):
        try:
            if datetime.fromisoformat(record[name]).tzinfo is None:
                return f"has no timezone in {name!r}"
        except ValueError:
            return f"has an invalid time in {name!r}"
    return None


def _key_record_problem(value: object) -> str | None:
    """What is wrong with the shape of a ``data_key`` (its values are checked when it is unwrapped)."""
    if not isinstance(value, dict):
        return "is not an object"
    for name, kind in KEY_RECORD_FIELDS.items():
        field_value = value.get(name)
        if not isinstance(field_value, kind) or isinstance(field_value, bool):
            return f"lacks {name!r}" if name not in value else f"has a {name!r} that is not {_KINDS[kind]}"
    return None


_KINDS = {int: "a whole number", str: "text"}


def _corrupt_users(path: Path, reason: str) -> CorruptFile:
    return CorruptFile(
        f"The accounts file {path} cannot be read ({reason}). nbchat will not overwrite it: "
        "restore it from a backup or fix it by hand (its format is data/users.schema.json).",
        path=path,
        moved_to=None,
    )
