"""One user's conversations on disk: ``conversations/<user>/<id>.jsonl``.

Each file is JSON Lines: a header (id, title, times, settings, version), then
one line per message. Why this layout:

- appending a message is one locked write + fsync, whatever the length;
- listing conversations reads first lines only;
- a store that already holds a conversation reads only the lines added since
  (by this or any other kernel of the same user);
- renames and settings changes rewrite the file crash-safely (temp, fsync,
  ``os.replace``).

Every change happens under the user's cross-process lock, after reading the
latest file, so two kernels of one user never lose each other's messages.
A torn last line (a crash mid-append, never acknowledged) is dropped and the
file repaired; any other damage moves the file aside (never deleting it) and
raises ``CorruptFile``, while the user's other conversations keep working.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nbchat import records
from nbchat.errors import (
    ConversationNotFound,
    CorruptFile,
    InvalidValue,
    NbchatWarning,
    NotLoggedIn,
    UnsupportedVersion,
)
from nbchat.files import append_bytes, atomic_write_bytes, ensure_private_dir, fsync_dir, locked
from nbchat.types import (
    DEFAULT_TITLE,
    Conversation,
    ConversationSettings,
    ConversationSummary,
    Message,
    check_title,
    is_valid_id,
    new_id,
    utcnow,
)
from nbchat.usernames import username_key

SUFFIX = ".jsonl"
LOCK_NAME = ".lock"
ACCOUNT_MARKER = ".account"


def claim_directory(data_dir: Path, username: str, account_id: str) -> Path:
    """Create the user's directory and mark it as belonging to one account.

    A store opened for ``account_id`` works only while the marker matches, so
    a login that outlives its account can never reach a later account that
    reuses the name. The caller holds the accounts lock.
    """
    directory = Path(data_dir) / "conversations" / username_key(username)
    for path in (directory.parent.parent, directory.parent, directory):
        ensure_private_dir(path)
    atomic_write_bytes(directory / ACCOUNT_MARKER, account_id.encode("ascii") + b"\n")
    return directory


@dataclass
class _Cached:
    """What this store last read of one file, to read only what was appended since."""

    inode: int
    header: bytes
    offset: int
    conversation: Conversation
    messages: list[Message] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)


class ConversationStore:
    """The conversations of exactly one user; it can reach no other user's files.

    With ``account_id`` (as a ``Login`` opens it) the store serves only while
    the user's directory still belongs to that account: after the account is
    deleted, by this kernel or another, every use raises ``NotLoggedIn``.
    """

    def __init__(self, data_dir: Path, username: str, account_id: str | None = None) -> None:
        self._user = username_key(username)
        self._account_id = account_id
        self._data_dir = Path(data_dir)
        self._dir = self._data_dir / "conversations" / self._user
        self._cache: dict[str, _Cached] = {}
        self._mutex = threading.RLock()
        self._closed = False

    @property
    def username(self) -> str:
        return self._user

    @property
    def directory(self) -> Path:
        return self._dir

    def close(self) -> None:
        """Forget everything held in memory; any further use raises ``NotLoggedIn``."""
        with self._mutex:
            self._cache.clear()
            self._closed = True

    # -- reading ---------------------------------------------------------------------------

    def list(self) -> list[ConversationSummary]:
        """Summaries, most recently updated first, from each file's first line only."""
        with self._mutex:
            self._check_open()
            self._check_account()
            summaries = []
            for path in self._conversation_files():
                summary = self._summary(path)
                if summary is not None:
                    summaries.append(summary)
            summaries.sort(key=lambda s: (s.updated, s.created, s.id), reverse=True)
            return summaries

    def get(self, conversation_id: str) -> Conversation:
        """The conversation with every message, including lines other kernels appended."""
        with self._mutex, self._lock():
            return self._load(self._path(conversation_id))

    # -- writing ---------------------------------------------------------------------------

    def create(self, title: str | None = None, settings: ConversationSettings | None = None) -> Conversation:
        """A new, empty conversation; its model stays unchosen unless ``settings`` says."""
        now = utcnow()
        conversation = Conversation(
            id=new_id(),
            title=DEFAULT_TITLE if title is None else check_title(title),
            created=now,
            updated=now,
            settings=settings or ConversationSettings(),
        )
        with self._mutex, self._lock():
            path = self._dir / f"{conversation.id}{SUFFIX}"
            self._write_whole(path, conversation, [])
            return conversation

    def append(self, conversation_id: str, message: Message) -> Message:
        """Save one message at the end of the conversation: one write + fsync."""
        if not isinstance(message, Message):
            raise InvalidValue(f"append() takes a Message, not {type(message).__name__}.")
        line = records.message_line(message)
        with self._mutex, self._lock():
            path = self._path(conversation_id)
            self._load(path)
            cached = self._cache[conversation_id]
            if message.id in cached.ids:
                raise InvalidValue(f"Message {message.id} is already saved in this conversation.")
            append_bytes(path, line)
            cached.offset += len(line)
            cached.messages.append(message)
            cached.ids.add(message.id)
            return message

    def rename(self, conversation_id: str, title: str) -> Conversation:
        """Give the conversation a new title (rewrites the file atomically)."""
        new_title = check_title(title)
        return self._rewrite(conversation_id, title=new_title)

    def update_settings(self, conversation_id: str, **changes: Any) -> Conversation:
        """Change some of the conversation's settings; unknown names and bad values are refused."""
        with self._mutex, self._lock():
            current = self._load(self._path(conversation_id))
            settings = current.settings.updated(**changes)
            return self._rewrite_loaded(current, settings=settings)

    def delete(self, conversation_id: str) -> None:
        """Remove the conversation's file for good."""
        with self._mutex, self._lock():
            path = self._path(conversation_id)
            try:
                path.unlink()
            except FileNotFoundError:
                raise self._not_found(conversation_id) from None
            fsync_dir(self._dir)
            self._cache.pop(conversation_id, None)

    # -- internals -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise NotLoggedIn("This login has ended (logged out); log in again to continue.")

    def _check_account(self) -> None:
        if self._account_id is None:
            return
        try:
            marker = (self._dir / ACCOUNT_MARKER).read_bytes().strip().decode("ascii", "replace")
        except FileNotFoundError:
            marker = None
        if marker != self._account_id:
            self.close()
            raise NotLoggedIn(
                f"The account {self._user!r} was deleted since this login (perhaps from another "
                "kernel); log in again."
            )

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self._check_open()
        if self._account_id is None:
            for path in (self._data_dir, self._dir.parent, self._dir):
                ensure_private_dir(path)
        else:
            self._check_account()  # never recreate the directory of a deleted account
        try:
            with locked(self._dir / LOCK_NAME, f"The conversations of {self._user!r}"):
                self._check_account()  # the account may have gone while we waited
                yield
        except FileNotFoundError:
            if self._dir.exists():
                raise
            self._check_account()
            raise

    def _not_found(self, conversation_id: object) -> ConversationNotFound:
        return ConversationNotFound(f"{self._user!r} has no conversation with id {conversation_id!r}.")

    def _path(self, conversation_id: object) -> Path:
        # Only 32 lowercase hex digits ever reach the filesystem: no id can steer a path.
        if not is_valid_id(conversation_id):
            raise self._not_found(conversation_id)
        return self._dir / f"{conversation_id}{SUFFIX}"

    def _conversation_files(self) -> list[Path]:
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return []
        return [
            self._dir / name for name in names if name.endswith(SUFFIX) and is_valid_id(name[: -len(SUFFIX)])
        ]

    def _summary(self, path: Path) -> ConversationSummary | None:
        try:
            with path.open("rb") as handle:
                first = handle.readline()
                mtime = os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError:
            return None  # deleted by another kernel while listing
        try:
            if not first.endswith(b"\n"):
                raise records.RecordError("the header line is incomplete")
            header = records.parse_header(first)
        except UnsupportedVersion as exc:
            warnings.warn(f"Skipped {path.name}: {exc}", NbchatWarning, stacklevel=3)
            return None
        except records.RecordError:
            try:
                with self._lock():
                    self._load(path)  # re-checks under the lock, then moves it aside
            except CorruptFile as exc:
                warnings.warn(str(exc), NbchatWarning, stacklevel=3)
                return None
            except (UnsupportedVersion, ConversationNotFound):
                return None
            return self._summary(path)
        modified = datetime.fromtimestamp(mtime, timezone.utc)
        return replace(header.summary, updated=max(header.updated, modified))

    def _load(self, path: Path) -> Conversation:
        """Bring the cache of ``path`` up to date and return it (caller holds the lock)."""
        conversation_id = path.name[: -len(SUFFIX)]
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            self._cache.pop(conversation_id, None)
            raise self._not_found(conversation_id) from None
        with handle:
            stat = os.fstat(handle.fileno())
            first = handle.readline()
            cached = self._cache.get(conversation_id)
            if (
                cached
                and (cached.inode, cached.header) == (stat.st_ino, first)
                and stat.st_size >= cached.offset
            ):
                handle.seek(cached.offset)
                tail = handle.read()
            else:
                cached, tail = None, first + handle.read()
        try:
            return self._absorb(path, conversation_id, stat.st_ino, cached, tail)
        except records.RecordError as exc:
            raise self._move_aside(path, str(exc)) from None

    def _absorb(
        self, path: Path, conversation_id: str, inode: int, cached: _Cached | None, data: bytes
    ) -> Conversation:
        """Parse newly read bytes into the cache, dropping and repairing a torn last line."""
        base = cached.offset if cached else 0
        complete, newline, torn = data.rpartition(b"\n")
        lines = complete.split(b"\n") if newline else []
        if cached is None:
            if not lines:
                raise records.RecordError("the file has no complete header line")
            # A newer format raises UnsupportedVersion here, before anything is repaired.
            conversation = records.parse_header(lines[0])
            if conversation.id != conversation_id:
                raise records.RecordError(f"the header's id {conversation.id!r} does not match the file name")
            header = lines[0] + b"\n"
            cached = _Cached(inode, header, len(header), conversation)
            lines = lines[1:]
        for number, line in enumerate(lines, start=len(cached.messages) + 2):
            try:
                message = records.parse_message(line)
            except records.RecordError as exc:
                raise records.RecordError(f"line {number}: {exc}") from None
            cached.messages.append(message)
            cached.ids.add(message.id)
            cached.offset += len(line) + 1
        if torn:
            os.truncate(path, base + len(data) - len(torn))
            warnings.warn(
                f"{path.name}: dropped an incomplete last line ({len(torn)} bytes) left by an "
                "interrupted write; that message had never been saved. The file is repaired.",
                NbchatWarning,
                stacklevel=4,
            )
        self._cache[conversation_id] = cached
        return replace(cached.conversation, messages=tuple(cached.messages))

    def _move_aside(self, path: Path, reason: str) -> CorruptFile:
        conversation_id = path.name[: -len(SUFFIX)]
        self._cache.pop(conversation_id, None)
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%fZ")
        moved = path.with_name(f"{path.name}.corrupt-{stamp}")
        os.replace(path, moved)
        fsync_dir(path.parent)
        return CorruptFile(
            f"Conversation file {path} could not be read ({reason}). It was moved to "
            f"{moved} (nothing was deleted); your other conversations are unaffected.",
            path=path,
            moved_to=moved,
        )

    def _rewrite(self, conversation_id: str, **changes: Any) -> Conversation:
        with self._mutex, self._lock():
            current = self._load(self._path(conversation_id))
            return self._rewrite_loaded(current, **changes)

    def _rewrite_loaded(self, current: Conversation, **changes: Any) -> Conversation:
        updated = replace(current, updated=utcnow(), **changes)
        path = self._dir / f"{current.id}{SUFFIX}"
        self._write_whole(path, updated, list(current.messages))
        return updated

    def _write_whole(self, path: Path, conversation: Conversation, messages: list[Message]) -> None:
        header = records.header_line(conversation)
        body = b"".join(records.message_line(m) for m in messages)
        atomic_write_bytes(path, header + body)
        self._cache[conversation.id] = _Cached(
            inode=path.stat().st_ino,
            header=header,
            offset=len(header) + len(body),
            conversation=replace(conversation, messages=()),
            messages=messages,
            ids={m.id for m in messages},
        )
