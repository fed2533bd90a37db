"""The nbchat error tree.

Every refusal a user can meet is an ``NbchatError`` whose message says what
went wrong and what to do about it. Catch ``NbchatError`` to handle them all;
catch a subclass to react to one cause.
"""

from __future__ import annotations

from pathlib import Path


class NbchatError(Exception):
    """Base class of every error nbchat raises on purpose."""


class ConfigError(NbchatError):
    """An environment variable or setting has a value nbchat cannot use."""


class AccountError(NbchatError):
    """Registration, login or an account change was refused."""


class InvalidUsername(AccountError):
    """The username breaks the naming rules."""


class InvalidPassword(AccountError):
    """The password is too short, too long for bcrypt, or malformed."""


class UsernameTaken(AccountError):
    """Another account already has this name (names are case-insensitive)."""


class UserLimitReached(AccountError):
    """The installation already has its maximum number of accounts."""


class AuthenticationFailed(AccountError):
    """Wrong username or password; deliberately does not say which."""


class LoginThrottled(AccountError):
    """Too many failed logins for this name; wait before trying again."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotLoggedIn(AccountError):
    """The operation needs a logged-in user (or the login has ended)."""


class InvalidValue(NbchatError):
    """A title, setting, message field, model id or generation parameter nbchat refuses."""


class StoreError(NbchatError):
    """Conversation storage failed or was asked for something impossible."""


class ConversationNotFound(StoreError):
    """No conversation of the logged-in user has that id."""


class CorruptFile(StoreError):
    """A data file could not be read; it was moved aside, never deleted."""

    def __init__(self, message: str, path: Path, moved_to: Path | None) -> None:
        super().__init__(message)
        self.path = path
        self.moved_to = moved_to


class UnsupportedVersion(StoreError):
    """A data file was written by a newer nbchat; it is left untouched."""


class StoreBusy(StoreError):
    """Another process held the data lock for too long."""


class NbchatWarning(UserWarning):
    """Something was repaired or skipped; nothing was lost that had been saved."""


class BackendError(NbchatError):
    """A model engine (Ollama, the local model) failed or refused.

    ``partial_text``/``partial_thinking`` hold what had streamed before the
    failure, so the caller can keep it.
    """

    partial_text: str = ""
    partial_thinking: str = ""


class BackendUnavailable(BackendError):
    """The engine cannot be reached (Ollama not running, model hub unreachable)."""


class ModelNotFound(BackendError):
    """The engine does not have the model asked for."""


class BackendResponseError(BackendError):
    """The engine answered with an error status; carries the server's own message."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class GenerationFailed(BackendError):
    """Generation broke off mid-reply (error line, dropped connection, exception in generate)."""


class BackendTimeout(BackendError):
    """The engine stopped answering for longer than the read timeout."""


class ModelLoadError(BackendError):
    """A local model could not be loaded (missing files, out of memory, unsupported)."""


class ContextOverflow(BackendError):
    """The prompt does not fit the model's context window; ``needed``/``available`` in tokens."""

    def __init__(self, message: str, needed: int | None = None, available: int | None = None) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


class SessionError(NbchatError):
    """The session cannot do that now (nothing selected, no model chosen, a reply in flight)."""


class PolicyError(SessionError):
    """The site policy (``[policy]`` in the site config file) forbids that."""


class NoConversation(SessionError):
    """No conversation is selected."""


class ModelNotChosen(SessionError):
    """The conversation has no model yet: the "choose a model" rule."""


class ReplyInProgress(SessionError):
    """A reply is still streaming in this session."""


class HubAccountConflict(AccountError):
    """A JupyterHub name maps to an account that belongs to someone else (another hub name, or a password)."""


class StorageFailed(StoreError, OSError):
    """The disk refused a read or a write (full, read-only, no permission, I/O error).

    The message names the file and what to do. It is also an ``OSError`` whose
    ``errno`` is the cause's, so code that handled the raw ``OSError`` still does;
    ``path`` is the file concerned.
    """

    def __init__(self, message: str, path: Path, errno: int | None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno  # no strerror/filename: str() stays the message above


class StorageFull(StorageFailed):
    """The disk (or the user's quota) is full: free some space; nothing saved before was lost."""


class UnknownMention(InvalidValue):
    """An ``@name`` in a prompt names nothing in the kernel; ``suggestions`` are close names."""

    def __init__(self, message: str, name: str, suggestions: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.name = name
        self.suggestions = suggestions


class NoContext(InvalidValue):
    """Something to attach was asked for (the last error, recent cells) and there is none."""


class FrontEndUnavailable(NbchatError):
    """Inserting or running a cell needs JupyterLab 4 or Notebook 7, and no such front end answered."""


class MessageNotFound(StoreError):
    """The conversation has no message with that id (to regenerate, edit or switch to)."""


class ExportError(NbchatError):
    """A conversation could not be exported: unknown format, or a file that already exists."""


class SearchError(NbchatError):
    """A search query nbchat cannot run (empty, or not words); the index itself is never the cause."""


class ModelNotDownloaded(ModelLoadError):
    """A hub model is not on this machine yet and this load was not to download it (a warm start)."""


class KeyUnlockFailed(AccountError):
    """An encrypted account's data key could not be unlocked: wrong password, or its key record
    was altered or belongs to another account (deliberately one error for all three)."""


class KeyRecordInvalid(KeyUnlockFailed):
    """The stored key record is malformed (missing field, bad base64, unknown version or kdf,
    parameters out of bounds); refused before any key derivation runs."""


class DamagedLine(StoreError):
    """An encrypted line does not open: damaged, truncated, or moved from another file or position.

    ``conversation_id`` and ``position`` name the line as the caller asked for it.
    """

    def __init__(self, message: str, conversation_id: str, position: int) -> None:
        super().__init__(message)
        self.conversation_id = conversation_id
        self.position = position


class ConversationEncrypted(UnsupportedVersion):
    """A conversation file is encrypted and this store has no key for it (or another account's key).

    Left untouched, like a file of a newer nbchat: logging in with the account's password opens it.
    """


class HubSecretMismatch(KeyUnlockFailed):
    """A JupyterHub account is encrypted under a hub secret this server lacks: ``NBCHAT_HUB_SECRET``
    is unset or another one. The administrator must restore the secret it was made with."""
