"""Encryption figures for encrypted accounts (issue 15), measured in one run on this machine.

    .venv/bin/python bench/crypto.py [--json FILE]

- ``login_kdf_s``: median time of ``crypto.unwrap_data_key`` with ``KdfParams.default()``
  (scrypt n=2**16, r=8, p=1, then AES-GCM): what encryption adds to a login; target between
  0.1 and 0.5 s (memory-hard enough to slow a guesser, fast enough for a person).
- ``encrypt_line_us`` / ``decrypt_line_us``: median microseconds to seal / open one store line
  (a real ``records.message_line`` of a 60-word message, about 600 bytes) with ``LineCipher``;
  compare with an fsynced append, which is milliseconds.
- ``blind_word_us``: microseconds per blind-index token (HMAC-SHA256), what indexing a word costs.
- ``sealed_line_ratio``: bytes of the token ÷ bytes of the clear line (nonce, tag, base64).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

from common import Figures, figures_main

from nbchat import Message, crypto, records

LOGINS = 5
LINES = 2_000
ROUNDS = 7


def sample_line() -> bytes:
    rng = random.Random(3)  # noqa: S311 -- made-up text, fixed by the seed
    words = " ".join("".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 9))) for _ in range(60))
    return records.message_line(Message("user", words))


def per_item_us(work: Callable[[int], object]) -> float:
    """Median over ``ROUNDS`` of the mean microseconds per call of ``work(i)``, i in range(LINES)."""
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for i in range(LINES):
            work(i)
        rounds.append((time.perf_counter() - started) / LINES * 1e6)
    return statistics.median(rounds)


def measure() -> Figures:
    key = crypto.new_data_key()
    record = crypto.wrap_data_key(key, "correct horse", account="alice")
    logins = []
    for _ in range(LOGINS):
        started = time.perf_counter()
        assert crypto.unwrap_data_key(record, "correct horse", account="alice") == key
        logins.append(time.perf_counter() - started)

    cipher = crypto.LineCipher(key)
    line = sample_line()
    tokens = [cipher.seal(line, conversation_id="c1", position=i) for i in range(LINES)]
    words = [f"word{i}" for i in range(LINES)]
    return {
        "login_kdf_s": statistics.median(logins),
        "encrypt_line_us": per_item_us(lambda i: cipher.seal(line, conversation_id="c1", position=i)),
        "decrypt_line_us": per_item_us(lambda i: cipher.open(tokens[i], conversation_id="c1", position=i)),
        "blind_word_us": per_item_us(lambda i: cipher.blind(words[i])),
        "sealed_line_ratio": len(tokens[0]) / len(line),
    }


def main() -> int:
    return figures_main(__doc__, lambda args: measure(), digits=3)


if __name__ == "__main__":
    raise SystemExit(main())
