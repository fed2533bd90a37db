"""A conversation's messages as a tree: regenerating or editing starts a branch, nothing is lost.

Every message names its ``parent`` (``None`` for a first question); a regenerated reply is
a second child of the same question, an edited question a second child of the message before
it. The path shown, and sent as history, is the **active path**: from the root, at every fork
it takes the branch used most recently (a message appended there, or the user switching to
it), down to a leaf. One rule, so every reader (this kernel, another kernel, a reopened file)
derives the same path from the same lines, and a file stays append-only: switching branches
appends a small record that makes the chosen message the most recently used.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

from nbchat.errors import InvalidValue, MessageNotFound
from nbchat.types import Message


class MessageTree:
    """Every message of a conversation (all branches), in the order they were saved.

    ``last_used`` maps a message id to when it was last used (any increasing number: the
    store gives line numbers); a message not in it was last used when it was saved (its
    position). Messages must come after their parents, as in every file nbchat writes.
    """

    def __init__(self, messages: Sequence[Message], last_used: Mapping[str, int] | None = None) -> None:
        self.messages: tuple[Message, ...] = tuple(messages)
        self._by_id: dict[str, Message] = {}
        self._children: dict[str | None, list[Message]] = {None: []}
        for message in self.messages:
            if message.id in self._by_id:
                raise InvalidValue(f"Message {message.id} appears twice in one conversation.")
            if message.parent is not None and message.parent not in self._by_id:
                raise InvalidValue(
                    f"Message {message.id} answers {message.parent}, which is not an earlier message."
                )
            self._by_id[message.id] = message
            self._children.setdefault(message.parent, []).append(message)
        used = dict(last_used or {})
        # The most recent use anywhere below each message: one pass from the newest up.
        self._latest: dict[str, int] = {}
        for position in range(len(self.messages) - 1, -1, -1):
            message = self.messages[position]
            mine = max(used.get(message.id, position), self._latest.get(message.id, position))
            self._latest[message.id] = mine
            if message.parent is not None:
                self._latest[message.parent] = max(self._latest.get(message.parent, -1), mine)
        self._path: tuple[Message, ...] | None = None

    @classmethod
    def linear(cls, messages: Sequence[Message]) -> MessageTree:
        """A single branch: each message answers the one before it (a list with no parents given)."""
        chained, previous = [], None
        for message in messages:
            if message.parent != previous:
                message = replace(message, parent=previous)
            chained.append(message)
            previous = message.id
        return cls(chained)

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._by_id

    def get(self, message_id: str) -> Message:
        try:
            return self._by_id[message_id]
        except (KeyError, TypeError):
            raise MessageNotFound(f"This conversation has no message with id {message_id!r}.") from None

    def children(self, message_id: str | None) -> tuple[Message, ...]:
        """The messages answering ``message_id`` (``None``: the first questions), oldest first."""
        if message_id is not None:
            self.get(message_id)
        return tuple(self._children.get(message_id, ()))

    def alternatives(self, message_id: str) -> tuple[Message, ...]:
        """The message and its alternatives (regenerated replies, edited questions), oldest first."""
        return self.children(self.get(message_id).parent)

    def path(self) -> tuple[Message, ...]:
        """The active path: at every fork the branch used most recently, root to leaf."""
        if self._path is None:
            self._path = self._descend([], None)
        return self._path

    def path_through(self, message_id: str) -> tuple[Message, ...]:
        """The path that shows ``message_id``: its ancestors, it, then the most recent branch below."""
        ancestors = []
        message: Message | None = self.get(message_id)
        while message is not None:
            ancestors.append(message)
            message = self._by_id[message.parent] if message.parent is not None else None
        ancestors.reverse()
        return self._descend(ancestors[:-1], ancestors[-1].id, start=ancestors[-1])

    def leaf(self) -> Message | None:
        """The last message of the active path (``None`` for an empty conversation)."""
        path = self.path()
        return path[-1] if path else None

    def _descend(
        self, path: list[Message], parent: str | None, start: Message | None = None
    ) -> tuple[Message, ...]:
        if start is not None:
            path.append(start)
        while True:
            below = self._children.get(parent)
            if not below:
                return tuple(path)
            chosen = max(below, key=lambda m: self._latest[m.id])  # ties: the earliest, never happens
            path.append(chosen)
            parent = chosen.id
