"""Username rules: the one gate a name passes before it may name a directory.

A valid name is 1–32 ASCII letters, digits, ``_``, ``-`` or ``.``, neither
starting nor ending with ``.``, and not a Windows device name. Names are
case-insensitive: the lower-case form is the account's key and its directory,
so ``Alice`` and ``alice`` are one account on every filesystem.
"""

from __future__ import annotations

import hashlib
import re
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


#: The tail every hashed hub username ends with; a valid hub name ending so is hashed too.
HASHED_TAIL = re.compile(r"-[0-9a-f]{8}\Z", re.IGNORECASE)


def hub_username(hub_name: str) -> str:
    """The nbchat username of a JupyterHub user: the hub name itself when it is valid.

    Hub names may hold '@', spaces or non-ASCII letters (``Ann.Lee@uni.edu``);
    those become a readable, valid name plus a hash of the full hub name, so
    two hub users never share an account: ``Ann.Lee-uni.edu-5d41402a``. A valid
    name that ends like a hashed one (``-`` and 8 hex digits) is hashed as well,
    so no hub user can take the account of another by choosing its name.
    """
    if not isinstance(hub_name, str) or not hub_name.strip():
        raise InvalidUsername("The JupyterHub user name (JUPYTERHUB_USER) is empty.")
    try:
        encoded = hub_name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidUsername(
            "The JupyterHub user name (JUPYTERHUB_USER) is not valid Unicode text."
        ) from None
    if not HASHED_TAIL.search(hub_name):
        try:
            return check_username(hub_name)
        except InvalidUsername:
            pass
    digest = hashlib.sha256(encoded).hexdigest()[:8]
    readable = "".join(c if c in ALLOWED else "-" for c in hub_name)
    readable = re.sub(r"-{2,}", "-", readable).strip(".-")
    readable = readable[: MAX_USERNAME_CHARS - len("hub--") - len(digest)].rstrip(".-")
    name = f"{readable}-{digest}" if readable else digest
    if not readable or name.split(".", 1)[0].lower() in WINDOWS_DEVICE_NAMES:
        name = f"hub-{name}"
    return check_username(name)
