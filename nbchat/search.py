"""Full-text search over one user's conversations: an SQLite FTS5 index beside the JSON Lines files.

The index (``<user dir>/.search.sqlite``) is a derived cache, never the source of truth:

- it is rebuilt when missing, when its schema is not this module's, and when it is damaged
  (garbage bytes, a truncated file, anything SQLite calls corrupt): the file is deleted and
  built again from the conversation files, with no error to the user;
- it records, per conversation, the file's (inode, size) it has indexed up to. Before every
  search each file is stat-ed once and a conversation that changed (another kernel appended,
  renamed, or the index missed an update) is brought up to date, one deleted is dropped;
- the store tells it of every line it appends (``added``: O(1), one small transaction that
  applies only if the index was exactly up to the size before that line), of every whole-file
  rewrite (``rewritten``: a rename touches the title only) and of deletions (``removed``). None
  of these ever raises into the store: a failure leaves the index behind the file, which the
  next search catches up.

Every message of every branch is indexed (its text, not its thinking or attached context),
and every title. Words are matched by SQLite's ``unicode61`` tokenizer with diacritics
removed from Latin letters (``cafe`` finds "café"); Chinese, Japanese and Korean text, which has no spaces
between words, is indexed one character per token (a zero-width space goes between such
characters, in the index only), so a query of any length finds text inside a longer run:
measured against the ``trigram`` tokenizer, which finds nothing for the common two-character
words ("数据") and cannot fold diacritics in this SQLite.

The file uses a rollback journal (``PERSIST``) with ``synchronous=OFF``: a process killed
mid-write leaves a journal that SQLite rolls back, and only a power cut can damage it (then
it is rebuilt). Not WAL: a kernel closing a connection to an index another kernel replaced
would delete the new index's ``-wal`` file by name. Every use of the file happens under the
user's lock (the store holds it); where the lock or the file cannot be had (a read-only data
dir, a full disk) the store searches an index kept in memory instead, built from the files.

``sqlite3`` is imported only when the index is first used, so ``import nbchat`` stays light.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbchat.errors import SearchError

if TYPE_CHECKING:
    import sqlite3

    from nbchat import records
    from nbchat.types import Conversation, Message

log = logging.getLogger(__name__)

INDEX_NAME = ".search.sqlite"
#: The files SQLite keeps beside the index (all deleted with it).
INDEX_COMPANIONS = ("-journal", "-wal", "-shm")
FILE_MODE = 0o600  # as the conversation files: the user's words
SCHEMA_VERSION = 1  # PRAGMA user_version of an index this module built; any other is rebuilt
MAX_QUERY_CHARS = 1_000
MAX_QUERY_WORDS = 32
MAX_LIMIT = 1_000

# What marks a matched word inside ``snippet()``'s output; removed from indexed text first.
_OPEN, _CLOSE = "\x02", "\x03"  # char(2), char(3) in _SEARCH
_ZWSP = "\u200b"  # a token separator for unicode61 (a format character), invisible in text
_CJK = (
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uac00-\ud7af"  # hangul syllables
    "\U00020000-\U0002fa1f"  # CJK extensions B-F, compatibility supplement
)
_BETWEEN_CJK = re.compile(f"(?<=[{_CJK}])(?=[{_CJK}])")
_MARKERS = str.maketrans({_OPEN: " ", _CLOSE: " ", "\x00": " "})  # NUL: FTS5 reads C strings

_SCHEMA = f"""
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    inode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    title TEXT NOT NULL,
    updated TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE entries (
    rowid INTEGER PRIMARY KEY,
    conversation TEXT NOT NULL,
    message_id TEXT,            -- NULL: the conversation's title
    role TEXT,
    time TEXT NOT NULL,
    partial INTEGER NOT NULL    -- 1: an interrupted reply read from its drafts (may still grow)
);
CREATE UNIQUE INDEX entries_message ON entries (conversation, message_id);
CREATE VIRTUAL TABLE words USING fts5(body, tokenize = 'unicode61 remove_diacritics 2');
PRAGMA user_version = {SCHEMA_VERSION};
"""

_SEARCH = """
WITH best AS (
    SELECT rowid, snippet(words, 0, char(2), char(3), '…', 20) AS snip, rank
    FROM words WHERE words MATCH ? ORDER BY rank LIMIT ?
)
SELECT e.conversation, c.title, e.message_id, e.role, best.snip, best.rank, e.time
FROM best JOIN entries e ON e.rowid = best.rowid JOIN conversations c ON c.id = e.conversation
ORDER BY best.rank
"""


@dataclass(frozen=True)
class SearchHit:
    """One message (or a title) that matches, best first.

    ``snippet`` is plain text around the hit (no HTML: escape it to show it), each matched
    word wrapped in ``[`` and ``]``, "…" where the text was cut. Text may itself hold
    brackets, so to highlight exactly use ``parts``: the same snippet as ``(text, matched)``
    pieces. ``message_id``/``role`` are ``None`` when the title matched; ``score`` is higher
    for a better match (bm25, negated); ``time`` is the message's, or the conversation's last
    change for a title.
    """

    conversation_id: str
    title: str
    message_id: str | None
    role: str | None
    snippet: str
    score: float
    time: datetime
    parts: tuple[tuple[str, bool], ...] = ()


#: (inode, size) of a conversation file, as stat-ed.
Stamp = tuple[int, int]
#: What a search needs of one conversation: it as read, and the (inode, size) read up to;
#: ``None`` for a file that cannot be read now (gone, damaged, a newer format, an I/O error).
Loader = Callable[[str], "tuple[Conversation, Stamp] | None"]


def indexed_text(text: str) -> str:
    """Text as the index holds it: snippet markers removed, CJK characters one token each."""
    return _BETWEEN_CJK.sub(_ZWSP, text.translate(_MARKERS))


def match_expression(query: object) -> str:
    """The user's words as an FTS5 query: each word quoted, the last one also as a prefix.

    Nothing a user types is FTS5 syntax (quotes, ``*``, ``AND``, ``-``, ``:``, parentheses
    are words or separators), so no query can raise; one with no word at all is refused.
    """
    if not isinstance(query, str):
        raise SearchError(f"A search query is text, not {type(query).__name__}.")
    if len(query) > MAX_QUERY_CHARS:
        raise SearchError(
            f"The search query is {len(query):,} characters long; search for at most {MAX_QUERY_CHARS:,}."
        )
    words = [w for w in indexed_text(query).split() if any(c.isalnum() for c in w)]
    if not words:
        raise SearchError(
            "Type a word to search for: the query is empty or has only punctuation."
            if query.strip()
            else "Type a word to search for: the query is empty."
        )
    if len(words) > MAX_QUERY_WORDS:
        raise SearchError(f"The search query has {len(words)} words; search for at most {MAX_QUERY_WORDS}.")
    quoted = ['"' + word.replace('"', '""') + '"' for word in words]
    quoted[-1] += " *"  # search as you type: the last word may be unfinished
    return " ".join(quoted)


def snippet_parts(raw: str) -> tuple[tuple[str, bool], ...]:
    """``snippet()``'s output as (text, matched) pieces, the index's zero-width spaces removed."""
    parts: list[tuple[str, bool]] = []
    for number, piece in enumerate(re.split(f"[{_OPEN}{_CLOSE}]", raw.replace(_ZWSP, ""))):
        if piece:
            parts.append((piece, number % 2 == 1))
    return tuple(parts)


def _bracketed(parts: tuple[tuple[str, bool], ...]) -> str:
    return "".join(f"[{text}]" if matched else text for text, matched in parts)


def _is_partial(message: Message) -> bool:
    """A reply read back from drafts (interrupted, or another kernel still writing it)."""
    stats = message.stats or {}
    return bool(stats.get("interrupted") or stats.get("live"))


def _time(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


class _Unusable(Exception):
    """The index file cannot be used here (cannot be created, written or locked): search in memory."""


def _unusable(exc: BaseException) -> bool:
    """The file cannot be had or written here (busy, full, read-only, I/O error): search in memory."""
    import sqlite3

    if isinstance(exc, _Unusable):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return isinstance(exc, sqlite3.OperationalError)
    return code & 0xFF in (
        5,
        6,
        7,
        8,
        10,
        13,
        14,
        15,
    )  # BUSY LOCKED NOMEM READONLY IOERR FULL CANTOPEN PROTOCOL


def _corrupt(exc: BaseException) -> bool:
    """SQLite says the file is damaged or not a database (not busy, full or read-only)."""
    import sqlite3

    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
    return type(exc) is sqlite3.DatabaseError


def _header_damaged(path: Path) -> bool:
    """A file SQLite would open but that cannot be a whole database: wrong magic, or cut short.

    A truncated index can answer some queries and fail others; caught here, it is rebuilt
    before it is used.
    """
    with path.open("rb") as handle:
        header = handle.read(100)
        size = os.fstat(handle.fileno()).st_size
    if size == 0:
        return False  # SQLite makes a new database of an empty file
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return True
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1) or size % page_size:
        return True
    pages = int.from_bytes(header[28:32], "big")
    counted = header[24:28] == header[92:96]  # the in-header page count is valid
    return counted and size < pages * page_size


def _hot_journal(path: Path) -> bool:
    """A writer was killed mid-transaction: the file may be half-written until SQLite rolls it back."""
    try:
        with open(f"{path}-journal", "rb") as handle:
            return handle.read(8).strip(b"\x00") != b""
    except FileNotFoundError:
        return False


class SearchIndex:
    """The search index of one user directory, for one store (one per kernel and login).

    The store calls every method under its own mutex; ``rewritten``, ``removed`` and
    ``search`` also under the user's file lock (``search`` without it only in memory).
    ``added`` only queues the update: a writer thread of this index applies it, outside those
    locks (SQLite's own locking serialises writers of one file), so an append never waits for
    SQLite; every other method first waits for the queue to empty.
    """

    def __init__(self, directory: Path, *, in_memory: bool = False) -> None:
        """``in_memory``: never use the file (an encrypted account: it would hold the words in clear);
        such an index never creates, reads or writes ``.search.sqlite``."""
        self._path = Path(directory) / INDEX_NAME
        self._db: sqlite3.Connection | None = None
        self._inode: int | None = None  # of the file ``_db`` was opened on
        self._in_memory = in_memory  # or later, when the file cannot be used: an index in memory
        self._memory_only = in_memory  # asked for: no file is ever seeded from, written or deleted
        self._db_lock = threading.RLock()  # one user of the connection at a time (writer thread, store)
        self._work = threading.Condition()  # guards _pending and _worker
        self._pending = 0  # updates queued and not yet applied
        self._worker: threading.Thread | None = None
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def in_memory(self) -> bool:
        """True when this store searches an index in memory (asked for, or the file could not be used)."""
        return self._in_memory

    def close(self) -> None:
        """Apply the updates still queued, stop the writer thread, close the index (a logout)."""
        self._caught_up()
        with self._work:
            worker, self._worker = self._worker, None
        if worker is not None:
            self._queue.put(None)
            worker.join(5)
        with self._db_lock:
            self._close_connection()

    # -- the store's hooks: never raise; ``added`` is written behind ----------------------------

    def added(
        self,
        conversation_id: str,
        message: Message | None,
        *,
        inode: int,
        before: int,
        after: int,
        draft: records.Draft | None = None,
    ) -> None:
        """One line was appended (``before`` → ``after`` bytes): queued for the writer thread.

        The append does not wait for SQLite (the file is the truth, already saved); every other
        use of the index first waits for the queue. Updates lost with a killed kernel leave the
        index behind the file, which the next search sees (its stamp) and catches up.
        """
        if not self._in_memory and self._db is None and not self._path.exists():
            return  # no index yet: the first search builds it from the files
        with self._work:
            self._pending += 1
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._write_behind, name="nbchat-search-index", daemon=True
                )
                self._worker.start()
        self._queue.put((conversation_id, message, inode, before, after, draft))

    def rewritten(self, conversation: Conversation, *, inode: int, size: int) -> None:
        self._caught_up()
        with self._db_lock:
            self._rewritten_now(conversation, inode=inode, size=size)

    def removed(self, conversation_id: str) -> None:
        self._caught_up()
        with self._db_lock:
            self._removed_now(conversation_id)

    def search(
        self,
        query: str | None,
        limit: int,
        files: Mapping[str, Stamp],
        load: Loader,
        *,
        locked: bool = True,
        slice_s: float | None = None,
    ) -> list[SearchHit] | None:
        """``_search_now`` once every queued update is in the index."""
        self._caught_up()
        with self._db_lock:
            return self._search_now(query, limit, files, load, locked=locked, slice_s=slice_s)

    def behind(self, files: Mapping[str, Stamp]) -> int:
        """How many of ``files`` a search would index first (0: ready); an index not open yet is
        behind on every one (opening it is the search's work)."""
        self._caught_up()
        with self._db_lock:
            if self._db is None:
                return len(files)
            known = {cid: (inode, size) for cid, inode, size in self._db.execute(
                "SELECT id, inode, size FROM conversations"
            )}
        return sum(known.get(conversation_id) != stamp for conversation_id, stamp in files.items())

    def _write_behind(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            conversation_id, message, inode, before, after, draft = job
            try:
                with self._db_lock:
                    self._added_now(
                        conversation_id, message, inode=inode, before=before, after=after, draft=draft
                    )
            finally:
                with self._work:
                    self._pending -= 1
                    self._work.notify_all()

    def _caught_up(self) -> None:
        """Wait until the writer thread has applied every queued update."""
        with self._work:
            while self._pending:
                self._work.wait()

    def _close_connection(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except Exception:
                log.debug("closing the search index failed", exc_info=True)
        self._db, self._inode = None, None

    def _added_now(
        self,
        conversation_id: str,
        message: Message | None,
        *,
        inode: int,
        before: int,
        after: int,
        draft: records.Draft | None = None,
    ) -> None:
        """One line was appended (``before`` → ``after`` bytes); index what it says (O(1)).

        A ``message`` is indexed (replacing its reply's drafts); a ``draft`` line adds its text
        to the reply's row, as a reader would show it: an interrupted reply, until its message.
        """
        try:
            db = self._existing()
            if db is None:
                return
            with _transaction(db):
                moved = db.execute(
                    "UPDATE conversations SET size = ? WHERE id = ? AND inode = ? AND size = ?",
                    (after, conversation_id, inode, before),
                )
                if moved.rowcount != 1:
                    return  # behind the file already: the next search catches it up
                if draft is not None:
                    self._add_draft(db, conversation_id, draft)
                if message is not None and not self._insert(db, conversation_id, message):
                    self._drop_message(db, conversation_id, message.id)  # its drafts' row
                    self._insert(db, conversation_id, message)
        except Exception as exc:
            self._failed("added", exc)

    def _rewritten_now(self, conversation: Conversation, *, inode: int, size: int) -> None:
        """The file was written whole (created, renamed, settings, upgraded): new title and stamp.

        The messages are indexed again only if some are missing (a rename costs a few rows).
        """
        try:
            db = self._existing()
            if db is None:
                return
            with _transaction(db):
                row = db.execute(
                    "SELECT count(message_id), total(partial) FROM entries WHERE conversation = ?",
                    (conversation.id,),
                ).fetchone()
                known = db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation.id,)).fetchone()
                if known is None or row != (len(conversation.tree), 0):
                    self._sync(db, conversation, (inode, size))
                else:
                    self._set_title(db, conversation)
                    db.execute(
                        "UPDATE conversations SET inode = ?, size = ? WHERE id = ?",
                        (inode, size, conversation.id),
                    )
        except Exception as exc:
            self._failed("rewritten", exc)

    def _removed_now(self, conversation_id: str) -> None:
        """The conversation was deleted."""
        try:
            db = self._existing()
            if db is None:
                return
            with _transaction(db):
                self._drop_conversation(db, conversation_id)
        except Exception as exc:
            self._failed("removed", exc)

    # -- searching ----------------------------------------------------------------------------

    def _search_now(
        self,
        query: str | None,
        limit: int,
        files: Mapping[str, Stamp],
        load: Loader,
        *,
        locked: bool = True,
        slice_s: float | None = None,
    ) -> list[SearchHit] | None:
        """The best ``limit`` hits for ``query``, after catching up with ``files`` (id → stamp).

        ``locked``: the caller holds the user's lock, so the file may be used (else: memory).
        ``slice_s``: stop catching up after about that long and return ``None`` (what was done
        is kept), so the caller can let go of the lock (other kernels append meanwhile) and
        call again: building the index of a big history takes seconds. A ``None`` query only
        catches up (and returns no hits): an index made ready before the first search.
        """
        import sqlite3

        expression = match_expression(query) if query is not None else None
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise SearchError(
                f"The number of hits must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}."
            )
        if not files and self._db is None and not self._path.exists():
            return []  # nothing to search: no reason to create an index
        if not locked and not self._in_memory:
            self._use_memory("the user's lock cannot be taken (a read-only data dir?)")
        for attempt in range(3):
            last = attempt == 2
            try:
                db = self._open()
                deadline = None if slice_s is None else time.monotonic() + slice_s
                if not self._catch_up(db, files, load, deadline):
                    return None
            except (sqlite3.Error, _Unusable) as exc:  # a schema gone, a page missing: damage too
                self._recover(exc, damaged=not _unusable(exc), last=last)
                continue
            if expression is None:
                return []
            try:
                return self._query(db, expression, limit)
            except sqlite3.Error as exc:
                if not (_corrupt(exc) or _unusable(exc)):
                    raise SearchError(f"This search could not be run ({exc}); try other words.") from exc
                self._recover(exc, damaged=_corrupt(exc), last=last)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- internals ------------------------------------------------------------------------------

    def _query(self, db: sqlite3.Connection, expression: str, limit: int) -> list[SearchHit]:
        hits = []
        for conversation_id, title, message_id, role, raw, rank, when in db.execute(
            _SEARCH, (expression, limit)
        ):
            parts = snippet_parts(raw)
            hits.append(
                SearchHit(
                    conversation_id=conversation_id,
                    title=title,
                    message_id=message_id,
                    role=role,
                    snippet=_bracketed(parts),
                    score=-float(rank),
                    time=datetime.fromisoformat(when),
                    parts=parts,
                )
            )
        return hits

    def _catch_up(
        self, db: sqlite3.Connection, files: Mapping[str, Stamp], load: Loader, deadline: float | None
    ) -> bool:
        """Re-index every conversation whose file is not what was indexed; drop the deleted ones.

        False when stopped at ``deadline`` (after indexing at least one: each call progresses).
        """
        known = {
            cid: (inode, size) for cid, inode, size in db.execute("SELECT id, inode, size FROM conversations")
        }
        for conversation_id in known.keys() - files.keys():
            with _transaction(db):
                self._drop_conversation(db, conversation_id)
        indexed = 0
        for conversation_id, stamp in files.items():
            if known.get(conversation_id) == stamp:
                continue
            if indexed and deadline is not None and time.monotonic() > deadline:
                return False
            loaded = load(conversation_id)
            with _transaction(db):
                if loaded is None:  # cannot be read now (damaged, newer, unreadable): tried again next time
                    self._drop_conversation(db, conversation_id)
                else:
                    self._sync(db, *loaded)
                    indexed += 1
        return True

    def _sync(self, db: sqlite3.Connection, conversation: Conversation, stamp: Stamp) -> None:
        """Make the index hold exactly this conversation (read up to ``stamp``), within a transaction."""
        rows = {
            message_id: (rowid, partial)
            for rowid, message_id, partial in db.execute(
                "SELECT rowid, message_id, partial FROM entries"
                " WHERE conversation = ? AND message_id IS NOT NULL",
                (conversation.id,),
            )
        }
        for message in conversation.tree.messages:
            row = rows.pop(message.id, None)
            if row is not None and not row[1]:
                continue  # a saved message never changes
            if row is not None:
                self._drop_rows(db, [row[0]])  # an interrupted reply: its drafts grew, or it was saved
            self._insert(db, conversation.id, message)
        self._drop_rows(db, [rowid for rowid, _ in rows.values()])
        db.execute(
            "INSERT INTO conversations VALUES (?, ?, ?, '', '') "
            "ON CONFLICT (id) DO UPDATE SET inode = excluded.inode, size = excluded.size",
            (conversation.id, *stamp),
        )
        self._set_title(db, conversation)

    def _set_title(self, db: sqlite3.Connection, conversation: Conversation) -> None:
        updated = _time(conversation.summary.updated)
        row = db.execute(
            "SELECT title, updated FROM conversations WHERE id = ?", (conversation.id,)
        ).fetchone()
        if row == (conversation.title, updated):
            return
        db.execute(
            "UPDATE conversations SET title = ?, updated = ? WHERE id = ?",
            (conversation.title, updated, conversation.id),
        )
        old = db.execute(
            "SELECT rowid FROM entries WHERE conversation = ? AND message_id IS NULL", (conversation.id,)
        ).fetchall()
        self._drop_rows(db, [rowid for (rowid,) in old])
        cursor = db.execute(
            "INSERT INTO entries (conversation, message_id, role, time, partial)"
            " VALUES (?, NULL, NULL, ?, 0)",
            (conversation.id, updated),
        )
        db.execute(
            "INSERT INTO words (rowid, body) VALUES (?, ?)",
            (cursor.lastrowid, indexed_text(conversation.title)),
        )

    @staticmethod
    def _insert(db: sqlite3.Connection, conversation_id: str, message: Message) -> bool:
        """Index one message; False (nothing done) if it has a row already (its drafts')."""
        cursor = db.execute(
            "INSERT INTO entries (conversation, message_id, role, time, partial) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (conversation_id, message.id, message.role, _time(message.time), int(_is_partial(message))),
        )
        if cursor.rowcount != 1:
            return False
        db.execute(
            "INSERT INTO words (rowid, body) VALUES (?, ?)", (cursor.lastrowid, indexed_text(message.content))
        )
        return True

    def _add_draft(self, db: sqlite3.Connection, conversation_id: str, draft: records.Draft) -> None:
        row = db.execute(
            "SELECT e.rowid, e.partial, w.body FROM entries e JOIN words w ON w.rowid = e.rowid"
            " WHERE e.conversation = ? AND e.message_id = ?",
            (conversation_id, draft.id),
        ).fetchone()
        if row is None:
            cursor = db.execute(
                "INSERT INTO entries (conversation, message_id, role, time, partial)"
                " VALUES (?, ?, 'assistant', ?, 1)",
                (conversation_id, draft.id, _time(draft.time)),
            )
            db.execute(
                "INSERT INTO words (rowid, body) VALUES (?, ?)", (cursor.lastrowid, indexed_text(draft.text))
            )
        elif row[1]:  # still a draft (a late draft of a saved reply changes nothing)
            text = row[2].replace(_ZWSP, "") + draft.text
            db.execute("UPDATE words SET body = ? WHERE rowid = ?", (indexed_text(text), row[0]))

    @staticmethod
    def _rows_of(db: sqlite3.Connection, conversation_id: str, message_id: str) -> list[int]:
        rows = db.execute(
            "SELECT rowid FROM entries WHERE conversation = ? AND message_id = ?",
            (conversation_id, message_id),
        )
        return [rowid for (rowid,) in rows]

    def _drop_message(self, db: sqlite3.Connection, conversation_id: str, message_id: str) -> None:
        self._drop_rows(db, self._rows_of(db, conversation_id, message_id))

    def _drop_conversation(self, db: sqlite3.Connection, conversation_id: str) -> None:
        db.execute(
            "DELETE FROM words WHERE rowid IN (SELECT rowid FROM entries WHERE conversation = ?)",
            (conversation_id,),
        )
        db.execute("DELETE FROM entries WHERE conversation = ?", (conversation_id,))
        db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    @staticmethod
    def _drop_rows(db: sqlite3.Connection, rowids: list[int]) -> None:
        for rowid in rowids:
            db.execute("DELETE FROM words WHERE rowid = ?", (rowid,))
            db.execute("DELETE FROM entries WHERE rowid = ?", (rowid,))

    def _existing(self) -> sqlite3.Connection | None:
        """The index to update, or None when there is none yet (the first search builds it)."""
        if self._in_memory:
            return self._db
        if self._db is not None and self._current():
            return self._db
        self._close_connection()
        if not self._path.exists():
            return None
        return self._open()

    def _current(self) -> bool:
        """The open connection is to the file now at ``path`` (another kernel may have rebuilt it)."""
        try:
            return os.stat(self._path).st_ino == self._inode
        except OSError:
            return False

    def _open(self) -> sqlite3.Connection:
        """The index, made ready (schema checked, a damaged file deleted and rebuilt)."""
        import sqlite3

        if self._in_memory:
            if self._db is None:
                seeded = None if self._memory_only else self._seeded(sqlite3)
                self._db = seeded or _connect(sqlite3, ":memory:")
                if not self._db.execute("PRAGMA user_version").fetchone()[0]:
                    self._db.executescript(_SCHEMA)
            return self._db
        try:
            # Checked again each time: the file may have been cut short in place since it was opened.
            if self._db is not None and self._current() and not _header_damaged(self._path):
                return self._db
            self._close_connection()
            if self._path.exists() and _header_damaged(self._path):
                log.debug("search index %s is not a whole database; rebuilding it", self._path)
                self._discard()
            db = self._connect_file(sqlite3)
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version != SCHEMA_VERSION:
                    tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                    if tables:  # another schema: this is a cache, start again
                        db.close()
                        self._discard()
                        db = self._connect_file(sqlite3)
                    db.executescript(_SCHEMA)
                self._inode = os.stat(self._path).st_ino
            except BaseException:
                db.close()
                raise
        except OSError as exc:
            raise _Unusable(str(exc)) from exc
        self._db = db
        return db

    def _seeded(self, sqlite3: Any) -> sqlite3.Connection | None:
        """An index in memory copied from the file, when it can be read and was left whole.

        Only where the file cannot be changed (a read-only data dir): the copy is then caught
        up like the file would be, instead of being built from every conversation.
        """
        try:
            if not self._path.exists() or _header_damaged(self._path) or _hot_journal(self._path):
                return None
            uri = Path(self._path).absolute().as_uri() + "?mode=ro&immutable=1"
            source = sqlite3.connect(uri, uri=True)
            try:
                if source.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                    return None
                copy = _connect(sqlite3, ":memory:")
                source.backup(copy)
                return copy
            finally:
                source.close()
        except (sqlite3.Error, OSError):
            log.debug(
                "search index %s could not be copied; building one in memory", self._path, exc_info=True
            )
            return None

    def _connect_file(self, sqlite3: Any) -> sqlite3.Connection:
        """Open the file, creating it private first (SQLite gives its journal the same mode)."""
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        return _connect(sqlite3, str(self._path))

    def _discard(self) -> None:
        """Delete the index file and its journal (called under the user's lock)."""
        self._close_connection()
        if self._memory_only:
            return  # the damaged index was in memory: closing it is the discarding
        for suffix in ("", *INDEX_COMPANIONS):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self._path}{suffix}")

    def _recover(self, exc: BaseException, *, damaged: bool, last: bool) -> None:
        """After a failed search: rebuild a damaged file, or move to memory; raise if that was tried."""
        if last or (self._in_memory and not damaged):  # even an index in memory failed: say so
            raise SearchError(
                f"Searching failed even after rebuilding the search index ({type(exc).__name__}: {exc}). "
                "Your conversations are unaffected; try again, or free some memory."
            ) from exc
        if damaged:
            log.debug("search index %s is damaged; rebuilding it", self._path, exc_info=exc)
            try:
                self._discard()
            except OSError as failed:
                self._use_memory(f"the damaged index cannot be deleted: {failed}")
        else:
            self._use_memory(f"{type(exc).__name__}: {exc}")

    def _use_memory(self, why: str) -> None:
        log.debug("search index %s cannot be used (%s); searching an index in memory", self._path, why)
        self._close_connection()
        self._in_memory = True

    def _failed(self, what: str, exc: BaseException) -> None:
        """An update failed: the index is behind its files (caught up, or rebuilt, at the next search)."""
        log.debug("search index %s: %s failed", self._path, what, exc_info=exc)
        if _corrupt(exc):
            try:
                self._discard()
            except OSError:
                self._close_connection()
        elif not self._in_memory:
            self._close_connection()


def _connect(sqlite3: Any, target: str) -> sqlite3.Connection:
    db = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=10.0)
    try:
        db.execute("PRAGMA journal_mode = PERSIST")
        db.execute("PRAGMA synchronous = OFF")
    except BaseException:
        db.close()
        raise
    return db


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:
            self._db.execute("ROLLBACK")
