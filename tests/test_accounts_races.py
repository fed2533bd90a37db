"""Account changes that race with another kernel between the password check and the change:
a change checked against one account must never land on a later account of the same name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conftest import CHEAP_KDF, PASSWORD, FakeClock
from nbchat import Accounts, AuthenticationFailed, Config

NEW_OWNER = "the new owner's password"


class Interleaved(Accounts):
    """Accounts whose next password check is followed at once by ``meanwhile`` (another kernel's work)."""

    meanwhile: Callable[[], Any] | None = None

    def _authenticate(self, username: str, password: str) -> tuple[str, dict[str, Any]]:
        checked = super()._authenticate(username, password)
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return checked


@pytest.fixture
def other(config: Config, clock: FakeClock) -> Accounts:
    """Another kernel on the same data dir."""
    return Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF, clock=clock)


@pytest.fixture
def slow(config: Config, clock: FakeClock, other: Accounts) -> Interleaved:
    """A kernel that, right after checking eve's old password, lets ``other`` replace her account."""
    other.register("eve", PASSWORD)
    slow = Interleaved(config, bcrypt_rounds=4, clock=clock)

    def replace_eve() -> None:
        other.delete_account("eve", PASSWORD)
        other.register("eve", NEW_OWNER)
        other.login("eve", NEW_OWNER).conversations.create("the new owner's chat")

    slow.meanwhile = replace_eve
    return slow


def test_a_password_change_checked_against_a_replaced_account_changes_nothing(
    slow: Interleaved, other: Accounts
) -> None:
    with pytest.raises(AuthenticationFailed):
        slow.change_password("eve", PASSWORD, "the old owner's new one")
    titles = [c.title for c in other.login("eve", NEW_OWNER).conversations.list()]
    assert titles == ["the new owner's chat"]


def test_a_deletion_checked_against_a_replaced_account_deletes_nothing(
    slow: Interleaved, other: Accounts
) -> None:
    with pytest.raises(AuthenticationFailed):
        slow.delete_account("eve", PASSWORD)
    titles = [c.title for c in other.login("eve", NEW_OWNER).conversations.list()]
    assert titles == ["the new owner's chat"]


class InterleavedCheck(Accounts):
    """Accounts whose next password check is followed at once (before the login ends) by ``meanwhile``."""

    meanwhile: Callable[[], Any] | None = None

    def _password_matches(self, password: object, stored: bytes) -> bool:
        matches = super()._password_matches(password, stored)
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return matches


def test_a_login_whose_password_is_changed_during_its_check_is_refused(
    config: Config, clock: FakeClock, other: Accounts
) -> None:
    """Not a login that looks fine and then says NotLoggedIn at its first use."""
    other.register("eve", PASSWORD)
    slow = InterleavedCheck(config, bcrypt_rounds=4, clock=clock)
    slow.meanwhile = lambda: other.change_password("eve", PASSWORD, NEW_OWNER)
    with pytest.raises(AuthenticationFailed):
        slow.login("eve", PASSWORD)
    assert slow.login("eve", NEW_OWNER).conversations.list() == []
