"""Keys and authenticated encryption for an encrypted account's files (issue 15).

Users of one Jupyter server run code as the same OS user, so file permissions cannot keep
them out of each other's data dirs; only a key they do not have can. This module is the whole
of nbchat's cryptography; the store and accounts call it and never touch a cipher themselves.

The contract::

    params = KdfParams.default()                    # scrypt n=2**16, r=8, p=1, 32-byte output
    key = new_data_key()                            # 32 random bytes: the account's data key
    record = wrap_data_key(key, password, account="alice", params=params)
    # -> {"version": 1, "kdf": "scrypt", "n": 65536, "r": 8, "p": 1, "salt": b64,
    #     "cipher": "AES-256-GCM", "nonce": b64, "wrapped": b64}   (JSON-able; base64 standard)
    unwrap_data_key(record, password, account="alice") -> bytes
    rewrap_data_key(record, old_password, new_password, account="alice") -> dict  # same key, new salt
    cipher = LineCipher(key)
    token = cipher.seal(b"...", conversation_id="c1", position=7) -> str   # URL-safe base64
    cipher.open(token, conversation_id="c1", position=7) -> bytes
    cipher.blind("word") -> str                     # keyed blind-index token for search

Errors (``nbchat.errors``): ``KeyUnlockFailed`` when the password is wrong, the record was
tampered with or belongs to another account (one error for all three: the record must not
say which); its subclass ``KeyRecordInvalid`` when the record is malformed (a missing field,
bad base64, an unknown version, kdf or cipher, parameters out of bounds); ``DamagedLine`` when
a token does not open (damaged, truncated, or moved to another file or position).

Choices and why:

- **scrypt** (``hashlib.scrypt``, the standard library: no new dependency for the KDF) with
  ``n=2**16, r=8, p=1``: 64 MiB of memory per derivation (``128 * n * r`` bytes), which makes a
  GPU or ASIC guesser pay in memory, not just in cycles. Measured on the 2-core build machine:
  n=2**15 0.09 s, **n=2**16 0.19 s**, n=2**17 0.38 s per derivation. 2**16 sits in the middle
  of the 0.1-0.5 s login budget, so a machine 2.5 times slower (or a busy one) still logs in
  within half a second; 2**17 would leave no headroom. ``bench/crypto.py`` measures it
  (``login_kdf_s``).
- **Bounds before work**: a record's ``n`` must be a power of two in [2**10, 2**20], ``r`` in
  [1, 32], ``p`` in [1, 16], and ``128 * n * r`` at most 256 MiB, ``n * r * p`` at most 2**22
  (8 times the default's work), all checked before scrypt runs: a record with ``n=2**40`` is
  refused at once instead of hanging or raising ``MemoryError``. Weak parameters in a record
  gain an attacker nothing: they change the derived key, and the unwrap fails.
- **Wrapping**: the data key is sealed with AES-256-GCM under the scrypt output; the AAD is a
  fixed label, the account's lower-cased name (names are case-insensitive, as in
  ``accounts.py``) and the KDF parameters, so a record copied to another account, or with its
  parameters edited, does not unwrap. Passwords are hashed as their UTF-8 bytes, unnormalised,
  as ``accounts.py`` hashes them for bcrypt.
- **Lines**: ``LineCipher`` derives its subkeys from the data key with HKDF-SHA256, one per
  purpose (the line cipher, the blind index), so no key serves two algorithms. Each line is
  AES-256-GCM with a random 96-bit nonce; the AAD is a fixed label, the conversation id
  (length-prefixed) and the line position (8 bytes), so a line swapped between files or
  reordered fails to open. The token is ``urlsafe_b64(nonce + ciphertext + tag)`` without
  padding: 28 bytes over the plaintext, then base64's 4/3. Random nonces stay safe for about
  2**32 lines per data key, far beyond one account's conversations.
- **Blind index**: ``blind(word)`` is HMAC-SHA256 under its own subkey of the UTF-8 bytes,
  truncated to 12 bytes (16 URL-safe characters). It hides the words but not their equality or
  frequency within the account; the caller normalises words (case, Unicode) exactly as its
  tokenizer does, before blinding.
- **No ``forget()``**: Python cannot wipe ``bytes`` reliably (immutable, copied by the
  interpreter and the allocator), so "logout forgets the key" means dropping every reference
  to the key and the ``LineCipher``; this module offers nothing that would pretend otherwise.

``cryptography`` is imported inside the functions that need it, so ``import nbchat`` stays fast.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DamagedLine, KeyRecordInvalid, KeyUnlockFailed

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_BYTES",
    "KdfParams",
    "LineCipher",
    "new_data_key",
    "rewrap_data_key",
    "unwrap_data_key",
    "wrap_data_key",
]

KEY_BYTES = 32
RECORD_VERSION = 1
KDF = "scrypt"
CIPHER = "AES-256-GCM"
NONCE_BYTES = 12
TAG_BYTES = 16
SALT_BYTES = 16
BLIND_BYTES = 12

MIN_N, MAX_N = 2**10, 2**20
MAX_R, MAX_P = 32, 16
MAX_MEMORY = 256 * 2**20  # bytes scrypt may use for one derivation
MAX_WORK = 2**22  # n * r * p: 8 times the default's

_WRAP_LABEL = b"nbchat data key v1\x00"
_LINE_LABEL = b"nbchat line v1\x00"
_LINE_INFO = b"nbchat line cipher v1"
_BLIND_INFO = b"nbchat blind index v1"
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_RECORD_FIELDS = ("version", "kdf", "n", "r", "p", "salt", "cipher", "nonce", "wrapped")


@dataclass(frozen=True)
class KdfParams:
    """scrypt's cost parameters; ``check()`` refuses values out of bounds before any work."""

    n: int
    r: int
    p: int
    length: int = KEY_BYTES

    @classmethod
    def default(cls) -> KdfParams:
        """The documented default: about 0.2 s and 64 MiB per derivation here (see the module doc)."""
        return cls(n=2**16, r=8, p=1)

    def check(self) -> None:
        """Raise ``KeyRecordInvalid`` unless the parameters are sane and affordable."""
        for name in ("n", "r", "p", "length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise KeyRecordInvalid(f"The key record's scrypt {name} is {value!r}, not a whole number.")
        if not MIN_N <= self.n <= MAX_N or self.n & (self.n - 1):
            raise KeyRecordInvalid(
                f"The key record's scrypt n is {self.n}; it must be a power of two between "
                f"2**10 and 2**20. The record is damaged or was not written by nbchat."
            )
        if not 1 <= self.r <= MAX_R or not 1 <= self.p <= MAX_P:
            raise KeyRecordInvalid(
                f"The key record's scrypt r={self.r}, p={self.p} are out of bounds "
                f"(r 1-{MAX_R}, p 1-{MAX_P}). The record is damaged or was not written by nbchat."
            )
        if 128 * self.n * self.r > MAX_MEMORY or self.n * self.r * self.p > MAX_WORK:
            raise KeyRecordInvalid(
                f"The key record asks scrypt for n={self.n}, r={self.r}, p={self.p}: more memory or "
                f"time than nbchat allows. The record is damaged or was not written by nbchat."
            )
        if self.length != KEY_BYTES:
            raise KeyRecordInvalid(f"The key record's key length is {self.length}, not {KEY_BYTES}.")

    def derive(self, password: str, salt: bytes) -> bytes:
        """The key-encryption key: scrypt of the password's UTF-8 bytes."""
        self.check()
        memory = 128 * self.n * self.r + 128 * self.r * self.p + 2**20
        return hashlib.scrypt(
            password.encode("utf-8"),
            salt=salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=memory,
            dklen=self.length,
        )


def new_data_key() -> bytes:
    """A fresh random data key for one account."""
    return secrets.token_bytes(KEY_BYTES)


def _aesgcm(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _wrap_aad(account: str, params: KdfParams) -> bytes:
    name = account.lower().encode("utf-8")
    return _WRAP_LABEL + struct.pack(">IIII", params.n, params.r, params.p, len(name)) + name


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def wrap_data_key(
    key: bytes, password: str, *, account: str, params: KdfParams | None = None
) -> dict[str, Any]:
    """The data key sealed under the password, as a JSON-able record bound to ``account``."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a data key is {KEY_BYTES} bytes, not {len(key)}")
    params = params or KdfParams.default()
    salt = secrets.token_bytes(SALT_BYTES)
    nonce = secrets.token_bytes(NONCE_BYTES)
    wrapped = _aesgcm(params.derive(password, salt)).encrypt(nonce, key, _wrap_aad(account, params))
    return {
        "version": RECORD_VERSION,
        "kdf": KDF,
        "n": params.n,
        "r": params.r,
        "p": params.p,
        "salt": _b64(salt),
        "cipher": CIPHER,
        "nonce": _b64(nonce),
        "wrapped": _b64(wrapped),
    }


def _field_bytes(record: Mapping[str, Any], name: str, size: int | None, minimum: int = 0) -> bytes:
    value = record[name]
    if not isinstance(value, str):
        raise KeyRecordInvalid(f"The key record's {name!r} is not a base64 string.")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise KeyRecordInvalid(f"The key record's {name!r} is not valid base64.") from None
    if (size is not None and len(data) != size) or len(data) < minimum:
        wanted = f"{size}" if size is not None else f"at least {minimum}"
        raise KeyRecordInvalid(f"The key record's {name!r} is {len(data)} bytes, not {wanted}.")
    return data


def _parse(record: Mapping[str, Any]) -> tuple[KdfParams, bytes, bytes, bytes]:
    """Params, salt, nonce, wrapped key of a record, every field checked, nothing derived yet."""
    if not isinstance(record, Mapping):
        raise KeyRecordInvalid("The key record is not a JSON object.")
    missing = [name for name in _RECORD_FIELDS if name not in record]
    if missing:
        raise KeyRecordInvalid(f"The key record lacks {', '.join(missing)}: it is damaged or incomplete.")
    if record["version"] != RECORD_VERSION or isinstance(record["version"], bool):
        raise KeyRecordInvalid(
            f"The key record has version {record['version']!r}; this nbchat reads version "
            f"{RECORD_VERSION}. Upgrade nbchat if a newer one wrote it."
        )
    if record["kdf"] != KDF:
        raise KeyRecordInvalid(f"The key record's kdf is {record['kdf']!r}; nbchat knows only {KDF!r}.")
    if record["cipher"] != CIPHER:
        raise KeyRecordInvalid(
            f"The key record's cipher is {record['cipher']!r}; nbchat knows only {CIPHER!r}."
        )
    params = KdfParams(n=record["n"], r=record["r"], p=record["p"])
    params.check()
    salt = _field_bytes(record, "salt", None, minimum=SALT_BYTES)
    nonce = _field_bytes(record, "nonce", NONCE_BYTES)
    wrapped = _field_bytes(record, "wrapped", KEY_BYTES + TAG_BYTES)
    return params, salt, nonce, wrapped


def unwrap_data_key(record: Mapping[str, Any], password: str, *, account: str) -> bytes:
    """The data key, if ``password`` and ``account`` are those it was wrapped with."""
    from cryptography.exceptions import InvalidTag

    params, salt, nonce, wrapped = _parse(record)
    try:
        return _aesgcm(params.derive(password, salt)).decrypt(nonce, wrapped, _wrap_aad(account, params))
    except InvalidTag:
        raise KeyUnlockFailed(
            f"The data key of account {account!r} could not be unlocked: wrong password, or the key "
            f"record was altered or belongs to another account. Nothing was changed."
        ) from None


def rewrap_data_key(
    record: Mapping[str, Any],
    old_password: str,
    new_password: str,
    *,
    account: str,
    params: KdfParams | None = None,
) -> dict[str, Any]:
    """The same data key wrapped under ``new_password`` (new salt, new nonce); the data stays as it is."""
    key = unwrap_data_key(record, old_password, account=account)
    return wrap_data_key(key, new_password, account=account, params=params)


class LineCipher:
    """Seals and opens one account's lines, each bound to its conversation and position."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a data key is {KEY_BYTES} bytes, not {len(key)}")
        self._aead = _aesgcm(_subkey(key, _LINE_INFO))
        self._blind_key = _subkey(key, _BLIND_INFO)

    def seal(self, plaintext: bytes, *, conversation_id: str, position: int) -> str:
        """``plaintext`` encrypted under a random nonce: URL-safe base64, no padding, no newline."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, _line_aad(conversation_id, position))
        return base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")

    def open(self, token: str, *, conversation_id: str, position: int) -> bytes:
        """The plaintext of ``token``; ``DamagedLine`` if it was damaged, truncated or moved."""
        from cryptography.exceptions import InvalidTag

        data = _decode_token(token, conversation_id, position)
        try:
            nonce, sealed = data[:NONCE_BYTES], data[NONCE_BYTES:]
            return self._aead.decrypt(nonce, sealed, _line_aad(conversation_id, position))
        except InvalidTag:
            raise DamagedLine(
                f"Line {position} of conversation {conversation_id!r} does not decrypt: it was damaged, "
                f"or moved from another file or position.",
                conversation_id=conversation_id,
                position=position,
            ) from None

    def blind(self, word: str) -> str:
        """A keyed token for ``word``: equal words, equal tokens under one key; unrelated under another."""
        digest = hmac.new(self._blind_key, word.encode("utf-8"), hashlib.sha256).digest()[:BLIND_BYTES]
        return base64.urlsafe_b64encode(digest).decode("ascii")


def _subkey(key: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(key)


def _line_aad(conversation_id: str, position: int) -> bytes:
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < 2**63:
        raise ValueError(f"a line position is a whole number from 0, not {position!r}")
    ident = conversation_id.encode("utf-8")
    return _LINE_LABEL + struct.pack(">I", len(ident)) + ident + struct.pack(">Q", position)


def _decode_token(token: str, conversation_id: str, position: int) -> bytes:
    raw = token.encode("ascii", errors="replace") if isinstance(token, str) else b"?"
    if b"+" not in raw and b"/" not in raw:  # the URL-safe alphabet only; validate checks the rest
        try:
            data = base64.b64decode(raw.translate(_TO_STANDARD) + b"=" * (-len(raw) % 4), validate=True)
        except binascii.Error:
            data = b""
        # The last character's unused low bits decode to nothing: a token changed only there would
        # open as the same bytes, so only the one canonical spelling of the bytes is accepted.
        canonical = base64.urlsafe_b64encode(data).rstrip(b"=") == raw
        if canonical and len(data) >= NONCE_BYTES + TAG_BYTES:
            return data
    raise DamagedLine(
        f"Line {position} of conversation {conversation_id!r} is not an nbchat sealed line "
        f"(bad characters or too short): it was damaged.",
        conversation_id=conversation_id,
        position=position,
    )
