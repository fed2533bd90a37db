"""nbchat: a multi-user LLM chat that lives inside Jupyter.

``import nbchat`` stays light: torch and transformers are imported only when a
local model is first used.
"""

from nbchat.accounts import Accounts, Login
from nbchat.config import Config, load_config
from nbchat.errors import (
    AccountError,
    AuthenticationFailed,
    ConfigError,
    ConversationNotFound,
    CorruptFile,
    InvalidPassword,
    InvalidUsername,
    InvalidValue,
    LoginThrottled,
    NbchatError,
    NbchatWarning,
    NotLoggedIn,
    StoreBusy,
    StoreError,
    UnsupportedVersion,
    UserLimitReached,
    UsernameTaken,
)
from nbchat.store import ConversationStore
from nbchat.types import Conversation, ConversationSettings, ConversationSummary, Message

__version__ = "0.1.0"

__all__ = [
    "AccountError",
    "Accounts",
    "AuthenticationFailed",
    "Config",
    "ConfigError",
    "Conversation",
    "ConversationNotFound",
    "ConversationSettings",
    "ConversationStore",
    "ConversationSummary",
    "CorruptFile",
    "InvalidPassword",
    "InvalidUsername",
    "InvalidValue",
    "Login",
    "LoginThrottled",
    "Message",
    "NbchatError",
    "NbchatWarning",
    "NotLoggedIn",
    "StoreBusy",
    "StoreError",
    "UnsupportedVersion",
    "UserLimitReached",
    "UsernameTaken",
    "load_config",
]
