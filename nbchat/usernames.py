"""Username rules: the one gate a name passes before it may name a directory.

A valid name is 1–32 ASCII letters, digits, ``_``, ``-`` or ``.``, neither
starting nor ending with ``.``, and not a Windows device name. Names are
case-insensitive: the lower-case form is the account's key and its directory,
so ``Alice`` and ``alice`` are one account on every filesystem.
"""

from __future__ import annotations

import string

from nbchat.errors import InvalidUsername

MAX_USERNAME_CHARS = 32
ALLOWED = frozenset(string.ascii_letters + string.digits + "_-.")
WINDOWS_DEVICE_NAMES = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{i}" for i in range(10)] + [f"lpt{i}" for i in range(10)]
)


def check_username(name: object) -> str:
    """Return ``name`` unchanged if it is a valid username, else raise ``InvalidUsername``."""
    if not isinstance(name, str):
        raise InvalidUsername(f"A username must be text, not {type(name).__name__}.")
    if not name:
        raise InvalidUsername("Choose a username: 1 to 32 letters, digits, '_', '-' or '.'.")
    if len(name) > MAX_USERNAME_CHARS:
        raise InvalidUsername(
            f"That username is {len(name)} characters long; the limit is {MAX_USERNAME_CHARS}."
        )
    bad = next((c for c in name if c not in ALLOWED), None)
    if bad is not None:
        shown = repr(bad) if bad.isprintable() and not bad.isspace() else f"U+{ord(bad):04X}"
        raise InvalidUsername(
            f"A username may use only ASCII letters, digits, '_', '-' and '.'; {shown} is not allowed."
        )
    if name.startswith("."):
        raise InvalidUsername("A username cannot start with '.'.")
    if name.endswith("."):
        raise InvalidUsername("A username cannot end with '.'.")
    if name.split(".", 1)[0].lower() in WINDOWS_DEVICE_NAMES:
        raise InvalidUsername(f"{name!r} is a reserved device name on Windows; choose another.")
    return name


def username_key(name: object) -> str:
    """The case-folded key (and directory name) of a valid username."""
    return check_username(name).lower()
