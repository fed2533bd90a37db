"""What has been read of one conversation file: its messages, open drafts and branch choices.

The store keeps one ``FileState`` per file it has read and feeds it each line appended since
(``take``), so reading a grown file costs only the new lines. The rules a file must keep are
checked here, line by line: a message's parent is an earlier message, no id is saved twice,
a select record names a message that exists. A line that breaks them is damage.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from nbchat import records
from nbchat.tree import MessageTree
from nbchat.types import MAX_CONTENT_CHARS, Conversation, Message

#: What an interrupted reply (drafts with no saved message: the kernel died) has in its stats.
INTERRUPTED_STATS = {"partial": True, "interrupted": True}
#: What a reply another kernel is still writing (drafts, its lease held) has in its stats.
LIVE_STATS = {"partial": True, "live": True}


@dataclass
class OpenDraft:
    """A reply seen only through its draft lines so far."""

    parent: str | None
    model: str | None
    time: datetime
    text: builtins.list[str] = field(default_factory=list)
    thinking: builtins.list[str] = field(default_factory=list)

    def copy(self) -> OpenDraft:
        return replace(self, text=list(self.text), thinking=list(self.thinking))

    def as_message(self, message_id: str, *, live: bool = False) -> Message:
        """The reply as far as it was written, marked interrupted (or ``live``: still being written)."""
        text = "".join(self.text)[:MAX_CONTENT_CHARS]
        thinking = "".join(self.thinking)[:MAX_CONTENT_CHARS]
        return Message(
            "assistant",
            text,
            id=message_id,
            time=self.time,
            thinking=thinking or None,
            model=self.model,
            stats=dict(LIVE_STATS if live else INTERRUPTED_STATS),
            parent=self.parent,
        )


@dataclass
class FileState:
    """One file as read up to ``offset`` bytes (``lines`` lines, the header being line 1)."""

    inode: int
    header: bytes
    offset: int
    conversation: Conversation  # from the header: no messages
    version: int = 0  # the file's format version (decoded from ``header`` only when not given)
    lines: int = 1  # also the position of the next line: the header is position 0
    #: Every line is encrypted (``records.seal_line``); ``version`` is then that of the lines inside.
    sealed: bool = False
    #: Every message and open draft by id, in the order each first appeared in the file.
    entries: dict[str, Message | OpenDraft] = field(default_factory=dict)
    #: When each entry was last used (the line that saved it, drafted it or selected it).
    last_used: dict[str, int] = field(default_factory=dict)
    last_message: str | None = None  # the message on the last message line (to upgrade old lines)
    _tree: tuple[tuple[frozenset[str], frozenset[str]], MessageTree] | None = None
    #: The active path's last message when known without building the tree: a message just
    #: saved is the most recently used and has no children, so the path ends in it.
    _leaf: str | None = None
    _answered: set[str] = field(default_factory=set)  # ids that some entry answers (has children)
    _drafting: set[str] = field(default_factory=set)  # ids of the entries that are open drafts

    def __post_init__(self) -> None:
        if not self.version:
            self.version = records.header_version(self.header)

    def copy(self) -> FileState:
        entries = {k: v.copy() if isinstance(v, OpenDraft) else v for k, v in self.entries.items()}
        return replace(
            self,
            entries=entries,
            last_used=dict(self.last_used),
            _tree=None,
            _leaf=None,
            _answered=set(self._answered),
            _drafting=set(self._drafting),
        )

    @property
    def ids(self) -> builtins.set[str]:
        return set(self.entries)

    @property
    def open_drafts(self) -> frozenset[str]:
        """The ids of replies seen only through drafts (no saved message yet)."""
        return frozenset(self._drafting)

    def draft(self, message_id: str) -> OpenDraft | None:
        entry = self.entries.get(message_id)
        return entry if isinstance(entry, OpenDraft) else None

    def take(self, item: records.Line, length: int) -> None:
        """Add the next line (``length`` bytes with its newline); a line breaking the rules raises."""
        number = self.lines + 1
        used = True
        if isinstance(item, Message):
            self._take_message(item)
        elif isinstance(item, records.Draft):
            used = self._take_draft(item)
        elif item.id not in self.entries:
            raise records.RecordError(f"it selects message {item.id}, which no earlier line holds")
        if used:
            self.last_used[item.id] = number
        self.lines = number
        self.offset += length
        self._tree = None
        new_leaf = isinstance(item, Message) and item.id not in self._answered
        self._leaf = item.id if new_leaf else None

    def _take_message(self, message: Message) -> None:
        existing = self.entries.get(message.id)
        if isinstance(existing, Message):
            raise records.RecordError(f"it saves message {message.id} a second time")
        if isinstance(existing, OpenDraft) and existing.parent != message.parent:
            raise records.RecordError(f"message {message.id} answers another message than its drafts")
        self._check_parent(message.parent)
        self.entries[message.id] = message  # a draft's place is kept: children stay after parents
        self._drafting.discard(message.id)
        self.last_message = message.id

    def _take_draft(self, draft: records.Draft) -> bool:
        """Add a draft's text; False for a late draft of a saved reply (ignored, not even a use)."""
        existing = self.entries.get(draft.id)
        if isinstance(existing, Message):
            return False  # the reply was saved already: its message is the reply, late drafts are moot
        if existing is None:
            self._check_parent(draft.parent)
            existing = self.entries[draft.id] = OpenDraft(draft.parent, draft.model, draft.time)
            self._drafting.add(draft.id)
        elif existing.parent != draft.parent:
            raise records.RecordError(f"draft {draft.id} changes the message it answers")
        existing.text.append(draft.text)
        existing.thinking.append(draft.thinking)
        return True

    def _check_parent(self, parent: str | None) -> None:
        if parent is not None and parent not in self.entries:
            raise records.RecordError(f"it answers message {parent}, which no earlier line holds")
        if parent is not None:
            self._answered.add(parent)

    def tree(self, hidden: Iterable[str] = (), live: Iterable[str] = ()) -> MessageTree:
        """Every message; open drafts as interrupted replies, but ``hidden`` ones (streaming here)
        left out and ``live`` ones (another kernel is writing them) marked as still being written."""
        hide = frozenset(h for h in hidden if isinstance(self.entries.get(h), OpenDraft))  # never a saved one
        writing = frozenset(w for w in live if isinstance(self.entries.get(w), OpenDraft))
        if self._tree is not None and self._tree[0] == (hide, writing):
            return self._tree[1]
        if hide:  # a reply another kernel answered is shown, whoever is writing it
            parents = {e.parent for e in self.entries.values()}
            hide = frozenset(h for h in hide if h not in parents)
        messages = [
            entry if isinstance(entry, Message) else entry.as_message(message_id, live=message_id in writing)
            for message_id, entry in self.entries.items()
            if message_id not in hide
        ]
        tree = MessageTree(messages, self.last_used)
        self._tree = ((hide, writing), tree)
        return tree

    def leaf(self, hidden: Iterable[str] = ()) -> str | None:
        """The id of the active path's last message (``None`` when empty); O(1) after an append."""
        if self._leaf is not None:
            return self._leaf
        last = self.tree(hidden).leaf()
        return last.id if last is not None else None

    def view(self, hidden: Iterable[str] = (), live: Iterable[str] = ()) -> Conversation:
        return replace(self.conversation, messages=(), tree=self.tree(hidden, live))

    def saved_messages(self) -> builtins.list[Message]:
        """The messages on their own lines (no drafts), in file order: an old file's body, upgraded."""
        return [entry for entry in self.entries.values() if isinstance(entry, Message)]
