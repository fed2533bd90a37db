"""Which drafted replies are still being written, by any kernel: a lock the OS drops at death.

A reply's drafts are its text so far. A reader in another kernel must tell a reply still
streaming from one whose kernel died; both are drafts with no saved message. So the writing
store holds an exclusive ``flock`` on a small lease file, ``.live/<message id>``, from the
first draft until the reply's message is saved (or the store closes). The kernel's death
releases the lock at once, whatever killed it, so no clock, heartbeat or timeout is needed:
a reader that can take a shared lock knows the writer is gone.

The lease files hold nothing (the ids in their names are clear on disk anyway). A writer
removes its own; a killed writer's are swept by the next store of that user, once they are
old enough that no writer can be between creating one and locking it. Where ``fcntl`` is
missing (Windows), every draft reads as interrupted, as before leases existed.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from pathlib import Path

from nbchat.files import DIR_MODE, FILE_MODE

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LEASE_DIR = ".live"
#: A lease file this old with no lock on it is a dead writer's: the next store removes it.
STALE_LEASE_S = 60.0


class ReplyLeases:
    """The leases of one user's conversation folder: this store's own, and a check of others'."""

    def __init__(self, conversations_dir: Path) -> None:
        self._dir = conversations_dir / LEASE_DIR
        self._held: dict[str, int] = {}  # message id -> the descriptor holding its lock
        # A store dropped without close() lets its locks go too: nobody can be writing then.
        weakref.finalize(self, _close_all, self._held)

    def hold(self, message_id: str) -> None:
        """Take the lease of a reply this store starts drafting (kept until ``release``).

        A lease that cannot be taken (a read-only or full disk) is left: the drafts still save
        the text, and other readers show the reply as interrupted, which is all they could
        tell before.
        """
        if fcntl is None or message_id in self._held:
            return
        try:
            os.makedirs(self._dir, mode=DIR_MODE, exist_ok=True)
            descriptor = os.open(self._dir / message_id, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError:
            return
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            return
        self._held[message_id] = descriptor

    def release(self, message_id: str) -> None:
        """The reply is saved (or given up): drop its lease and its file."""
        descriptor = self._held.pop(message_id, None)
        if descriptor is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._dir / message_id)
        os.close(descriptor)

    def release_all(self) -> None:
        for message_id in list(self._held):
            self.release(message_id)

    def is_live(self, message_id: str) -> bool:
        """Whether some process (this one included) holds the lease of ``message_id`` now."""
        if message_id in self._held:
            return True
        if fcntl is None:
            return False
        try:
            descriptor = os.open(self._dir / message_id, os.O_RDONLY)
        except OSError:
            return False  # no lease: written before leases, or its writer finished or was swept
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(descriptor)
        return False

    def sweep(self) -> None:
        """Remove the lease files of writers that died (unlocked and older than ``STALE_LEASE_S``)."""
        if fcntl is None:
            return
        try:
            names = os.listdir(self._dir)
        except OSError:
            return
        cutoff = time.time() - STALE_LEASE_S
        for name in names:
            if name in self._held:
                continue
            path = self._dir / name
            with contextlib.suppress(OSError):
                if os.stat(path).st_mtime < cutoff and not self.is_live(name):
                    os.unlink(path)


def _close_all(held: dict[str, int]) -> None:
    for descriptor in held.values():
        with contextlib.suppress(OSError):
            os.close(descriptor)
    held.clear()
