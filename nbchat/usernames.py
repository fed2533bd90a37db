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


#: Hex digits of sha256 that tag a made-up hub username: 80 bits, so no two hub names share
#: a tag by chance and finding a second name for somebody's tag is out of reach.
HUB_TAG_HEX = 20
#: The tag of nbchat before issue 11 (32 bits: a colliding pair of hub names takes minutes).
LEGACY_TAG_HEX = 8
#: The tail every made-up hub username ends with; a valid hub name ending so is hashed too.
HUB_TAIL = re.compile(rf"-[0-9a-f]{{{HUB_TAG_HEX}}}\Z", re.IGNORECASE)
#: The old tail, still hashed so that no hub user can take the name of an existing old account.
LEGACY_TAIL = re.compile(rf"-[0-9a-f]{{{LEGACY_TAG_HEX}}}\Z", re.IGNORECASE)


def hub_username(hub_name: str) -> str:
    """The nbchat username of a JupyterHub user: the hub name itself when it is valid.

    Hub names may hold '@', spaces or non-ASCII letters (``Ann.Lee@uni.edu``);
    those become a readable, valid name plus 80 bits of the full hub name's
    sha256: ``Ann.Lee-u-5d41402abc4b2a76b971``. A valid name that ends like a
    made-up one (``-`` and 20 or 8 hex digits) is hashed as well, so no hub user
    can take the account of another by choosing its name. The tag only keeps
    names apart: the account records the exact hub name, and ``hub_login``
    refuses any other.
    """
    encoded = _hub_name_bytes(hub_name)
    if not (HUB_TAIL.search(hub_name) or LEGACY_TAIL.search(hub_name)):
        try:
            return check_username(hub_name)
        except InvalidUsername:
            pass
    return _tagged(hub_name, hashlib.sha256(encoded).hexdigest()[:HUB_TAG_HEX])


def legacy_hub_username(hub_name: str) -> str:
    """The username nbchat gave ``hub_name`` before issue 11 (8 hex digits of tag).

    Only for finding an account created back then; ``hub_login`` uses it only
    when that account's recorded hub name is exactly ``hub_name``.
    """
    encoded = _hub_name_bytes(hub_name)
    if not LEGACY_TAIL.search(hub_name):
        try:
            return check_username(hub_name)
        except InvalidUsername:
            pass
    digest = hashlib.sha256(encoded).hexdigest()[:LEGACY_TAG_HEX]
    readable = _readable(hub_name)[: MAX_USERNAME_CHARS - len("hub--") - LEGACY_TAG_HEX].rstrip(".-")
    name = f"{readable}-{digest}" if readable else digest
    if not readable or name.split(".", 1)[0].lower() in WINDOWS_DEVICE_NAMES:
        name = f"hub-{name}"
    return check_username(name)


def is_hub_shaped(name: str) -> bool:
    """True for a name that ends like a made-up hub username: such names are kept for hub accounts."""
    return bool(HUB_TAIL.search(name))


def _hub_name_bytes(hub_name: object) -> bytes:
    if not isinstance(hub_name, str) or not hub_name.strip():
        raise InvalidUsername("The JupyterHub user name (JUPYTERHUB_USER) is empty.")
    try:
        return hub_name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidUsername(
            "The JupyterHub user name (JUPYTERHUB_USER) is not valid Unicode text."
        ) from None


def _readable(hub_name: str) -> str:
    readable = "".join(c if c in ALLOWED else "-" for c in hub_name)
    return re.sub(r"-{2,}", "-", readable).strip(".-")


def _tagged(hub_name: str, tag: str) -> str:
    """``<readable>-<tag>``; ``hub-<readable>-<tag>`` when nothing is readable or it names a device."""
    readable = _readable(hub_name)[: MAX_USERNAME_CHARS - 1 - len(tag)].rstrip(".-")
    name = f"{readable}-{tag}"
    if readable and name.split(".", 1)[0].lower() not in WINDOWS_DEVICE_NAMES:
        return check_username(name)
    readable = readable[: MAX_USERNAME_CHARS - len("hub--") - len(tag)].rstrip(".-")
    return check_username(f"hub-{readable}-{tag}" if readable else f"hub-{tag}")
