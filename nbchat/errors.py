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


class StoreError(NbchatError):
    """Conversation storage failed or was asked for something impossible."""


class ConversationNotFound(StoreError):
    """No conversation of the logged-in user has that id."""


class InvalidValue(StoreError):
    """A title, setting or message field has a value nbchat refuses."""


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
