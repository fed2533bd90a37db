"""``nbchat.health()``: is everything nbchat needs in place, and if not, what to do.

The original app had health-check endpoints on its to-do list; here the check
is a report object. It reads as plain text in a terminal and as a short
Markdown list in a notebook, and ``to_dict()`` gives it to code. Checking
never raises and never imports torch: a broken part is a line of the report.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from nbchat.config import Config, load_config
from nbchat.errors import NbchatError


@dataclass
class HealthReport:
    """What works: engines, storage, accounts; ``problems`` say what to fix."""

    ollama: dict[str, Any]
    local: dict[str, Any]
    storage: dict[str, Any]
    accounts: dict[str, Any]
    session: dict[str, Any] = field(default_factory=dict)
    openai: dict[str, Any] | None = None  # only when OPENAI_BASE_URL is set
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Storage and accounts work. An unreachable Ollama is only a note: local models still work."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "ollama": self.ollama,
            "local": self.local,
            "storage": self.storage,
            "accounts": self.accounts,
            "session": self.session,
            "openai": self.openai,
            "problems": list(self.problems),
            "notes": list(self.notes),
        }

    def lines(self) -> list[str]:
        """One line per part, in plain words."""
        ollama = self.ollama
        if ollama.get("reachable"):
            models = ", ".join(ollama.get("models") or []) or "no models pulled yet"
            engine = f"reachable at {ollama['url']} (version {ollama.get('version', '?')}): {models}"
        else:
            engine = f"not reachable at {ollama.get('url')}"
        loaded = self.local.get("loaded") or []
        if loaded:
            local = "; ".join(_describe_loaded(entry) for entry in loaded)
        else:
            local = f"not loaded (loads on first use: {', '.join(self.local.get('configured') or [])})"
            if "precision" in self.local:
                local += f"; {_describe_precision(self.local['precision'])}"
        storage = self.storage
        writable = "writable" if storage.get("writable") else "NOT writable"
        free = storage.get("free_bytes")
        free_text = f", {free / 2**30:.1f} GiB free" if isinstance(free, int) else ""
        accounts = self.accounts
        lines = [f"Ollama: {engine}"]
        if self.openai is not None:
            server = self.openai
            if server.get("reachable") and "models" in server:
                listed = ", ".join(server["models"]) or "no models listed"
                lines.append(f"OpenAI-compatible server: reachable at {server['url']}: {listed}")
            else:
                lines.append(f"OpenAI-compatible server at {server.get('url')}: {server.get('error')}")
        lines += [
            f"Local model: {local}",
            f"Data: {storage.get('path')} ({writable}{free_text})",
            f"Accounts: {accounts.get('users', '?')} of {accounts.get('max_users')} used",
        ]
        if self.session:
            who = self.session.get("user") or "nobody"
            lines.append(f"Session: {who} logged in" + (" (JupyterHub)" if self.session.get("hub") else ""))
        return lines

    def __str__(self) -> str:
        head = "nbchat health: OK" if self.ok else "nbchat health: PROBLEMS"
        body = [head, *(f"  {line}" for line in self.lines())]
        body += [f"  problem: {p}" for p in self.problems]
        body += [f"  note: {n}" for n in self.notes]
        return "\n".join(body)

    def _repr_markdown_(self) -> str:
        head = "**nbchat health: OK**" if self.ok else "**nbchat health: problems found**"
        body = [head, "", *(f"- {_escape(line)}" for line in self.lines())]
        if self.problems:
            body += ["", "**To fix:**", *(f"- {_escape(p)}" for p in self.problems)]
        if self.notes:
            body += ["", *(f"- *{_escape(n)}*" for n in self.notes)]
        return "\n".join(body)


def check_health(config: Config | None = None, session: dict[str, Any] | None = None) -> HealthReport:
    """Check the Ollama server, the local model, the data dir and the accounts file now."""
    from nbchat.accounts import read_users_file
    from nbchat.backends import backend_for

    config = config or load_config()
    ollama = backend_for("ollama", config).health()
    local = backend_for("transformers", config).health()
    local["precision"] = _precision(config)
    storage = _check_storage(config)
    accounts: dict[str, Any] = {"max_users": config.max_users}
    try:
        accounts["users"] = len(read_users_file(config.users_file))  # no bcrypt, no lock: a count
    except NbchatError as exc:
        accounts["error"] = str(exc)
    except OSError as exc:  # e.g. the data dir's parent is a file: storage reports the fix
        accounts["error"] = f"The accounts file cannot be read: {exc.strerror or exc}."

    openai: dict[str, Any] | None = None
    if config.openai_base_url:
        try:
            openai = backend_for("openai", config).health()
        except NbchatError as exc:  # an unusable OPENAI_BASE_URL
            openai = {
                "engine": "openai",
                "url": config.openai_base_url,
                "reachable": False,
                "error": str(exc),
            }
    report = HealthReport(ollama, local, storage, accounts, session or {}, openai)
    if openai is not None and openai.get("error"):
        report.notes.append(f"{openai['error']} (openai: models)")
    if not storage["writable"]:
        report.problems.append(
            f"The data dir {storage['path']} is not writable ({storage.get('error')}): "
            "set NBCHAT_DATA_DIR to a directory you own."
        )
    if "error" in accounts:
        report.problems.append(accounts["error"])
    if not ollama.get("reachable"):
        report.notes.append(
            f"{ollama.get('error') or 'Ollama is not reachable.'} Local models ('qwen3') still work."
        )
    elif not ollama.get("models"):
        report.notes.append("Ollama has no models yet: `ollama pull qwen3:1.7b` fetches one.")
    return report


def _check_storage(config: Config) -> dict[str, Any]:
    from nbchat.files import ensure_private_dir

    path = config.data_dir
    report: dict[str, Any] = {"path": str(path), "writable": False}
    try:
        ensure_private_dir(path)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".health-", delete=True):
            pass
        report["writable"] = True
        report["free_bytes"] = shutil.disk_usage(path).free
    except OSError as exc:
        report["error"] = f"{type(exc).__name__}: {exc.strerror or exc}"
    return report


def _precision(config: Config) -> dict[str, Any]:
    """The dtype setting of local models and what ``auto`` finds on this CPU (no torch: the flags)."""
    from nbchat.backends.local.precision import cpu_bf16_feature, cpu_flags

    flags = cpu_flags()
    return {
        "setting": config.qwen_dtype,
        "source": config.qwen_dtype_source,
        "cpu_bf16": cpu_bf16_feature(flags) if flags is not None else None,
    }


def _describe_precision(precision: dict[str, Any]) -> str:
    setting = precision.get("setting")
    if setting != "auto":
        return f"precision {setting}, set by {precision.get('source')}"
    feature = precision.get("cpu_bf16")
    on_cpu = f"bfloat16 on this CPU ({feature})" if feature else "float32 on this CPU (no native bf16)"
    return f"precision auto: {on_cpu}, half precision on a GPU"


def _describe_loaded(entry: dict[str, Any]) -> str:
    memory = entry.get("process_rss_bytes") or entry.get("memory_bytes")
    size = f", {memory / 2**20:.0f} MiB" if isinstance(memory, int) else ""
    why = entry.get("dtype_reason") or entry.get("dtype")
    return f"{entry.get('model')} on {entry.get('device')} ({why}{size})"


def _escape(text: str) -> str:
    return text.replace("*", r"\*").replace("_", r"\_")
