"""Plain, recorded functions from each on-disk format version of a conversation to the next.

A file is never rewritten just because nbchat was upgraded: an older file is read through
these functions, line by line, and stays as it is on disk until nbchat writes something the
older format cannot hold (then the whole file is rewritten once, at the newest version). A
file from a *newer* nbchat is refused untouched (``records``). Each step is a pure function
of one decoded line, so every step is tested on its own and old data stays readable for good
(the way ``simonw/llm`` keeps its migrations).

Versions:

1. the first format: a header (``version``, ``id``, ``title``, ``created``, ``updated``,
   ``settings``), then messages (``id``, ``role``, ``content``, ``thinking``, ``time``,
   ``model``, ``stats``).
2. a user message may carry ``context``: a list of ``{kind, name, label, summary}`` (what
   ``@df``, recent cells or the last error attached). Nothing else changed, so version 1
   lines are version 2 lines without ``context``.
3. conversations are trees (regenerate, edit): every message names its ``parent`` (``null``
   for a first question), and two more kinds of line may follow the header: ``select`` (the
   user switched to a branch) and ``draft`` (a streaming reply's text so far, so that it
   survives a dead kernel). A version 2 file is one branch: each message's parent is the
   message on the line before it.

A message step is given the decoded line and the id of the message on the line before it
(``None`` for the first), which is all that ever needs to be known to upgrade a line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Record = dict[str, Any]


def _header_1_to_2(header: Record) -> Record:
    return {**header, "version": 2}


def _message_1_to_2(message: Record, previous: str | None) -> Record:
    return message  # version 1 messages have no context; version 2 makes it optional


def _header_2_to_3(header: Record) -> Record:
    return {**header, "version": 3}


def _message_2_to_3(message: Record, previous: str | None) -> Record:
    return {**message, "parent": previous}  # one branch: each message follows the line before


HeaderStep = Callable[[Record], Record]
MessageStep = Callable[[Record, "str | None"], Record]

#: (header step, message step) from version N to N + 1, by N.
STEPS: dict[int, tuple[HeaderStep, MessageStep]] = {
    1: (_header_1_to_2, _message_1_to_2),
    2: (_header_2_to_3, _message_2_to_3),
}
#: The version nbchat writes: one past the last step.
LATEST = max(STEPS) + 1


def upgrade_header(header: Record, version: int) -> Record:
    """A decoded header of ``version`` as the latest version reads it."""
    for step in range(version, LATEST):
        header = STEPS[step][0](header)
    return header


def upgrade_message(message: Record, version: int, previous: str | None = None) -> Record:
    """A decoded message line of a file of ``version`` as the latest version reads it.

    ``previous`` is the id of the message on the line before (``None`` for the first).
    """
    for step in range(version, LATEST):
        message = STEPS[step][1](message, previous)
    return message
