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

import datetime
import fnmatch
import ipaddress
import os
import re
import sys
import unicodedata
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import platformdirs

from nbchat.errors import ConfigError, InvalidValue, PolicyError
from nbchat.types import MAX_SYSTEM_CHARS, ConversationSettings, check_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_OLLAMA_PORT = 11434
DEFAULT_QWEN_MODEL = "Qwen/Qwen3-1.7B"
DEFAULT_MAX_USERS = 10
DEFAULT_READ_TIMEOUT_S = 120.0  # a cold model load on a server can keep the first token waiting
MAX_READ_TIMEOUT_S = 86_400
DEFAULT_SITE_CONFIG = Path("/etc/nbchat/config.toml")
#: The shortest ``NBCHAT_HUB_SECRET`` nbchat accepts (a sha256 HMAC in hex is 64 characters).
MIN_HUB_SECRET_CHARS = 32
#: The environment variables of the hub's per-user secret (environment only, never the site file).
HUB_SECRET_VARS = ("NBCHAT_HUB_SECRET", "NBCHAT_HUB_SECRET_PREVIOUS")

#: ``[nbchat]`` keys of the site file and the environment variables they stand in for.
SITE_SETTINGS = {
    "data_dir": "NBCHAT_DATA_DIR",
    "max_users": "NBCHAT_MAX_USERS",
    "ollama_host": "OLLAMA_HOST",
    "qwen_model": "NBCHAT_QWEN_MODEL",
    "qwen_dtype": "NBCHAT_QWEN_DTYPE",
    "openai_base_url": "OPENAI_BASE_URL",
    "openai_api_key": "OPENAI_API_KEY",
    "trust_hub_user": "NBCHAT_TRUST_HUB_USER",
    "read_timeout": "NBCHAT_READ_TIMEOUT",
    "openai_think_switch": "NBCHAT_OPENAI_THINK_SWITCH",
}

#: The one type each ``[nbchat]`` key takes in the file (``float``: any number), and an example.
SITE_TYPES: dict[str, tuple[type, str]] = {
    "data_dir": (str, '"/srv/nbchat"'),
    "max_users": (int, "50"),
    "ollama_host": (str, '"http://ollama.internal:11434"'),
    "qwen_model": (str, '"Qwen/Qwen3-1.7B"'),
    "qwen_dtype": (str, '"bfloat16"'),
    "openai_base_url": (str, '"http://vllm.internal:8000/v1"'),
    "openai_api_key": (str, '"sk-..."'),
    "trust_hub_user": (bool, "true"),
    "read_timeout": (float, "120"),
    "openai_think_switch": (bool, "false"),
}

#: The keys of the ``[policy]`` table.
POLICY_KEYS = frozenset(
    {
        "models",
        "max_new_tokens",
        "max_temperature",
        "default_system",
        "allow_registration",
        "encrypt_local_accounts",
    }
)

_EXPECTED = {str: "text in quotes", int: "a whole number", float: "a number", bool: "true or false"}
_SECRET_KEYS = {"openai_api_key"}  # never shown in an error


@dataclass(frozen=True)
class Policy:
    """Site rules the session enforces for every user, from the ``[policy]`` table.

    ``models``: glob patterns of the model ids offered and allowed (``None``:
    all); ``max_new_tokens`` / ``max_temperature``: caps (``None``: none);
    ``default_system``: the system prompt of every new conversation;
    ``allow_registration``: whether local accounts may be created;
    ``encrypt_local_accounts``: whether local accounts get a data key wrapped under
    their password and their conversations encrypted with it (issue 15). On unless a
    site turns it off; an account that has a key keeps it, and its encrypted files,
    when this is turned off.
    """

    models: tuple[str, ...] | None = None
    max_new_tokens: int | None = None
    max_temperature: float | None = None
    default_system: str = ""
    allow_registration: bool = True
    encrypt_local_accounts: bool = True
    source: str = "the site policy"  # where the rules come from, for error messages

    def allows_model(self, model_id: str) -> bool:
        return self.models is None or any(fnmatch.fnmatchcase(model_id, p) for p in self.models)

    def refuse_model(self, model_id: str) -> None:
        """Raise ``PolicyError`` for a model the site does not allow, naming the rule and its file."""
        if self.allows_model(model_id):
            return
        allowed = f"only {', '.join(self.models)}" if self.models else "no model at all"
        raise PolicyError(f"{model_id} is not allowed here: {self.source} allows {allowed}.")

    def check_settings(self, settings: ConversationSettings) -> None:
        """Raise ``PolicyError`` for settings past a rule (a saved conversation's too: rules change)."""
        if settings.model is not None:
            self.refuse_model(settings.model)
        if self.max_new_tokens is not None and settings.max_new_tokens > self.max_new_tokens:
            raise PolicyError(
                f"Max new tokens must be at most {self.max_new_tokens:,} here ({self.source}), "
                f"not {settings.max_new_tokens:,}."
            )
        if self.max_temperature is not None and settings.temperature > self.max_temperature:
            raise PolicyError(
                f"Temperature must be at most {self.max_temperature} here ({self.source}), "
                f"not {settings.temperature}."
            )

    def starting_settings(self, settings: ConversationSettings) -> ConversationSettings:
        """A new conversation's settings: the site's system prompt, and the defaults within the caps."""
        changes: dict[str, Any] = {}
        if self.default_system:
            changes["system"] = self.default_system
        if self.max_new_tokens is not None and settings.max_new_tokens > self.max_new_tokens:
            changes["max_new_tokens"] = self.max_new_tokens
        if self.max_temperature is not None and settings.temperature > self.max_temperature:
            changes["temperature"] = self.max_temperature
        return settings.updated(**changes) if changes else settings


@dataclass(frozen=True)
class Config:
    """Everything nbchat takes from its environment, validated."""

    data_dir: Path
    max_users: int = DEFAULT_MAX_USERS
    ollama_host: str = f"http://127.0.0.1:{DEFAULT_OLLAMA_PORT}"
    qwen_model: str = DEFAULT_QWEN_MODEL
    qwen_dtype: str = "auto"  # auto | bfloat16 | float16 | float32, for every local model
    qwen_dtype_source: str | None = None  # the variable or site file key that set it (None: default)
    openai_base_url: str | None = None
    openai_api_key: str | None = field(default=None, repr=False)
    hub_user: str | None = None
    trust_hub_user: bool = True  # log JUPYTERHUB_USER in without a password
    #: The hub user's data key source (``NBCHAT_HUB_SECRET``; None: hub accounts stay in clear), and
    #: the one it replaces (``NBCHAT_HUB_SECRET_PREVIOUS``), whose keys are re-wrapped at login.
    hub_secret: str | None = field(default=None, repr=False)
    hub_secret_previous: str | None = field(default=None, repr=False)
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
    merged: dict[str, str] = {}
    names: dict[str, str] = {}  # where each value came from, for error messages
    for key, value in site.items():
        merged[SITE_SETTINGS[key]] = value
        names[SITE_SETTINGS[key]] = f"nbchat.{key} in {site_file}"
    for var, value in env.items():
        if value is not None and str(value).strip():
            merged[var], names[var] = value, var
    if names.get("OLLAMA_URL") == "OLLAMA_URL" and names.get("OLLAMA_HOST") != "OLLAMA_HOST":
        # the environment's OLLAMA_URL beats the file's ollama_host (the environment always wins)
        merged["OLLAMA_HOST"], names["OLLAMA_HOST"] = merged["OLLAMA_URL"], "OLLAMA_URL"

    def name(var: str) -> str:
        return names.get(var, var)

    hub_user = (merged.get("JUPYTERHUB_USER") or "").strip() or None
    trust_hub_user = _flag(name("NBCHAT_TRUST_HUB_USER"), merged.get("NBCHAT_TRUST_HUB_USER"), default=True)
    data_dir = _data_dir(name("NBCHAT_DATA_DIR"), merged.get("NBCHAT_DATA_DIR"))
    if hub_user is not None and trust_hub_user and merged.get("NBCHAT_DATA_DIR"):
        data_dir = _hub_user_dir(data_dir, hub_user)
    hub_secret, hub_secret_previous = (_hub_secret(var, env.get(var)) for var in HUB_SECRET_VARS)
    if hub_secret_previous is not None and hub_secret is None:
        raise ConfigError(
            "NBCHAT_HUB_SECRET_PREVIOUS is set but NBCHAT_HUB_SECRET is not: the previous secret is only "
            "read to re-wrap keys under the current one. Set NBCHAT_HUB_SECRET too."
        )
    return Config(
        data_dir=data_dir,
        max_users=_positive_int(name("NBCHAT_MAX_USERS"), merged.get("NBCHAT_MAX_USERS"), DEFAULT_MAX_USERS),
        ollama_host=parse_ollama_host(merged.get("OLLAMA_HOST"), name=name("OLLAMA_HOST")),
        qwen_model=(merged.get("NBCHAT_QWEN_MODEL") or "").strip() or DEFAULT_QWEN_MODEL,
        qwen_dtype=_dtype(name("NBCHAT_QWEN_DTYPE"), merged.get("NBCHAT_QWEN_DTYPE")),
        qwen_dtype_source=name("NBCHAT_QWEN_DTYPE") if merged.get("NBCHAT_QWEN_DTYPE") else None,
        openai_base_url=check_openai_base_url(merged.get("OPENAI_BASE_URL"), name=name("OPENAI_BASE_URL")),
        openai_api_key=_api_key(name("OPENAI_API_KEY"), merged.get("OPENAI_API_KEY")),
        hub_user=hub_user,
        trust_hub_user=trust_hub_user,
        hub_secret=hub_secret,
        hub_secret_previous=hub_secret_previous,
        openai_think_switch=_flag(
            name("NBCHAT_OPENAI_THINK_SWITCH"), merged.get("NBCHAT_OPENAI_THINK_SWITCH"), default=False
        ),
        read_timeout_s=_positive_float(
            name("NBCHAT_READ_TIMEOUT"), merged.get("NBCHAT_READ_TIMEOUT"), DEFAULT_READ_TIMEOUT_S
        ),
        policy=policy,
        site_file=site_file,
    )


def _hub_user_dir(shared: Path, hub_user: str) -> Path:
    """On a shared data volume, each hub user gets a directory of their own (created 0700 by them).

    A folder made under the earlier, shorter hub tag keeps serving its exact hub name.
    """
    from nbchat.accounts import hub_user_data_dir  # accounts imports this module: import on use

    return hub_user_data_dir(shared, hub_user)


# -- the site file --------------------------------------------------------------------------------


def _read_site_file(env: Mapping[str, str]) -> tuple[Path | None, dict[str, str], Policy]:
    """The site file's ``[nbchat]`` settings (as the environment would spell them) and ``[policy]``.

    No file at the default path is fine. Every value's type is checked here, whether or not
    the environment overrides it: a broken file is reported when it is read, never later.
    """
    named = (env.get("NBCHAT_CONFIG") or "").strip()
    path = _path("NBCHAT_CONFIG", named, "the site config file") if named else DEFAULT_SITE_CONFIG
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
    policy = _policy(path, _table(path, document, "policy", set(POLICY_KEYS)))
    return path, {key: _site_value(path, key, value) for key, value in settings.items()}, policy


def _table(path: Path, document: dict[str, Any], name: str, known: set[str]) -> dict[str, Any]:
    table = document.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}] must be a table, not {_kind(table)}.")
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting {name}.{unknown[0]}; the settings of [{name}] are "
            f"{', '.join(sorted(known))}."
        )
    return table


def _site_value(path: Path, key: str, value: object) -> str:
    """One ``[nbchat]`` value of the right type, spelled as its environment variable would be."""
    wanted, example = SITE_TYPES[key]
    if not _is(value, wanted):
        found = _found(value, secret=key in _SECRET_KEYS)
        raise ConfigError(f"{path}: nbchat.{key} must be {_EXPECTED[wanted]} such as {example}, not {found}.")
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str) and not value.strip():
        raise ConfigError(f"nbchat.{key} in {path} is empty; remove the line to use the default.")
    return repr(float(value)) if isinstance(value, (int, float)) and wanted is float else str(value)


def _policy(path: Path, table: dict[str, Any]) -> Policy:
    where = f"the site policy in {path}"

    def refuse(key: str, expected: str, value: object) -> NoReturn:
        raise ConfigError(f"{path}: policy.{key} must be {expected}, not {_found(value)}.")

    models = table.get("models")
    patterns = "a list of text patterns such as ['ollama:qwen3:*', 'openai:*']"
    if models is not None:
        if not isinstance(models, list):
            refuse("models", patterns, models)
        for model in models:
            if not isinstance(model, str):
                refuse("models", patterns, model)
            if not model.strip():
                raise ConfigError(f"{path}: policy.models holds an empty pattern; remove it.")
    max_tokens = table.get("max_new_tokens")
    if max_tokens is not None and (not _is(max_tokens, int) or max_tokens < 1):
        refuse("max_new_tokens", "a whole number of at least 1", max_tokens)
    max_temperature = table.get("max_temperature")
    if max_temperature is not None and (not _is(max_temperature, float) or not 0 <= max_temperature <= 2):
        refuse("max_temperature", "a number from 0 to 2", max_temperature)
    system = table.get("default_system", "")
    if not isinstance(system, str):
        refuse("default_system", _EXPECTED[str], system)
    try:
        check_text("policy.default_system", system, max_chars=MAX_SYSTEM_CHARS)
    except InvalidValue as exc:
        raise ConfigError(f"{path}: {exc} Shorten it.") from None
    registration = table.get("allow_registration", True)
    if not isinstance(registration, bool):
        refuse("allow_registration", "true or false", registration)
    encrypt = table.get("encrypt_local_accounts", True)
    if not isinstance(encrypt, bool):
        refuse("encrypt_local_accounts", "true or false", encrypt)
    return Policy(
        models=tuple(m.strip() for m in models) if models is not None else None,
        max_new_tokens=max_tokens,
        max_temperature=float(max_temperature) if max_temperature is not None else None,
        default_system=system,
        allow_registration=registration,
        encrypt_local_accounts=encrypt,
        source=where,
    )


def _is(value: object, wanted: type) -> bool:
    """TOML's types as nbchat reads them: true/false is no number, and a whole number is a number."""
    if isinstance(value, bool) or wanted is bool:
        return isinstance(value, bool) and wanted is bool
    if wanted is float:
        return isinstance(value, (int, float))
    return isinstance(value, wanted)


def _kind(value: object) -> str:
    """A TOML value's type, as an administrator reading the file would call it."""
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "true/false"),
        (int, "an integer"),
        (float, "a decimal number"),
        (str, "text"),
        (list, "an array"),
        (dict, "a table"),
        (datetime.datetime, "a date and time"),
        (datetime.date, "a date"),
        (datetime.time, "a time of day"),
    ]
    return next((kind for types, kind in kinds if isinstance(value, types)), type(value).__name__)


def _found(value: object, *, secret: bool = False) -> str:
    """What was found, with the value when it is short, plain and not a secret."""
    kind = _kind(value)
    if secret or isinstance(value, (bool, list, dict)):
        return kind
    shown = repr(value) if not isinstance(value, datetime.date) else value.isoformat()
    return f"{kind} ({shown[:40]}{'...' if len(shown) > 40 else ''})"


# -- single settings ------------------------------------------------------------------------------


def _flag(name: str, raw: str | None, *, default: bool) -> bool:
    text = (raw or "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1/true/yes/on or 0/false/no/off, not {raw!r}.")


def _data_dir(name: str, raw: str | None) -> Path:
    if raw is None or not raw.strip():
        return Path(platformdirs.user_data_dir("nbchat", appauthor=False))
    return _path(name, raw.strip(), "a directory").absolute()


def _path(name: str, raw: str, what: str) -> Path:
    """``raw`` as a path with ``~`` expanded; what the OS would refuse later is a ConfigError now."""
    if "\x00" in raw:
        raise ConfigError(f"{name} contains a NUL character; set it to the path of {what}.")
    try:
        return Path(raw).expanduser()
    except RuntimeError:  # ~someone for a user this machine does not know
        raise ConfigError(
            f"{name} names the home of {raw.split('/', 1)[0]!r}, a user this machine does not know; "
            f"set it to the full path of {what}."
        ) from None


def _dtype(name: str, raw: str | None) -> str:
    """The precision of local models: ``auto`` unless set (``precision`` says what auto picks)."""
    from nbchat.backends.local.precision import check_choice  # imports no torch

    if raw is None or not raw.strip():
        return "auto"
    try:
        return check_choice(raw, name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


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
        raise ConfigError(f"{name} must be a positive number of seconds, not {raw.strip()!r}.")
    if value > MAX_READ_TIMEOUT_S:  # the OS's timers overflow long before 1e12 s
        raise ConfigError(
            f"{name} must be at most {MAX_READ_TIMEOUT_S:,} seconds (a day), not {raw.strip()}."
        )
    return value


def _api_key(name: str, raw: str | None) -> str | None:
    """The key alone: a space or control character inside would break (or forge) the HTTP header."""
    key = (raw or "").strip()
    bad = _bad_char(key)
    if bad is not None:
        raise ConfigError(
            f"{name} contains a space or control character (U+{ord(bad):04X}) inside the key; "
            "set it to the key alone, on one line."
        )
    return key or None


def _hub_secret(name: str, raw: str | None) -> str | None:
    """A hub user's key source, or None when unset; never shown, not even its length, in an error.

    Read from the environment only: a secret per user cannot live in a shared site file.
    """
    secret = (raw or "").strip()
    if not secret:
        return None
    if len(secret) < MIN_HUB_SECRET_CHARS or _bad_char(secret) is not None:
        raise ConfigError(
            f"{name} must be at least {MIN_HUB_SECRET_CHARS} characters on one line, without spaces or "
            "control characters, and secret to this user. Have the hub make one per user from a master "
            "secret only the hub can read, for example in jupyterhub_config.py: "
            'c.Spawner.environment = {"NBCHAT_HUB_SECRET": lambda spawner: hmac.new(MASTER, '
            'spawner.user.name.encode(), "sha256").hexdigest()}, with MASTER from a file made by '
            "`python -c 'import secrets; print(secrets.token_hex(32))'`."
        )
    return secret


# -- addresses ------------------------------------------------------------------------------------

_OLLAMA_FORMS = (
    f"host[:port], http://host[:port][/path] or https://host[:port][/path] with a port from 1-65535, "
    f"such as 127.0.0.1:{DEFAULT_OLLAMA_PORT}"
)
_OPENAI_EXAMPLE = "http://127.0.0.1:8000/v1"
_HOST_NAME = re.compile(r"[\w.-]+")  # letters (any script), digits, '-', '.', '_'
_UNPRINTABLE = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp", "Zs"})


def _bad_char(text: str) -> str | None:
    """The first whitespace or control/format character in ``text`` (URLs and keys hold none)."""
    return next((c for c in text if c.isspace() or unicodedata.category(c) in _UNPRINTABLE), None)


def _without_userinfo(address: str) -> str:
    """``address`` as an error may show it: a ``user:password@`` part replaced by ``***@``."""
    return re.sub(r"^((?:[A-Za-z][\w+.-]*:)?//)?[^/@?#]*@", lambda m: (m.group(1) or "") + "***@", address)


def parse_ollama_host(raw: str | None, *, name: str = "OLLAMA_HOST") -> str:
    """Turn ``OLLAMA_HOST``/``OLLAMA_URL`` into a base URL, as the official client does.

    A bare host gets port 11434, ``http://host`` port 80 and ``https://host``
    port 443; a missing host (``:PORT``) means 127.0.0.1; a trailing path is
    kept. What the official client would silently change (port 0, a newline
    dropped, ``//h`` read as a path, a password dropped) is refused instead.
    """
    text = (raw or "").strip()
    shown = _without_userinfo(raw or "")

    def refuse(problem: str) -> NoReturn:
        raise ConfigError(f"{name} {shown!r} {problem}; use {_OLLAMA_FORMS}.")

    bad = _bad_char(text)
    if bad is not None:
        refuse(f"contains a space or control character (U+{ord(bad):04X})")
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest, port = "http", text, DEFAULT_OLLAMA_PORT
    elif scheme in ("http", "https"):
        port = 80 if scheme == "http" else 443
    else:
        refuse(f"has scheme {scheme!r}; only http:// and https:// work")
    if "?" in rest or "#" in rest:
        refuse("has a query (?) or fragment (#), which an Ollama address cannot have")
    netloc, _, path = rest.partition("/")
    if not text:
        return f"http://127.0.0.1:{DEFAULT_OLLAMA_PORT}"
    host, given_port = _split_netloc(netloc, refuse)
    if not host:
        if sep or not netloc.startswith(":"):
            refuse("has no host")
        host = "127.0.0.1"  # ":PORT", as the official client reads it
    path = path.strip("/")
    return f"{scheme}://{host}:{given_port or port}" + (f"/{path}" if path else "")


def check_openai_base_url(raw: str | None, *, name: str = "OPENAI_BASE_URL") -> str | None:
    """``OPENAI_BASE_URL`` as written (trimmed), or None when unset; refused now if unusable.

    A control character or space would reach every request line; a user name or
    password in it would be shown wherever the address is (errors, ``health()``).
    """
    text = (raw or "").strip()
    if not text:
        return None
    shown = _without_userinfo(text)

    def refuse(problem: str) -> NoReturn:
        raise ConfigError(
            f"{name} {shown!r} {problem}; use an http:// or https:// address with the API's path, "
            f"such as {_OPENAI_EXAMPLE}."
        )

    bad = _bad_char(text)
    if bad is not None:
        refuse(f"contains a space or control character (U+{ord(bad):04X})")
    split = urllib.parse.urlsplit(text)
    if split.scheme not in ("http", "https") or not text.startswith(f"{split.scheme}://"):
        refuse("does not start with http:// or https://")
    if split.query or split.fragment or "?" in text or "#" in text:
        refuse("has a query (?) or fragment (#); the API's paths are added after the address")
    if "@" in split.netloc:
        refuse("holds a user name or password; put the key in OPENAI_API_KEY instead")
    host, _ = _split_netloc(split.netloc, refuse)
    if not host:
        refuse("has no host")
    return text


def _split_netloc(netloc: str, refuse: Callable[[str], NoReturn]) -> tuple[str, int | None]:
    """``host[:port]`` or ``[v6]:port`` checked: the host (IPv6 in brackets, lowercased) and port."""
    if "@" in netloc:
        refuse("holds a user name or password, which would be dropped")
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            refuse("has an unclosed '['; IPv6 addresses go in brackets, such as [::1]:11434")
        inner, after = netloc[1:end], netloc[end + 1 :]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            refuse(f"has {inner!r} in brackets, which is not an IPv6 address")
        if after and not after.startswith(":"):
            refuse(f"has text after ']' ({after!r}) that is not :port")
        host, port_text = f"[{inner.lower()}]", after[1:] if after else None
    else:
        if netloc.count(":") > 1:
            refuse("has more than one ':'; IPv6 addresses go in brackets, such as [::1]:11434")
        host, colon, port_text_or_empty = netloc.partition(":")
        port_text = port_text_or_empty if colon else None
        if host and not _HOST_NAME.fullmatch(host):
            refuse(f"has the host {host!r}; a host name holds letters, digits, '-', '.' and '_'")
        host = host.lower()
    if port_text is None:
        return host, None
    if not port_text:
        refuse("has no port after ':'")
    if not (port_text.isascii() and port_text.isdigit()):
        refuse(f"has port {port_text!r}, which is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        refuse(f"has port {port}, outside 1-65535")
    return host, port
