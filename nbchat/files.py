"""Crash-safe, private file primitives shared by the account and conversation stores.

Every whole-file write goes temp file → fsync → ``os.replace`` → fsync of the
directory, so a reader sees the old file or the new one, never half of one.
Directories are 0700 and files 0600: chats and password hashes are private.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from nbchat.errors import StoreBusy

DIR_MODE = 0o700
FILE_MODE = 0o600
LOCK_TIMEOUT_S = 30.0


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as 0700 if missing; tighten it if it exists."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        path.chmod(DIR_MODE)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content.

    The caller holds the lock that guards ``path``; so any temp file of ``path``
    still present was left by a writer that died, and is removed first.
    """
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            _touch(handle.fileno())
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` in one write and fsync it: cost independent of the file's length."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        _touch(fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def _touch(fd: int) -> None:
    """Stamp the modification time from the precise clock.

    Filesystems stamp files from a coarse clock (a few ms), so two files
    changed in quick succession can tie; newest-first listings rely on mtime.
    """
    now = time.time_ns()
    os.utime(fd, ns=(now, now))


@contextlib.contextmanager
def locked(lock_path: Path, what: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold a cross-process lock on ``lock_path`` (released by the OS if the process dies)."""
    lock = FileLock(lock_path, mode=FILE_MODE, timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise StoreBusy(
            f"{what} stayed locked by another process for {timeout:.0f} s "
            f"(lock file {lock_path}). If no other kernel is writing, try again."
        ) from None
    try:
        yield
    finally:
        lock.release()
