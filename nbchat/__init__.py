"""nbchat: a multi-user LLM chat that lives inside Jupyter.

``import nbchat`` stays light: torch and transformers are imported only when a
local model is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nbchat.accounts import Accounts, Login
from nbchat.config import Config, load_config
from nbchat.errors import (
    AccountError,
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    ConfigError,
    ContextOverflow,
    ConversationEncrypted,
    ConversationNotFound,
    CorruptFile,
    GenerationFailed,
    HubAccountConflict,
    HubSecretMismatch,
    InvalidPassword,
    InvalidUsername,
    InvalidValue,
    KeyRecordInvalid,
    KeyUnlockFailed,
    LoginThrottled,
    ModelNotChosen,
    ModelNotFound,
    NbchatError,
    NbchatWarning,
    NoConversation,
    NotLoggedIn,
    PolicyError,
    ReplyInProgress,
    SessionError,
    StorageFailed,
    StorageFull,
    StoreBusy,
    StoreError,
    UnsupportedVersion,
    UserLimitReached,
    UsernameTaken,
)
from nbchat.health import HealthReport
from nbchat.history import estimate_tokens, truncate_history
from nbchat.reply import Reply
from nbchat.session import ChatSession, get_session
from nbchat.store import ConversationStore
from nbchat.types import ContextItem, Conversation, ConversationSettings, ConversationSummary, Message

if TYPE_CHECKING:
    from nbchat.notebook import CodeBlock  # imports markdown-it only when used


def panel(session: ChatSession | None = None) -> None:
    """Show the chat panel in this cell (``nbchat.ChatPanel()`` gives the widget itself)."""
    from nbchat.panel import panel as show

    show(session)


def __getattr__(name: str) -> object:
    # ChatPanel needs ipywidgets: imported on first use, so ``import nbchat`` stays light.
    if name == "ChatPanel":
        from nbchat.panel import ChatPanel

        return ChatPanel
    raise AttributeError(f"module 'nbchat' has no attribute {name!r}")


def code_blocks(source: str | Reply | Message) -> list[CodeBlock]:
    """The fenced code blocks of a reply, a message or Markdown text: ``[CodeBlock(language, code), ...]``."""
    from nbchat.notebook import code_blocks as blocks

    return blocks(source)


def models() -> list[str]:
    """Model ids available now: the Ollama server's models (if reachable) and the local ``qwen3``."""
    return get_session().models()


def health() -> HealthReport:
    """Check Ollama, the local model, the data dir and accounts; pretty in a notebook."""
    return get_session().health()


def last_reply() -> Reply | None:
    """The latest reply of this kernel's session (from the panel, the magic or ``send``)."""
    return get_session().reply


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext nbchat``: register the ``%chat`` and ``%%chat`` magics."""
    from nbchat.magic import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext nbchat``: stop protecting ``%chat`` questions from IPython's ``?`` help."""
    from nbchat.magic import unload_ipython_extension as unload

    unload(ipython)


__version__ = "0.1.0"

__all__ = [
    "AccountError",
    "Accounts",
    "AuthenticationFailed",
    "BackendError",
    "BackendUnavailable",
    "ChatPanel",
    "ChatSession",
    "Config",
    "ConfigError",
    "ContextItem",
    "ContextOverflow",
    "Conversation",
    "ConversationEncrypted",
    "ConversationNotFound",
    "ConversationSettings",
    "ConversationStore",
    "ConversationSummary",
    "CorruptFile",
    "GenerationFailed",
    "HealthReport",
    "HubAccountConflict",
    "HubSecretMismatch",
    "InvalidPassword",
    "InvalidUsername",
    "InvalidValue",
    "KeyRecordInvalid",
    "KeyUnlockFailed",
    "Login",
    "LoginThrottled",
    "Message",
    "ModelNotChosen",
    "ModelNotFound",
    "NbchatError",
    "NbchatWarning",
    "NoConversation",
    "NotLoggedIn",
    "PolicyError",
    "Reply",
    "ReplyInProgress",
    "SessionError",
    "StorageFailed",
    "StorageFull",
    "StoreBusy",
    "StoreError",
    "UnsupportedVersion",
    "UserLimitReached",
    "UsernameTaken",
    "code_blocks",
    "estimate_tokens",
    "get_session",
    "health",
    "last_reply",
    "load_config",
    "load_ipython_extension",
    "models",
    "panel",
    "truncate_history",
    "unload_ipython_extension",
]
