"""Real small filesystems for the full-disk and read-only tests: a 2 MiB tmpfs, mounted as root.

Mounting needs root (these machines and CI run as root); elsewhere the tests that need a
disk of their own are skipped with that reason, never run against a fake.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path


def mount_small_disk(disk: Path, options: str = "size=2m,mode=0700") -> Path:
    """Mount a tmpfs at ``disk`` (created here); skips the calling test where that is impossible."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return disk


def unmount(disk: Path) -> None:
    if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(disk)], check=True)  # still busy: detach it anyway


def remount_read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Write one file until the disk has not a byte left; delete it to give the space back.

    tmpfs hands out whole 4 KiB pages: a file whose last page has room still takes a few
    bytes more, so tests that must fail to write write more than a page.
    """
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler
