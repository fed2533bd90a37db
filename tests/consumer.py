"""A local model's reply iterated in a thread of its own (as the session, or user code, would)."""

from __future__ import annotations

import contextlib
import threading
import time

from nbchat.backends.transformers import TransformersReply
from nbchat.types import Chunk


class Consumer:
    """Iterates ``reply`` in a thread of its own, recording every chunk."""

    def __init__(self, reply: TransformersReply) -> None:
        self.reply = reply
        self.chunks: list[Chunk] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            for chunk in self.reply:
                self.chunks.append(chunk)

    def stop(self) -> float:
        """Cancel the reply; return how many seconds it took to end (inf: it did not within 30 s)."""
        asked = time.monotonic()
        self.reply.cancel()
        self.thread.join(30)
        return time.monotonic() - asked if not self.thread.is_alive() else float("inf")
