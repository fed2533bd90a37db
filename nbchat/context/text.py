"""Small text helpers every summary uses: a char budget, Markdown fences, safe one-liners."""

from __future__ import annotations

import re

_BACKTICKS = re.compile(r"`{3,}")
CUT_MARK = "…"


class Lines:
    """Summary lines under a character budget; what overflows is cut with a note, never kept.

    Appends are atomic under the GIL, so a caller whose worker timed out can still read
    what was written so far.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.parts: list[str] = []
        self.size = 0
        self.cut = False

    def add(self, text: str) -> bool:
        """Add a line (cut to what fits); False once the budget is spent."""
        room = self.budget - self.size - 1
        if self.cut or room <= 0:
            self.cut = True
            return False
        if len(text) > room:
            text, self.cut = text[: max(0, room - len(CUT_MARK))] + CUT_MARK, True
        self.parts.append(text)
        self.size += len(text) + 1
        return not self.cut

    def text(self) -> str:
        return "\n".join(list(self.parts))


def fenced(text: str, language: str = "") -> str:
    """``text`` in a Markdown code fence longer than any backtick run inside it."""
    longest = max((len(m.group()) for m in _BACKTICKS.finditer(text)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def one_line(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: max(0, limit - 1)] + CUT_MARK


def cut_tail(text: str, limit: int) -> str:
    """The end of ``text`` (where a traceback's cause is), at most about ``limit`` characters."""
    return text if len(text) <= limit else CUT_MARK + "\n" + text[-limit:]


def cut_head(text: str, limit: int) -> str:
    """The start of ``text``, at most about ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else text[:limit] + "\n" + CUT_MARK


def count(number: int) -> str:
    return f"{number:,}"


def counted(number: int, singular: str, plural: str | None = None) -> str:
    """ "1 row", "2 rows", "1,000 entries" (``plural`` when adding "s" is wrong)."""
    noun = singular if number == 1 else (plural or singular + "s")
    return f"{number:,} {noun}"
