"""Settings from the environment, read when asked for (never frozen at import).

Reading at call time matters in a long-lived kernel: a user who sets
``os.environ["OLLAMA_HOST"]`` in a cell expects the next session to see it,
unlike the official Ollama client, which reads it once at import.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from nbchat.errors import ConfigError

DEFAULT_OLLAMA_PORT = 11434
DEFAULT_QWEN_MODEL = "Qwen/Qwen3-1.7B"
DEFAULT_MAX_USERS = 10


@dataclass(frozen=True)
class Config:
    """Everything nbchat takes from its environment, validated."""

    data_dir: Path
    max_users: int = DEFAULT_MAX_USERS
    ollama_host: str = f"http://127.0.0.1:{DEFAULT_OLLAMA_PORT}"
    qwen_model: str = DEFAULT_QWEN_MODEL
    openai_base_url: str | None = None
    openai_api_key: str | None = field(default=None, repr=False)
    hub_user: str | None = None
    trust_hub_user: bool = True  # log JUPYTERHUB_USER in without a password

    @property
    def users_file(self) -> Path:
        return self.data_dir / "users.json"

    @property
    def conversations_dir(self) -> Path:
        return self.data_dir / "conversations"


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Build a ``Config`` from ``environ`` (default: ``os.environ``, read now)."""
    env = os.environ if environ is None else environ
    return Config(
        data_dir=_data_dir(env.get("NBCHAT_DATA_DIR")),
        max_users=_positive_int("NBCHAT_MAX_USERS", env.get("NBCHAT_MAX_USERS"), DEFAULT_MAX_USERS),
        ollama_host=parse_ollama_host(env.get("OLLAMA_HOST") or env.get("OLLAMA_URL")),
        qwen_model=(env.get("NBCHAT_QWEN_MODEL") or "").strip() or DEFAULT_QWEN_MODEL,
        openai_base_url=(env.get("OPENAI_BASE_URL") or "").strip() or None,
        openai_api_key=env.get("OPENAI_API_KEY") or None,
        hub_user=(env.get("JUPYTERHUB_USER") or "").strip() or None,
        trust_hub_user=_flag("NBCHAT_TRUST_HUB_USER", env.get("NBCHAT_TRUST_HUB_USER"), default=True),
    )


def _flag(name: str, raw: str | None, *, default: bool) -> bool:
    text = (raw or "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1/true/yes/on or 0/false/no/off, not {raw!r}.")


def _data_dir(raw: str | None) -> Path:
    if raw is None or not raw.strip():
        return Path(platformdirs.user_data_dir("nbchat", appauthor=False))
    if "\x00" in raw:
        raise ConfigError("NBCHAT_DATA_DIR contains a NUL character; set it to a directory path.")
    return Path(raw.strip()).expanduser().absolute()


def _positive_int(name: str, raw: str | None, default: int) -> int:
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number such as {default}, not {raw!r}.") from None
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, not {value}.")
    return value


def parse_ollama_host(raw: str | None) -> str:
    """Turn ``OLLAMA_HOST``/``OLLAMA_URL`` into a base URL, as the official client does.

    A bare host gets port 11434, ``http://host`` port 80 and ``https://host``
    port 443; a missing host means 127.0.0.1; a trailing path is kept.
    """
    text = (raw or "").strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest, port = "http", text, DEFAULT_OLLAMA_PORT
    elif scheme in ("http", "https"):
        port = 80 if scheme == "http" else 443
    else:
        raise ConfigError(
            f"OLLAMA_HOST {raw!r} has scheme {scheme!r}; use http:// or https:// "
            f"(or a bare host such as 127.0.0.1:{DEFAULT_OLLAMA_PORT})."
        )
    try:
        split = urllib.parse.urlsplit(f"{scheme}://{rest}")
        host = split.hostname or "127.0.0.1"
        port = split.port or port
    except ValueError as exc:
        raise ConfigError(f"OLLAMA_HOST {raw!r} is not a usable address: {exc}.") from None
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            host = f"[{host}]"
    except ValueError:
        pass
    path = split.path.strip("/")
    return f"{scheme}://{host}:{port}" + (f"/{path}" if path else "")
