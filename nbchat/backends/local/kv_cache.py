"""The model process's KV caches of recent prompts: a conversation's next turn encodes only what is new.

Every turn of a chat sends the whole conversation again. Re-encoding it costs
seconds per thousand tokens on a CPU, growing with every turn, so the model
process keeps the keys and values (a transformers ``DynamicCache``) of the last
few prompts with their replies, keyed by their token ids. A new prompt reuses
the entry sharing the longest common prefix with it, cut back to that prefix:
whatever diverges (an edited message, old turns dropped by truncation, another
conversation, another system prompt) is encoded again, so the output is what it
would be without the cache. Entries are evicted least recently used, beyond
``NBCHAT_QWEN_CACHE_PROMPTS`` of them or ``NBCHAT_QWEN_CACHE_MB`` in all; the
process's exit (``unload()``) frees them all. Imported only by the model process.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ENV_PROMPTS = "NBCHAT_QWEN_CACHE_PROMPTS"
ENV_MB = "NBCHAT_QWEN_CACHE_MB"
DEFAULT_PROMPTS = 4
DEFAULT_MB = 2048.0

# generate() settings that run more than one sequence, or manage a cache of their own: no reuse.
_INCOMPATIBLE = (
    "assistant_model",
    "prompt_lookup_num_tokens",
    "cache_implementation",
    "cache",
    "past_key_values",
)


@dataclass(frozen=True)
class Limits:
    """How many prompts' caches the process keeps, and how many bytes they may take in all."""

    prompts: int = DEFAULT_PROMPTS
    max_bytes: int = int(DEFAULT_MB * 2**20)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Limits:
        """The limits the environment sets; a value that is not a number says which and how to fix it."""
        prompts = _number(environ, ENV_PROMPTS, DEFAULT_PROMPTS, int)
        megabytes = _number(environ, ENV_MB, DEFAULT_MB, float)
        return cls(int(prompts), int(megabytes * 2**20))

    def describe(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "mb": round(self.max_bytes / 2**20, 3)}


def _number(environ: Mapping[str, str], name: str, default: float, kind: type) -> float:
    text = (environ.get(name) or "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = -1
    if value < 0:
        what = "a whole number" if kind is int else "a number of megabytes"
        raise ValueError(f"{name} must be {what} of at least 0 (0 turns the prompt cache off), not {text!r}.")
    return float(value)


@dataclass(eq=False)
class _Entry:
    ids: list[int]  # the tokens whose keys and values ``cache`` holds, in order
    cache: Any
    nbytes: int


class PromptCaches:
    """The process's cached prompts, most recently used last; used by its main thread only."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._entries: list[_Entry] = []

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, ids: Sequence[int], model: Any) -> tuple[Any, int]:
        """A cache holding the first ``n`` tokens of ``ids``, and ``n`` (0: a new, empty cache).

        ``n`` stops at least one token short of the prompt: generate must feed a token to have
        logits. An entry reused for most of its length (the same conversation, one turn on) is
        handed over and cut back; one sharing only a little (another conversation with the same
        system prompt) stays for its own conversation, and the shared part is copied.
        """
        best, reused = None, 0
        for entry in self._entries:
            shared = min(_common_prefix(entry.ids, ids), len(ids) - 1)
            if shared > 0 and shared >= reused:  # a tie goes to the most recent
                best, reused = entry, shared
        if best is None:
            return new_cache(model), 0
        if 2 * reused >= len(best.ids):
            self._entries.remove(best)
            cache = best.cache
            _crop(cache, reused)
            return cache, reused
        return _prefix_copy(best.cache, reused, model), reused

    def keep(self, ids: list[int], cache: Any) -> None:
        """Remember ``cache``, which holds the keys and values of ``ids``; then evict to the limits."""
        if self.limits.prompts <= 0 or len(ids) != cache.get_seq_length() or not reusable(cache):
            return
        nbytes = cache_bytes(cache)
        if nbytes > self.limits.max_bytes:
            return
        # An entry whose tokens all begin the new one is of no more use: the new one covers it.
        self._entries = [e for e in self._entries if _common_prefix(e.ids, ids) < len(e.ids)]
        self._entries.append(_Entry(ids, cache, nbytes))
        while len(self._entries) > self.limits.prompts or self.nbytes > self.limits.max_bytes:
            del self._entries[0]

    def clear(self) -> None:
        self._entries.clear()


def usable(kwargs: Mapping[str, Any]) -> bool:
    """Whether a generate with these settings can start from a cached prompt (one sequence, our cache)."""
    if any(kwargs.get(key) is not None for key in _INCOMPATIBLE) or kwargs.get("use_cache") is False:
        return False
    return all((kwargs.get(key) or 1) == 1 for key in ("num_beams", "num_return_sequences"))


def cache_keyword(model: Any) -> str:
    """The name generate() takes a cache by: ``cache`` in transformers 5.x, ``past_key_values`` before."""
    parameters = inspect.signature(model.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56
        return DynamicCache()


def reusable(cache: Any) -> bool:
    """Only plain full-attention layers can be cut back to any prefix (a sliding window forgets)."""
    layers: list[Any] = getattr(cache, "layers", None) or []
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def cache_bytes(cache: Any) -> int:
    total = 0
    for layer in cache.layers:
        for tensor in (layer.keys, layer.values):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total


def _crop(cache: Any, length: int) -> None:
    surplus = cache.get_seq_length() - length
    if surplus > 0:
        cache.crop(-surplus)  # a negative count removes that many tokens, in transformers 4.x and 5.x


def _prefix_copy(cache: Any, length: int, model: Any) -> Any:
    copy = new_cache(model)
    for index, layer in enumerate(cache.layers):
        copy.update(layer.keys[..., :length, :].clone(), layer.values[..., :length, :].clone(), index)
    return copy


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case, one comparison in C
        return n
    low, high = 0, n  # a[:low] == b[:low] and a[:high] != b[:high]: bisect on slices, still in C
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low
