"""Crash-safe, private file primitives shared by the account and conversation stores.

Every whole-file write goes temp file → fsync → ``os.replace`` → fsync of the
directory, so a reader sees the old file or the new one, never half of one.
Directories are 0700 and files 0600: chats and password hashes are private.

Every ``OSError`` (a full disk, a read-only mount, an I/O error...) leaves
here as a ``StorageFailed`` (``StorageFull`` for a full disk) that names the
file and says what to do; a failed write leaves the file as it was.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from nbchat.errors import StorageFailed, StorageFull, StoreBusy

DIR_MODE = 0o700
FILE_MODE = 0o600
LOCK_TIMEOUT_S = 30.0

_FULL = {errno.ENOSPC, errno.EDQUOT}
_CAUSES = {
    errno.ENOSPC: "the disk holding it is full",
    errno.EDQUOT: "your disk quota there is used up",
    errno.EROFS: "it is on a read-only filesystem",
    errno.EACCES: "permission was denied",
    errno.EPERM: "the operation was not permitted",
    errno.EIO: "the disk reported an input/output error",
    errno.ENOENT: "it (or its folder) does not exist",
    errno.ENOTDIR: "part of its path is a file, not a folder",
    errno.EEXIST: "a file of that name is in the way",
    errno.EMFILE: "this process has too many files open",
    errno.ENFILE: "the system has too many files open",
}
_REMEDIES = {
    errno.ENOSPC: "Free some space there and try again",
    errno.EDQUOT: "Free some space there (or ask for a larger quota) and try again",
    errno.EROFS: "Set NBCHAT_DATA_DIR to a writable directory, or ask an administrator to make it writable",
    errno.EACCES: "Make sure you own it and may write there, or set NBCHAT_DATA_DIR to a directory you own",
    errno.EPERM: "Make sure you own it and may write there, or set NBCHAT_DATA_DIR to a directory you own",
    errno.EIO: "The disk may be failing: copy the data dir somewhere safe and tell your administrator",
    errno.EMFILE: "Close some notebooks or files and try again",
    errno.ENFILE: "Close some notebooks or files and try again",
}


def storage_error(exc: OSError, path: Path, action: str, *, writing: bool = True) -> StorageFailed:
    """The ``StorageFailed`` that tells a user why ``action`` on ``path`` failed and what to do.

    ``writing``: the action was a change, which this module makes all-or-nothing,
    so the message can promise that nothing saved before was lost.
    """
    if isinstance(exc, StorageFailed):
        return exc
    code = exc.errno
    cause = _CAUSES.get(code or -1) or (exc.strerror or str(exc) or type(exc).__name__)
    remedy = _REMEDIES.get(code or -1, "Check the disk and the folder's permissions, then try again")
    kept = "; nothing saved before was lost" if writing else ""
    message = f"Could not {action} {path}: {cause}. {remedy}{kept}."
    kind = StorageFull if code in _FULL else StorageFailed
    return kind(message, path, code)


@contextlib.contextmanager
def os_errors(path: Path, action: str, *, writing: bool = True) -> Iterator[None]:
    """Turn any ``OSError`` raised inside into the ``StorageFailed`` of ``storage_error``."""
    try:
        yield
    except OSError as exc:
        raise storage_error(exc, path, action, writing=writing) from exc


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as 0700 if missing; take group and other bits off if it exists.

    An existing folder is only ever tightened: one its owner made read-only
    (0500) stays read-only, and is still readable.
    """
    with os_errors(path, "create the folder"):
        try:
            path.mkdir(mode=DIR_MODE, parents=True)
            created = True
        except FileExistsError:
            if not path.is_dir():
                raise
            created = False
        mode = path.stat().st_mode & 0o777
        wanted = DIR_MODE if created else mode & DIR_MODE  # created: whatever the umask took away
        if mode != wanted:
            path.chmod(wanted)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    with os_errors(path, "save the changes to the folder"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content.

    The caller holds the lock that guards ``path``; so any temp file of ``path``
    still present was left by a writer that died, and is removed first. A
    failure (a full disk) leaves the old file and no temp file behind.
    """
    prefix = f".{path.name}."
    with os_errors(path, "save"):
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
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    fsync_dir(path.parent)


def append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` in one write and fsync it: cost independent of the file's length.

    A failed write (a full disk can accept half of it) is cut back to the old
    length, so the file is as it was and nothing half-written is left to read.
    """
    with os_errors(path, "save to"):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            size = os.fstat(fd).st_size  # the caller's lock keeps other writers out
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                _touch(fd)
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):  # if even this fails, readers drop the torn line
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


def truncate(path: Path, length: int) -> None:
    """Cut ``path`` back to ``length`` bytes (drop a torn last line)."""
    with os_errors(path, "repair"):
        os.truncate(path, length)


def _touch(fd: int) -> None:
    """Stamp the modification time from the precise clock.

    Filesystems stamp files from a coarse clock (a few ms), so two files
    changed in quick succession can tie; newest-first listings rely on mtime.
    """
    now = time.time_ns()
    os.utime(fd, ns=(now, now))


@contextlib.contextmanager
def locked(lock_path: Path, what: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold a cross-process lock on ``lock_path`` (released by the OS if the process dies).

    The lock file is created on first use, so a full or read-only disk refuses
    the lock itself: that is a ``StorageFailed`` naming the lock file.
    """
    with try_locked(lock_path, what, timeout) as refused:
        if refused is not None:
            raise refused
        yield


@contextlib.contextmanager
def try_locked(lock_path: Path, what: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[StorageFailed | None]:
    """Hold the lock if the disk lets us create it; yield ``None`` if held, else why not.

    For readers, which need no lock to read safely (see ``ConversationStore``)
    and so still work on a read-only data dir. Another process holding the
    lock too long is still ``StoreBusy``.
    """
    lock = FileLock(lock_path, mode=FILE_MODE, timeout=timeout)
    refused: StorageFailed | None = None
    try:
        lock.acquire()
    except Timeout:
        raise StoreBusy(
            f"{what} stayed locked by another process for {timeout:.0f} s "
            f"(lock file {lock_path}). If no other kernel is writing, try again."
        ) from None
    except OSError as exc:
        refused = storage_error(exc, lock_path, f"lock {what[:1].lower()}{what[1:]} with the lock file")
    if refused is not None:
        yield refused
        return
    try:
        yield None
    finally:
        lock.release()
