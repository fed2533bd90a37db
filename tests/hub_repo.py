"""A tiny Qwen3 served by a loopback Hugging Face hub, with this process's environment pointed at it.

The model process a load starts inherits ``HF_ENDPOINT`` and ``HF_HUB_CACHE``, so it downloads
the repo from the hub into an empty cache exactly as a first use of ``qwen3`` does.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbchat.testing.hub_server import HubTestServer


def repo_bytes(checkpoint: Path) -> int:
    """What downloading the checkpoint's repo fetches, in bytes: every file in it."""
    return sum(path.stat().st_size for path in checkpoint.iterdir())


@contextlib.contextmanager
def serving(
    checkpoint: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, *, bytes_per_s: float | None = None
) -> Iterator[tuple[HubTestServer, str]]:
    """The hub serving ``checkpoint`` as a new repo (its id yielded), the environment set, ``cache`` empty."""
    repo = f"tiny/Qwen3-{uuid.uuid4().hex[:8]}"
    with HubTestServer() as hub:
        hub.add_repo(repo, checkpoint)
        hub.bytes_per_s = bytes_per_s
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield hub, repo
