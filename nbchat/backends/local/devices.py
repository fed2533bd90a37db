"""Giving device memory back, in the kernel and in a model process alike."""

from __future__ import annotations

import sys


def empty_device_caches() -> None:
    """Empty the cuda/mps allocator caches, if torch is in use here (never imports it just for that)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()
