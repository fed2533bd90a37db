"""Finding ``@name`` mentions in a prompt, the way a person writing Markdown means them.

A mention is ``@`` then an identifier or a dotted attribute path (``@df``, ``@model.coef_``).
Not mentions: e-mail addresses (``bob@example.com``: the ``@`` follows a letter), anything in
inline code or fenced code (a decorator in a pasted snippet), ``@@name`` (the way to write a
literal ``@name``, sent to the model as ``@name``), and Python keywords (``@if`` names no
variable). Code is found as CommonMark finds it: a fence of three or more backticks or tildes
at a line's start runs to its closing fence (or the end), and a run of N backticks opens an
inline code span only if a run of exactly N closes it.
"""

from __future__ import annotations

import bisect
import keyword
import re

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_TICKS = re.compile(r"`+")
# "@" not after a word character, "@" or "." (e-mails, "@@", "x.@y"), then a dotted identifier.
_MENTION = re.compile(r"(?<![\w@.])@([^\W\d]\w*(?:\.[^\W\d]\w*)*)")
_ESCAPED = re.compile(r"(?<![\w@.])@@(?=[^\W\d])")


def _code_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) offsets of fenced blocks and inline code spans in ``text``."""
    spans: list[tuple[int, int]] = []
    prose: list[tuple[int, int]] = []  # the stretches between fenced blocks
    offset, fence, fence_start, prose_start = 0, "", 0, 0
    for line in text.splitlines(keepends=True):
        match = _FENCE.match(line)
        if not fence and match and not (match.group(1)[0] == "`" and "`" in line[match.end() :]):
            fence, fence_start = match.group(1), offset
            prose.append((prose_start, offset))
        elif (
            fence
            and match
            and match.group(1)[0] == fence[0]
            and len(match.group(1)) >= len(fence)
            and not line[match.end() :].strip()
        ):
            spans.append((fence_start, offset + len(line)))
            fence, prose_start = "", offset + len(line)
        offset += len(line)
    if fence:
        spans.append((fence_start, len(text)))
    else:
        prose.append((prose_start, len(text)))
    for start, end in prose:
        spans.extend(_inline_code(text, start, end))
    return spans


def _inline_code(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    runs = list(_TICKS.finditer(text, start, end))
    by_length: dict[int, list[int]] = {}
    for index, run in enumerate(runs):
        by_length.setdefault(len(run.group()), []).append(index)
    index = 0
    while index < len(runs):
        opening = runs[index]
        same = by_length[len(opening.group())]
        after = bisect.bisect_right(same, index)  # the first later run of exactly this length closes
        if after == len(same):  # an unmatched run is literal backticks
            index += 1
            continue
        closing = same[after]
        spans.append((opening.start(), runs[closing].end()))
        index = closing + 1
    return spans


def _outside_code(text: str) -> list[tuple[int, int]]:
    """The (start, end) stretches of ``text`` that are not code."""
    stretches, position = [], 0
    for start, end in sorted(_code_spans(text)):
        if start > position:
            stretches.append((position, start))
        position = max(position, end)
    stretches.append((position, len(text)))
    return stretches


def mention_spans(prompt: str) -> list[tuple[int, int]]:
    """The (start, end) offsets of every real mention in ``prompt``, "@" included, in order.

    Every occurrence counts (``find_mentions`` keeps each name once): the ``%chat`` magic uses
    the offsets to tell the user's own mentions from those a filled-in ``{value}`` brought.
    """
    spans = []
    for start, end in _outside_code(prompt):
        for match in _MENTION.finditer(prompt, start, end):
            if not keyword.iskeyword(match.group(1).split(".", 1)[0]):
                spans.append(match.span())
    return spans


def find_mentions(prompt: str) -> list[str]:
    """The names ``prompt`` mentions (without "@"), in order of first appearance, each once."""
    return list(dict.fromkeys(prompt[start + 1 : end] for start, end in mention_spans(prompt)))


def unescape_mentions(prompt: str) -> str:
    """``@@name`` → ``@name`` outside code: the text the model is sent (code stays as written)."""
    pieces, position = [], 0
    for start, end in _outside_code(prompt):
        pieces.append(prompt[position:start])
        pieces.append(_ESCAPED.sub("@", prompt[start:end]))
        position = end
    pieces.append(prompt[position:])
    return "".join(pieces)
