"""The figures a server reports about a reply (token counts, durations, speeds), checked where read.

A server is never trusted with a number: a wrong type, a negative, fractional, non-finite or
absurd value (``1e400`` tokens, a duration of ``1e-320`` s) is dropped, so a reply is never
lost over a statistic and no nonsense is shown or saved.
"""

from __future__ import annotations

import math
from dataclasses import replace

from nbchat.types import GenerationStats

# Beyond these a statistic from a server is nonsense (no context holds 100M tokens; nothing
# generates a million tokens a second), and it is dropped rather than shown or saved.
MAX_TOKEN_COUNT = 100_000_000
MAX_TOKENS_PER_S = 1_000_000.0


def with_estimate(stats: GenerationStats, streamed: int) -> GenerationStats:
    """``stats`` as they are if the server counted the tokens, else with ``streamed`` as the estimate."""
    if stats.completion_tokens is not None or not streamed:
        return stats
    # The speed is the server's own if it said one, else this side's clock over the estimate.
    return replace(stats, completion_tokens=min(streamed, MAX_TOKEN_COUNT), tokens_estimated=True)


def token_count(value: object) -> int | None:
    """A token count from a server: a whole number from 0 to MAX_TOKEN_COUNT, else None (dropped)."""
    return whole_number(value, MAX_TOKEN_COUNT)


def whole_number(value: object, maximum: int) -> int | None:
    """A count from a server: a whole number from 0 to ``maximum``, else None (dropped).

    ``12.0`` counts as 12; a bool, a string, a list, a negative, fractional or non-finite number
    does not count at all.
    """
    if isinstance(value, float) and value.is_integer():  # False for inf and nan
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum:
        return value
    return None


def duration_s(value: object, unit_s: float = 1.0) -> float | None:
    """A duration from a server, in seconds (``unit_s``: 1e-9 for nanoseconds): finite and > 0, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value) * unit_s
    except OverflowError:  # an int too large for a float
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def tokens_per_s(value: object) -> float | None:
    """A speed a server states: a number above 0 and at most MAX_TOKENS_PER_S, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        speed = float(value)
    except OverflowError:
        return None
    return speed if math.isfinite(speed) and 0 < speed <= MAX_TOKENS_PER_S else None


def speed(tokens: int | None, seconds: float | None) -> float | None:
    """Tokens per second from a count and a duration (a tiny duration gives no speed, not infinity)."""
    if not tokens or seconds is None:
        return None
    return tokens_per_s(tokens / seconds)
