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
A torn last line (a crash mid-append, never acknowledged: bytes that are not
even JSON) is dropped and the file repaired; a last line that parses but lost
its newline is a saved message and is kept. Any other damage, a line nested
too deeply to decode included, moves the file aside (never deleting it) and
raises ``CorruptFile``, while the user's other conversations keep working.

Reading takes the lock when it can but does not need it, so a read-only data
dir (or a full disk where the lock file cannot be created) can still be read:
whole-file changes are atomic replacements, so an open file is the old
version or the new one, never a mix; appends only add whole lines at the end,
so an unlocked reader sees every acknowledged message plus at most an
unfinished last line, which it leaves out. What needs the lock is changing
the file, repairs included, so an unlocked reader repairs nothing and
reports a damaged file without moving it.

Every OS error becomes a ``StorageFailed`` naming the file; a failed write
changes neither the file nor what this store remembers of it.

Given a ``crypto.LineCipher`` (an encrypted account, issue 15) the store writes every line
sealed on its own, bound to the conversation id and the line's position (``records.seal_line``),
so all of the above holds unchanged: an append is still one sealed line, one write and fsync;
listing opens first lines only; a torn sealed line is still not JSON. A line that does not open
(damaged, copied from another file, moved) is damage like any other; a file sealed under another
key, or read without a key, is ``ConversationEncrypted`` and left untouched. A clear file (an
account not converted yet) is read as it is and sealed whole the first time this store writes to
it, the way an older format is upgraded. The search index of such a store lives in memory only.
A login converts an account whole with ``unsealed``, ``seal`` and ``seal_leftovers`` (the clear
index and stale temp files removed, damaged files sealed whole as ``<name>.sealed``).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbchat import records
from nbchat.errors import (
    ConversationEncrypted,
    ConversationNotFound,
    CorruptFile,
    InvalidValue,
    MessageNotFound,
    NbchatWarning,
    NotLoggedIn,
    StorageFailed,
    UnsupportedVersion,
)
from nbchat.file_state import FileState
from nbchat.files import (
    append_bytes,
    atomic_write_bytes,
    ensure_private_dir,
    fsync_dir,
    locked,
    os_errors,
    storage_error,
    truncate,
    try_locked,
)
from nbchat.live_replies import ReplyLeases
from nbchat.search import INDEX_COMPANIONS, INDEX_NAME, SearchHit, SearchIndex, Stamp
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

if TYPE_CHECKING:
    from nbchat.crypto import LineCipher

SUFFIX = ".jsonl"
LOCK_NAME = ".lock"
CORRUPT_MARK = ".corrupt-"  # <id>.jsonl.corrupt-<time>: a damaged file moved aside
SEALED_DAMAGE = ".sealed"  # … .corrupt-<time>.sealed: one sealed by an account's conversion
ACCOUNT_MARKER = ".account"
#: The longest a search holds the user's lock while it builds the index, and the pause after
#: each slice, longer than a waiting kernel's poll of the lock (filelock's 0.05 s).
SEARCH_SLICE_S, SEARCH_PAUSE_S = 0.5, 0.06


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
class _Read:
    """One read of a file: its complete lines, and the unterminated last line if any."""

    inode: int
    state: FileState | None  # the complete lines; None when not even the header line is complete
    tail: bytes  # the bytes after the last newline
    whole: FileState | None = None  # with ``tail`` taken: a whole record that lost its newline

    @property
    def torn(self) -> bool:
        """``tail`` is not JSON: an interrupted append, never acknowledged."""
        return bool(self.tail) and self.whole is None


class ConversationStore:
    """The conversations of exactly one user; it can reach no other user's files.

    With ``account_id`` (as a ``Login`` opens it) the store serves only while
    the user's directory still belongs to that account: after the account is
    deleted (or its password changed), by this kernel or another, every use
    raises ``NotLoggedIn``. With ``cipher`` every line it writes is encrypted
    (see the module docstring); without one its files are as they always were.
    """

    def __init__(
        self,
        data_dir: Path,
        username: str,
        account_id: str | None = None,
        *,
        cipher: LineCipher | None = None,
    ) -> None:
        self._user = username_key(username)
        self._account_id = account_id
        self._data_dir = Path(data_dir)
        self._dir = self._data_dir / "conversations" / self._user
        self._cache: dict[str, FileState] = {}
        self._streaming: set[str] = set()  # ids of replies this store is drafting (shown live, not as drafts)
        # Held while this store drafts a reply, so other readers can tell it from an interrupted one.
        self._leases = ReplyLeases(self._dir)
        self._leases.sweep()
        self._mutex = threading.RLock()
        self._closed = False
        self._cipher = cipher
        # A derived cache, opened at first use; an encrypted account's only in memory (a file would
        # hold the words in clear).
        self._index = SearchIndex(self._dir, in_memory=cipher is not None)

    @property
    def username(self) -> str:
        return self._user

    @property
    def directory(self) -> Path:
        return self._dir

    def close(self) -> None:
        """Forget everything held in memory, the key included; any further use raises ``NotLoggedIn``."""
        with self._mutex:
            self._cache.clear()
            self._closed = True
            self._leases.release_all()
            self._cipher = None  # a logout forgets the key: this store keeps no reference to it
            self._index.close()

    # -- reading ---------------------------------------------------------------------------

    def list(self) -> builtins.list[ConversationSummary]:
        """Summaries, most recently updated first, from each file's first line only.

        A file that cannot be read is skipped with a warning naming it; the others still list.
        """
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
        with self._mutex:
            path = self._path(conversation_id)
            with self._reading() as refused:
                return self._load(path, refused=refused, writing=False)

    def search(self, query: str, limit: int = 20) -> builtins.list[SearchHit]:
        """The user's messages and titles matching ``query`` (every branch), best first (``nbchat.search``).

        The index is a cache beside the files: conversations changed since it last saw them
        (by another kernel too) are indexed again first, one stat per file. An empty query is
        a ``SearchError``; a missing or damaged index is rebuilt, never an error.
        """
        return self._search(query, limit)

    def prepare_search(self) -> None:
        """Bring the search index up to date now, so the first search is as fast as the next.

        An encrypted account's index lives in memory only, so each login starts without one;
        the session calls this in the background at login (building it for 100,000 messages
        takes seconds). A search meanwhile waits for its slice, then goes on from there.
        """
        self._search(None, 1)

    def search_behind(self) -> int:
        """How many conversations a search would (re)index before answering: 0 when it is ready."""
        with self._mutex:
            return self._index.behind(self._stamps())

    def _search(self, query: str | None, limit: int) -> builtins.list[SearchHit]:
        while True:  # both locks are let go between slices of a long catch-up: replies keep saving
            with self._mutex, self._reading() as refused:
                files = self._stamps() if refused is None or self._dir.is_dir() else {}
                hits = self._index.search(
                    query,
                    limit,
                    files,
                    lambda cid: self._indexable(cid, refused),
                    locked=refused is None,
                    slice_s=SEARCH_SLICE_S,
                )
                if hits is not None:  # a reply streaming here is shown live, not as a message to open
                    return [hit for hit in hits if hit.message_id not in self._streaming]
            time.sleep(SEARCH_PAUSE_S)

    def stamp(self, conversation_id: str) -> Stamp | None:
        """(inode, size) of the conversation's file, None if it is gone: one ``stat``, no read.

        Every change another kernel makes (an append, a rewrite, a deletion) changes it, so a
        view can poll it to know when to read the conversation again.
        """
        self._check_open()
        try:
            stat = self._path(conversation_id).stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_size)

    def _stamps(self) -> dict[str, Stamp]:
        """(inode, size) of every conversation file: what the search index compares with its own."""
        stamps = {}
        for path in self._conversation_files():
            try:
                stat = path.stat()
            except OSError:
                continue  # deleted meanwhile, or unreadable: nothing of it can be searched now
            stamps[path.name[: -len(SUFFIX)]] = (stat.st_ino, stat.st_size)
        return stamps

    def _indexable(
        self, conversation_id: str, refused: StorageFailed | None
    ) -> tuple[Conversation, Stamp] | None:
        """The file's conversation (every draft too: the index holds what the file says, whoever
        is streaming) and the (inode, size) read up to; None if it cannot be read now."""
        try:
            state = self._load_state(self._path(conversation_id), refused=refused, writing=False)
        except (CorruptFile, UnsupportedVersion, ConversationNotFound, StorageFailed):
            return None
        return state.view(), (state.inode, state.offset)

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
            self._write_whole(path, conversation, None)
            return conversation

    def append(self, conversation_id: str, message: Message, *, new_root: bool = False) -> Message:
        """Save one message at the end of the file: one write + fsync, whatever the length.

        A message without a ``parent`` continues the active path (it answers its last
        message), unless ``new_root`` (an edited first question). A message with a parent
        starts a branch there when that message already has an answer (a regenerated reply,
        an edited question). Returns the message as saved, its parent filled in.

        If the disk refuses (``StorageFailed``), the file and this store are as
        before, so the same message can be appended again once there is space.
        """
        if not isinstance(message, Message):
            raise InvalidValue(f"append() takes a Message, not {type(message).__name__}.")
        if new_root and message.parent is not None:
            raise InvalidValue("A new first question has no parent; leave message.parent as None.")
        with self._mutex, self._lock():
            path = self._path(conversation_id)
            state = self._load_state(path)
            draft = state.draft(message.id)
            if message.id in state.entries and draft is None:
                raise InvalidValue(f"Message {message.id} is already saved in this conversation.")
            parent = message.parent
            if draft is not None:
                parent = draft.parent
                if message.parent not in (None, draft.parent):
                    raise InvalidValue(f"Message {message.id} was drafted as an answer to another message.")
            elif parent is None and not new_root:
                parent = state.leaf(self._streaming)
            elif parent is not None and parent not in state.entries:
                raise MessageNotFound(
                    f"Message {message.id} answers {parent}, which this conversation lacks."
                )
            if parent != message.parent:
                message = replace(message, parent=parent)
            self._add_line(path, state, message, records.message_line(message))
            self._streaming.discard(message.id)
            self._leases.release(message.id)
            return message

    def append_draft(self, conversation_id: str, draft: records.Draft) -> None:
        """Save a streaming reply's text since its last draft (appended: never a rewrite).

        Until its message is appended (same id) this store does not show it (the reply is
        shown live); any other reader, or a store opened after this kernel died, shows it as
        an interrupted reply.
        """
        with self._mutex, self._lock():
            path = self._path(conversation_id)
            state = self._load_state(path)
            existing = state.entries.get(draft.id)
            if isinstance(existing, Message):
                raise InvalidValue(f"Reply {draft.id} is already saved; it takes no more drafts.")
            if existing is not None and existing.parent != draft.parent:
                raise InvalidValue(f"Reply {draft.id} was drafted as an answer to another message.")
            if draft.parent is not None and draft.parent not in state.entries:
                raise MessageNotFound(
                    f"Reply {draft.id} answers {draft.parent}, which this conversation lacks."
                )
            if draft.id not in self._streaming:
                self._leases.hold(draft.id)
                self._streaming.add(draft.id)
            self._add_line(path, state, draft, records.draft_line(draft))

    def select(self, conversation_id: str, message_id: str) -> Conversation:
        """Show the branch through ``message_id`` (an alternative reply or question): append a choice.

        Returns the conversation, whose active path now runs through that message. Choosing
        what the active path already shows writes nothing.
        """
        with self._mutex, self._lock():
            path = self._path(conversation_id)
            current = self._load(path)
            state = self._cache[conversation_id]
            if message_id not in state.tree(self._streaming):
                raise MessageNotFound(f"This conversation has no message with id {message_id!r}.")
            if current.tree.path_through(message_id) == current.messages:
                return current
            select = records.Select(message_id, utcnow())
            self._add_line(path, state, select, records.select_line(select))
            return self._view(state)

    def _add_line(self, path: Path, state: FileState, item: records.Line, line: bytes) -> None:
        """Append one line; an older or clear file is first rewritten once as this store writes."""
        line = self._sealed(line, state.conversation.id, state.lines)
        if state.version < records.TREE_VERSION or self._unsealed(state):
            # An older nbchat then refuses the file untouched instead of calling it damaged.
            body = self._body(path, state)
            state = self._write_whole(path, state.conversation, state, body + line)
            state.offset -= len(line)  # taken next, as for an append
            state.take(item, len(line))
            self._index.rewritten(state.view(), inode=state.inode, size=state.offset)
            return
        append_bytes(path, line)
        before = state.offset
        state.take(item, len(line))
        message = item if isinstance(item, Message) else None
        draft = item if isinstance(item, records.Draft) else None
        self._index.added(
            state.conversation.id, message, inode=state.inode, before=before, after=state.offset, draft=draft
        )

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

    def seal(self, conversation_id: str) -> bool:
        """Encrypt a clear file whole with this store's key (converting an account); False if it was.

        One atomic rewrite, nothing else changed (not even ``updated``): a kill leaves the clear
        file or the sealed one, and this store reads both.
        """
        if self._cipher is None:
            raise InvalidValue("This store has no key to encrypt with; open it with the account's cipher.")
        with self._mutex, self._lock():
            path = self._path(conversation_id)
            state = self._load_state(path)
            if not self._unsealed(state):
                return False
            self._write_whole(path, state.conversation, state, self._body(path, state))
            return True

    def unsealed(self) -> builtins.list[str]:
        """Ids of the conversations still in clear (an account being converted), from first lines only.

        A header that is not JSON is listed too: ``seal`` then finds the damage (and moves it aside).
        """
        with self._mutex:
            self._check_open()
            self._check_account()
            ids = []
            for path in self._conversation_files():
                try:
                    with path.open("rb") as handle:
                        first = handle.readline(records.MAX_HEADER_BYTES + 1)
                except OSError:
                    continue  # deleted meanwhile, or unreadable: tried again at the next login
                try:
                    record = json.loads(first)
                except (ValueError, RecursionError):
                    record = None
                if not isinstance(record, dict) or "sealed" not in record:
                    ids.append(path.name[: -len(SUFFIX)])
            return ids

    def seal_leftovers(self) -> builtins.list[Path]:
        """Finish converting an account: no file this store did not write sealed may hold plaintext.

        Removes the clear-era search index (and its journal), stale temp files of interrupted
        writes, and seals each damaged file moved aside whole, as one token under this store's key
        (``<name>.sealed``: kept for a person to look at, with ``open_damaged``), then deletes the
        clear one. Each step is atomic; a kill leaves the rest for the next call. Returns what it
        removed or replaced.
        """
        if self._cipher is None:
            raise InvalidValue("This store has no key to encrypt with; open it with the account's cipher.")
        with self._mutex:
            if not self._leftovers():
                return []  # the usual case: nothing to do, not even the lock to take
            with self._lock():
                return self._seal_leftovers(self._cipher)

    def _leftovers(self) -> builtins.list[str]:
        """Names in the directory that may hold plaintext an encrypted store never writes."""
        index = {INDEX_NAME, *(INDEX_NAME + suffix for suffix in INDEX_COMPANIONS)}
        with os_errors(self._dir, "list the files in", writing=False):
            try:
                names = sorted(os.listdir(self._dir))
            except FileNotFoundError:
                return []
        return [
            name
            for name in names
            if name in index
            or (name.startswith(".") and SUFFIX + "." in name and name.endswith(".tmp"))  # a killed write
            or _clear_damage(name)
        ]

    def _seal_leftovers(self, cipher: LineCipher) -> builtins.list[Path]:
        """``seal_leftovers`` under the user's lock (every writer of a temp file holds it too)."""
        done: builtins.list[Path] = []
        for name in self._leftovers():
            path = self._dir / name
            if _clear_damage(name) and not name.endswith(".tmp"):
                with os_errors(path, "read", writing=False):
                    data = path.read_bytes()
                token = cipher.seal(data, conversation_id=name, position=0)
                record = {"name": name, "key": records.key_id(cipher), "sealed": token}
                atomic_write_bytes(
                    path.with_name(name + SEALED_DAMAGE), json.dumps(record).encode("ascii") + b"\n"
                )
            with os_errors(path, "delete"), contextlib.suppress(FileNotFoundError):
                path.unlink()
            done.append(path)
        if done:
            fsync_dir(self._dir)
        return done

    def open_damaged(self, path: Path) -> bytes:
        """The bytes of a damaged file that ``seal_leftovers`` sealed (``<name>.sealed``), as moved aside."""
        self._check_open()
        if self._cipher is None:
            raise InvalidValue("This store has no key to open sealed files with.")
        with os_errors(Path(path), "read", writing=False):
            record = json.loads(Path(path).read_bytes())
        if record.get("key") != records.key_id(self._cipher):
            raise ConversationEncrypted(f"{path} was sealed with another key than this login's.")
        return self._cipher.open(record["sealed"], conversation_id=record["name"], position=0)

    def delete(self, conversation_id: str) -> None:
        """Remove the conversation's file for good."""
        with self._mutex, self._lock():
            path = self._path(conversation_id)
            with os_errors(path, "delete"):
                try:
                    path.unlink()
                except FileNotFoundError:
                    raise self._not_found(conversation_id) from None
            self._cache.pop(conversation_id, None)
            self._index.removed(conversation_id)
            fsync_dir(self._dir)

    # -- internals -------------------------------------------------------------------------

    def _sealed(self, line: bytes, conversation_id: str, position: int) -> bytes:
        """``line`` as this store writes it at ``position`` (the header is 0): sealed if it has a key."""
        if self._cipher is None:
            return line
        return records.seal_line(line, self._cipher, conversation_id, position)

    def _sealed_lines(self, lines: builtins.list[bytes], conversation_id: str) -> bytes:
        """The lines after a header as this store writes them, each at its position (from 1)."""
        return b"".join(self._sealed(line, conversation_id, at) for at, line in enumerate(lines, 1))

    def _unsealed(self, state: FileState) -> bool:
        """A clear file this store must seal before it writes to it (an account not converted yet)."""
        return self._cipher is not None and not state.sealed

    @property
    def _what(self) -> str:
        return f"The conversations of {self._user!r}"

    def _check_open(self) -> None:
        if self._closed:
            raise NotLoggedIn("This login has ended (logged out); log in again to continue.")

    def _check_account(self) -> None:
        if self._account_id is None:
            return
        path = self._dir / ACCOUNT_MARKER
        with os_errors(path, "read", writing=False):
            try:
                marker: str | None = path.read_bytes().strip().decode("ascii", "replace")
            except FileNotFoundError:
                marker = None
        if marker != self._account_id:
            self.close()
            raise NotLoggedIn(
                f"The account {self._user!r} was deleted or its password was changed since this "
                "login (perhaps from another kernel); log in again."
            )

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Hold the user's lock, to change files; a disk that refuses the lock file is ``StorageFailed``."""
        self._check_open()
        if self._account_id is None:
            for path in (self._data_dir, self._dir.parent, self._dir):
                ensure_private_dir(path)
        else:
            self._check_account()  # never recreate the directory of a deleted account
        try:
            with locked(self._dir / LOCK_NAME, self._what):
                self._check_account()  # the account may have gone while we waited
                yield
        except StorageFailed as exc:
            if exc.errno == errno.ENOENT and not self._dir.exists():
                self._check_account()
            raise

    @contextmanager
    def _reading(self) -> Iterator[StorageFailed | None]:
        """Hold the user's lock if the disk allows; yield ``None`` if held, else why it is not.

        Nothing is created to read: see the module docstring for why reading
        without the lock is safe, and what an unlocked reader must not do.
        """
        self._check_open()
        self._check_account()
        with os_errors(self._dir, "read", writing=False):
            exists = self._dir.is_dir()
        if not exists:  # nothing to read; taking the lock would create the directory
            yield storage_error(FileNotFoundError(errno.ENOENT, "missing"), self._dir, "read", writing=False)
            return
        with try_locked(self._dir / LOCK_NAME, self._what) as refused:
            self._check_account()
            yield refused

    def _not_found(self, conversation_id: object) -> ConversationNotFound:
        return ConversationNotFound(f"{self._user!r} has no conversation with id {conversation_id!r}.")

    def _path(self, conversation_id: object) -> Path:
        # Only 32 lowercase hex digits ever reach the filesystem: no id can steer a path.
        if not is_valid_id(conversation_id):
            raise self._not_found(conversation_id)
        return self._dir / f"{conversation_id}{SUFFIX}"

    def _conversation_files(self) -> builtins.list[Path]:
        with os_errors(self._dir, "list the conversations in", writing=False):
            try:
                names = os.listdir(self._dir)
            except FileNotFoundError:
                return []
        return [
            self._dir / name for name in names if name.endswith(SUFFIX) and is_valid_id(name[: -len(SUFFIX)])
        ]

    def _summary(self, path: Path) -> ConversationSummary | None:
        try:
            with os_errors(path, "read", writing=False):
                try:
                    with path.open("rb") as handle:
                        first = handle.readline(records.MAX_HEADER_BYTES + 1)
                        mtime = os.fstat(handle.fileno()).st_mtime
                except FileNotFoundError:
                    return None  # deleted by another kernel while listing
        except StorageFailed as exc:
            warnings.warn(f"Skipped a conversation: {exc}", NbchatWarning, stacklevel=3)
            return None
        try:
            if len(first) > records.MAX_HEADER_BYTES:
                raise records.RecordError(records.HEADER_TOO_LONG)
            # With or without its newline: a header that parses is whole (atomic writes never tear one).
            header, _, _ = self._parse_header(path.name[: -len(SUFFIX)], first)
        except UnsupportedVersion as exc:
            warnings.warn(f"Skipped {path.name}: {exc}", NbchatWarning, stacklevel=3)
            return None
        except records.RecordError:
            return self._summary_after_checking(path)
        modified = datetime.fromtimestamp(mtime, timezone.utc)
        return replace(header.summary, updated=max(header.updated, modified))

    def _summary_after_checking(self, path: Path) -> ConversationSummary | None:
        """Re-read a file whose header looked damaged, under the lock when possible (then moved aside)."""
        try:
            with self._reading() as refused:
                conversation = self._load(path, refused=refused, writing=False)
                with os_errors(path, "read", writing=False):
                    mtime = path.stat().st_mtime
        except (CorruptFile, StorageFailed) as exc:
            warnings.warn(str(exc), NbchatWarning, stacklevel=4)
            return None
        except (UnsupportedVersion, ConversationNotFound):
            return None
        modified = datetime.fromtimestamp(mtime, timezone.utc)
        return replace(conversation.summary, updated=max(conversation.updated, modified))

    def _load(
        self, path: Path, *, refused: StorageFailed | None = None, writing: bool = True
    ) -> Conversation:
        """Bring the cache of ``path`` up to date and return the conversation (see ``_load_state``)."""
        return self._view(self._load_state(path, refused=refused, writing=writing))

    def _view(self, state: FileState) -> Conversation:
        """The conversation as this store shows it: its own streaming replies left out (shown
        live), another kernel's marked as still being written, a dead kernel's as interrupted."""
        others = [d for d in state.open_drafts if d not in self._streaming]
        return state.view(self._streaming, [d for d in others if self._leases.is_live(d)])

    def _load_state(
        self, path: Path, *, refused: StorageFailed | None = None, writing: bool = True
    ) -> FileState:
        """Bring the cache of ``path`` up to date and return it (writers need no view of it).

        With the lock held (``refused`` is None) a torn last line is cut off, a
        lost final newline added back and a damaged file moved aside; for a
        writer a repair the disk refuses is ``StorageFailed``, a reader goes on
        without it. Without the lock nothing is changed, and the cache keeps
        complete lines only.
        """
        conversation_id = path.name[: -len(SUFFIX)]
        with os_errors(path, "read", writing=False):
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                self._cache.pop(conversation_id, None)
                raise self._not_found(conversation_id) from None
            with handle:
                stat = os.fstat(handle.fileno())
                first = handle.readline(records.MAX_HEADER_BYTES + 1)
                cached = self._cache.get(conversation_id)
                if len(first) > records.MAX_HEADER_BYTES:
                    cached, tail = None, b""  # not a conversation: do not read it all
                elif (
                    cached
                    and (cached.inode, cached.header) == (stat.st_ino, first)
                    and stat.st_size >= cached.offset
                ):
                    handle.seek(cached.offset)
                    tail = handle.read()
                else:
                    cached, tail = None, first + handle.read()
        try:
            if len(first) > records.MAX_HEADER_BYTES:
                raise records.RecordError(records.HEADER_TOO_LONG)
            read = self._parse(conversation_id, stat.st_ino, cached, tail)
        except records.RecordError as exc:
            self._cache.pop(conversation_id, None)
            if refused is not None:
                raise self._left_in_place(path, str(exc), refused) from None
            raise self._move_aside(path, str(exc)) from None
        return self._settle(path, conversation_id, read, repair=refused is None, writing=writing)

    def _settle(
        self, path: Path, conversation_id: str, read: _Read, *, repair: bool, writing: bool
    ) -> FileState:
        """Repair what ``read`` found at the end of the file (if allowed), cache it, return it."""
        state = read.state
        if read.torn and repair and state is not None:
            try:
                truncate(path, state.offset)
            except StorageFailed:
                if writing:
                    raise
            else:
                warnings.warn(
                    f"{path.name}: dropped an incomplete last line ({len(read.tail)} bytes) left by an "
                    "interrupted write; that message had never been saved. The file is repaired.",
                    NbchatWarning,
                    stacklevel=5,
                )
        whole = read.whole
        if whole is not None:
            if repair:
                try:
                    append_bytes(path, b"\n")  # the next append must start on a line of its own
                    state = whole
                except StorageFailed:
                    if writing:
                        raise
            if state is not None:
                self._cache[conversation_id] = state
            return whole
        assert state is not None  # _parse returns a state unless the last line is the header
        self._cache[conversation_id] = state
        return state

    def _parse(self, conversation_id: str, inode: int, cached: FileState | None, data: bytes) -> _Read:
        """Parse bytes read after ``cached`` (or a whole file); the cache itself is left unchanged."""
        complete, newline, tail = data.rpartition(b"\n")
        lines = complete.split(b"\n") if newline else []
        if cached is None:
            if not lines:  # the header lost its newline, or the file is not a conversation at all
                if not tail:
                    raise records.RecordError("the file is empty")
                try:
                    header, version, sealed = self._parse_header(conversation_id, tail)
                except records.NotJSON as exc:
                    raise records.RecordError(f"the file has no complete header line ({exc})") from None
                first = FileState(inode, tail + b"\n", len(tail) + 1, header, version, sealed=sealed)
                return _Read(inode, None, tail, first)
            header, version, sealed = self._parse_header(conversation_id, lines[0])
            state = FileState(
                inode, lines[0] + b"\n", len(lines[0]) + 1, header, version=version, sealed=sealed
            )
            lines = lines[1:]
        elif lines or tail:
            state = cached.copy()
        else:
            return _Read(inode, cached, b"")
        for line in lines:
            self._take_line(state, line, len(line) + 1)
        whole = None
        if tail:
            try:  # not JSON: torn by an interrupted append
                item = self._parse_line(state.lines + 1, tail, state)
            except records.NotJSON:
                pass
            else:
                whole = state.copy()
                self._take(whole, item, len(tail) + 1)
        return _Read(inode, state, tail, whole)

    def _take_line(self, state: FileState, line: bytes, length: int) -> None:
        self._take(state, self._parse_line(state.lines + 1, line, state), length)

    @staticmethod
    def _take(state: FileState, item: records.Line, length: int) -> None:
        number = state.lines + 1
        try:
            state.take(item, length)
        except records.RecordError as exc:
            raise records.RecordError(f"line {number}: {exc}") from None

    def _parse_header(self, conversation_id: str, line: bytes) -> tuple[Conversation, int, bool]:
        """The header's conversation, content version, and whether the file is sealed."""
        # A newer format (or a sealed file this store has no key for) raises UnsupportedVersion
        # here, before anything is repaired.
        if self._cipher is None:
            conversation, version = records.parse_header_and_version(line)
            sealed = False
        else:
            conversation, version, sealed = records.open_header(line, self._cipher, conversation_id)
        if conversation.id != conversation_id:
            raise records.RecordError(f"the header's id {conversation.id!r} does not match the file name")
        return conversation, version, sealed

    def _parse_line(self, number: int, line: bytes, state: FileState) -> records.Line:
        try:
            if state.sealed:
                assert self._cipher is not None  # a sealed state is only read with a key
                position, cid = number - 1, state.conversation.id  # the header is line 1, position 0
                return records.open_line(line, self._cipher, cid, position, state.version, state.last_message)
            return records.parse_line(line, state.version, state.last_message)
        except records.NotJSON as exc:
            raise records.NotJSON(f"line {number}: {exc}") from None
        except records.RecordError as exc:
            raise records.RecordError(f"line {number}: {exc}") from None

    def _move_aside(self, path: Path, reason: str) -> CorruptFile:
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%fZ")
        moved = path.with_name(f"{path.name}{CORRUPT_MARK}{stamp}")
        try:
            with os_errors(path, "move aside"):
                os.replace(path, moved)
        except StorageFailed as exc:
            return CorruptFile(
                f"Conversation file {path} could not be read ({reason}), and moving it aside failed "
                f"too: {exc} It was left in place; your other conversations are unaffected.",
                path=path,
                moved_to=None,
            )
        with contextlib.suppress(StorageFailed):  # moved either way; only its durability is in doubt
            fsync_dir(path.parent)
        return CorruptFile(
            f"Conversation file {path} could not be read ({reason}). It was moved to "
            f"{moved} (nothing was deleted); your other conversations are unaffected.",
            path=path,
            moved_to=moved,
        )

    def _left_in_place(self, path: Path, reason: str, refused: StorageFailed) -> CorruptFile:
        return CorruptFile(
            f"Conversation file {path} could not be read ({reason}). It was left in place, as the "
            f"data dir cannot be changed now: {refused} Your other conversations are unaffected.",
            path=path,
            moved_to=None,
        )

    def _rewrite(self, conversation_id: str, **changes: Any) -> Conversation:
        with self._mutex, self._lock():
            current = self._load(self._path(conversation_id))
            return self._rewrite_loaded(current, **changes)

    def _rewrite_loaded(self, current: Conversation, **changes: Any) -> Conversation:
        """A new header over the same body: every message, draft and branch choice is kept."""
        updated = replace(current, updated=utcnow(), **changes)
        path = self._dir / f"{current.id}{SUFFIX}"
        state = self._cache[current.id]
        self._write_whole(path, updated, state, self._body(path, state))
        return updated

    def _body(self, path: Path, state: FileState) -> bytes:
        """The file's lines after the header as this store writes them: at the newest version
        (an older file's upgraded), sealed if it has a key (each line at its position, from 1)."""
        cid = state.conversation.id
        if state.version < records.TREE_VERSION:  # only messages, each on one line
            return self._sealed_lines([records.message_line(m) for m in state.saved_messages()], cid)
        with os_errors(path, "read", writing=False), path.open("rb") as handle:
            handle.seek(len(state.header))
            body = handle.read(state.offset - len(state.header))
        if len(body) != state.offset - len(state.header):
            raise storage_error(OSError(errno.EIO, "it is shorter than what was read of it"), path, "rewrite")
        if self._unsealed(state):  # read and checked as clear lines: each sealed where it stands
            return self._sealed_lines(body.split(b"\n")[:-1], cid)  # every line read ends in a newline
        return body  # sealed lines keep their positions: a new header changes none of them

    def _write_whole(
        self, path: Path, conversation: Conversation, state: FileState | None, body: bytes = b""
    ) -> FileState:
        """Write header + ``body`` atomically; the cache follows (``state`` holds what ``body`` says)."""
        header = records.header_line(conversation)
        if self._cipher is not None:
            header = records.seal_header(header, self._cipher, conversation.id)
        self._cache.pop(conversation.id, None)  # re-read from disk if anything below fails
        atomic_write_bytes(path, header + body)
        with os_errors(path, "read", writing=False):
            inode = path.stat().st_ino
        fresh = FileState(
            inode,
            header,
            len(header) + len(body),
            conversation.without_messages(),
            version=records.FORMAT_VERSION,  # just written at the newest version
            sealed=self._cipher is not None,
        )
        if state is not None:
            fresh = replace(
                state.copy(),
                inode=fresh.inode,
                header=header,
                offset=fresh.offset,
                conversation=fresh.conversation,
                version=fresh.version,
                sealed=fresh.sealed,
            )
        self._cache[conversation.id] = fresh
        self._index.rewritten(fresh.view(), inode=fresh.inode, size=fresh.offset)
        return fresh


def _clear_damage(name: str) -> bool:
    """A damaged file moved aside and not yet sealed (``seal_leftovers`` seals it)."""
    return CORRUPT_MARK in name and not name.endswith(SEALED_DAMAGE)
