"""Settings from the environment and the site's config file, read when asked for (never at import).

Reading at call time matters in a long-lived kernel: a user who sets
``os.environ["OLLAMA_HOST"]`` in a cell expects the next session to see it,
unlike the official Ollama client, which reads it once at import.

An administrator sets defaults for every user in one TOML file
(``NBCHAT_CONFIG``, default ``/etc/nbchat/config.toml``): an ``[nbchat]``
table with the same settings as the environment (``ollama_host``,
``data_dir``, ...) and a ``[policy]`` table the session enforces (allowed
models, caps on max new tokens and temperature, a default system prompt,
whether local accounts may register). Environment variables win over the
file's ``[nbchat]`` table; the policy comes from the file only.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from nbchat.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_OLLAMA_PORT = 11434
DEFAULT_QWEN_MODEL = "Qwen/Qwen3-1.7B"
DEFAULT_MAX_USERS = 10
DEFAULT_READ_TIMEOUT_S = 120.0  # a cold model load on a server can keep the first token waiting
DEFAULT_SITE_CONFIG = Path("/etc/nbchat/config.toml")

#: ``[nbchat]`` keys of the site file and the environment variables they stand in for.
SITE_SETTINGS = {
    "data_dir": "NBCHAT_DATA_DIR",
    "max_users": "NBCHAT_MAX_USERS",
    "ollama_host": "OLLAMA_HOST",
    "qwen_model": "NBCHAT_QWEN_MODEL",
    "openai_base_url": "OPENAI_BASE_URL",
    "openai_api_key": "OPENAI_API_KEY",
    "trust_hub_user": "NBCHAT_TRUST_HUB_USER",
    "read_timeout": "NBCHAT_READ_TIMEOUT",
    "openai_think_switch": "NBCHAT_OPENAI_THINK_SWITCH",
}


@dataclass(frozen=True)
class Policy:
    """Site rules the session enforces for every user, from the ``[policy]`` table.

    ``models``: glob patterns of the model ids offered and allowed (``None``:
    all); ``max_new_tokens`` / ``max_temperature``: caps (``None``: none);
    ``default_system``: the system prompt of every new conversation;
    ``allow_registration``: whether local accounts may be created.
    """

    models: tuple[str, ...] | None = None
    max_new_tokens: int | None = None
    max_temperature: float | None = None
    default_system: str = ""
    allow_registration: bool = True
    source: str = "the site policy"  # where the rules come from, for error messages

    def allows_model(self, model_id: str) -> bool:
        return self.models is None or any(fnmatch.fnmatchcase(model_id, p) for p in self.models)


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
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S  # the longest an HTTP engine may stay silent
    openai_think_switch: bool = False  # send "think first" to openai: servers as chat_template_kwargs
    policy: Policy = field(default_factory=Policy)
    site_file: Path | None = None  # the site config file that was read, if any

    @property
    def users_file(self) -> Path:
        return self.data_dir / "users.json"

    @property
    def conversations_dir(self) -> Path:
        return self.data_dir / "conversations"


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Build a ``Config`` from ``environ`` (default: ``os.environ``, read now) and the site file."""
    env = os.environ if environ is None else environ
    site_file, site, policy = _read_site_file(env)
    merged = {var: str(site[key]) for key, var in SITE_SETTINGS.items() if key in site}
    merged.update({k: v for k, v in env.items() if v is not None and str(v).strip()})
    hub_user = (merged.get("JUPYTERHUB_USER") or "").strip() or None
    trust_hub_user = _flag("NBCHAT_TRUST_HUB_USER", merged.get("NBCHAT_TRUST_HUB_USER"), default=True)
    data_dir = _data_dir(merged.get("NBCHAT_DATA_DIR"))
    if hub_user is not None and trust_hub_user and merged.get("NBCHAT_DATA_DIR"):
        data_dir = _hub_user_dir(data_dir, hub_user)
    return Config(
        data_dir=data_dir,
        max_users=_positive_int("NBCHAT_MAX_USERS", merged.get("NBCHAT_MAX_USERS"), DEFAULT_MAX_USERS),
        ollama_host=parse_ollama_host(merged.get("OLLAMA_HOST") or merged.get("OLLAMA_URL")),
        qwen_model=(merged.get("NBCHAT_QWEN_MODEL") or "").strip() or DEFAULT_QWEN_MODEL,
        openai_base_url=(merged.get("OPENAI_BASE_URL") or "").strip() or None,
        openai_api_key=merged.get("OPENAI_API_KEY") or None,
        hub_user=hub_user,
        trust_hub_user=trust_hub_user,
        openai_think_switch=_flag(
            "NBCHAT_OPENAI_THINK_SWITCH", merged.get("NBCHAT_OPENAI_THINK_SWITCH"), default=False
        ),
        read_timeout_s=_positive_float(
            "NBCHAT_READ_TIMEOUT", merged.get("NBCHAT_READ_TIMEOUT"), DEFAULT_READ_TIMEOUT_S
        ),
        policy=policy,
        site_file=site_file,
    )


def _hub_user_dir(shared: Path, hub_user: str) -> Path:
    """On a shared data volume, each hub user gets a directory of their own (created 0700 by them)."""
    from nbchat.usernames import hub_username

    return shared / hub_username(hub_user).lower()


def _read_site_file(env: Mapping[str, str]) -> tuple[Path | None, dict[str, Any], Policy]:
    """The site file's ``[nbchat]`` settings and ``[policy]``; no file (at the default path) is fine."""
    named = (env.get("NBCHAT_CONFIG") or "").strip()
    path = Path(named).expanduser() if named else DEFAULT_SITE_CONFIG
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if named:
            raise ConfigError(f"NBCHAT_CONFIG names {path}, which does not exist.") from None
        return None, {}, Policy()
    except OSError as exc:
        raise ConfigError(f"The nbchat config file {path} cannot be read: {exc.strerror or exc}.") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"The nbchat config file {path} is not valid TOML: {exc}.") from None
    unknown_tables = sorted(set(document) - {"nbchat", "policy"})
    if unknown_tables:
        raise ConfigError(
            f"{path}: unknown table [{unknown_tables[0]}]; the tables are [nbchat] and [policy]."
        )
    settings = _table(path, document, "nbchat", set(SITE_SETTINGS))
    return path, settings, _policy(path, _table(path, document, "policy", _POLICY_KEYS))


_POLICY_KEYS = {"models", "max_new_tokens", "max_temperature", "default_system", "allow_registration"}


def _table(path: Path, document: dict[str, Any], name: str, known: set[str]) -> dict[str, Any]:
    table = document.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}] must be a table.")
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting {name}.{unknown[0]}; the settings of [{name}] are "
            f"{', '.join(sorted(known))}."
        )
    return table


def _policy(path: Path, table: dict[str, Any]) -> Policy:
    where = f"the site policy in {path}"
    models = table.get("models")
    if models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) and m.strip() for m in models)
    ):
        raise ConfigError(f"{path}: policy.models must be a list of model id patterns such as 'ollama:*'.")
    max_tokens = table.get("max_new_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ConfigError(f"{path}: policy.max_new_tokens must be a whole number of at least 1.")
    max_temperature = table.get("max_temperature")
    if max_temperature is not None and (
        isinstance(max_temperature, bool)
        or not isinstance(max_temperature, (int, float))
        or not 0 <= max_temperature <= 2
    ):
        raise ConfigError(f"{path}: policy.max_temperature must be a number from 0 to 2.")
    system = table.get("default_system", "")
    if not isinstance(system, str):
        raise ConfigError(f"{path}: policy.default_system must be text.")
    registration = table.get("allow_registration", True)
    if not isinstance(registration, bool):
        raise ConfigError(f"{path}: policy.allow_registration must be true or false.")
    return Policy(
        models=tuple(m.strip() for m in models) if models is not None else None,
        max_new_tokens=max_tokens,
        max_temperature=float(max_temperature) if max_temperature is not None else None,
        default_system=system,
        allow_registration=registration,
        source=where,
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


def _positive_float(name: str, raw: str | None, default: float) -> float:
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds such as {default:g}, not {raw!r}.") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, not {raw!r}.")
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
