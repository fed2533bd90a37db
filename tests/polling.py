"""Waiting for something another thread or process does, without a fixed sleep."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], seconds: float = 3.0, interval: float = 0.01) -> bool:
    """Return True as soon as ``condition()`` holds; fail the test if it still does not after ``seconds``.

    A wait that times out is always a failure: a test can never go on as if
    the thing it waited for had happened.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    if condition():
        return True
    try:
        what = inspect.getsource(condition).strip()
    except (OSError, TypeError):
        what = repr(condition)
    raise AssertionError(f"still not true after {seconds} s: {what}")
