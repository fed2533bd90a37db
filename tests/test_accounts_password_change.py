"""A password change ends every other login of the account, in this kernel and in others, and
hands the kernel that made it a fresh login; accounts from before login tokens keep working."""

from __future__ import annotations

import pytest

from conftest import CHEAP_KDF, PASSWORD, FakeClock
from nbchat import Accounts, Config, Login, NotLoggedIn
from nbchat.store import ACCOUNT_MARKER

NEW_PASSWORD = "battery staple"


@pytest.fixture
def other_kernel(config: Config, clock: FakeClock) -> Accounts:
    """The same data dir seen from another kernel."""
    return Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF, clock=clock)


def test_a_password_change_ends_the_logins_of_other_kernels(
    accounts: Accounts, other_kernel: Accounts
) -> None:
    accounts.register("alice", PASSWORD)
    accounts.login("alice", PASSWORD).conversations.create("Plans")
    elsewhere = other_kernel.login("alice", PASSWORD)  # say, a laptop left logged in
    assert [c.title for c in elsewhere.conversations.list()] == ["Plans"]

    accounts.change_password("alice", PASSWORD, NEW_PASSWORD)
    with pytest.raises(NotLoggedIn, match="since this login"):
        elsewhere.conversations.list()
    with pytest.raises(NotLoggedIn):
        elsewhere.conversations.create("planted after the change")


def test_the_kernel_that_changed_the_password_gets_a_fresh_login(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    before = accounts.login("alice", PASSWORD)
    before.conversations.create("Plans")

    after = accounts.change_password("alice", PASSWORD, NEW_PASSWORD)
    assert isinstance(after, Login) and (after.username, after.display_name) == ("alice", "alice")
    assert [c.title for c in after.conversations.list()] == ["Plans"]
    with pytest.raises(NotLoggedIn):  # the login from before the change ended here too
        before.conversations.list()
    assert [c.title for c in accounts.login("alice", NEW_PASSWORD).conversations.list()] == ["Plans"]


def test_every_password_change_gets_a_new_login_token(accounts: Accounts) -> None:
    """Until the first change the account id serves as the token (and as the directory's marker)."""
    accounts.register("alice", PASSWORD)
    marker = accounts.config.conversations_dir / "alice" / ACCOUNT_MARKER
    record = accounts._read_users()["alice"]
    assert "login_token" not in record and marker.read_text() == record["account_id"] + "\n"
    tokens = [record["account_id"]]
    for old, new in ((PASSWORD, NEW_PASSWORD), (NEW_PASSWORD, PASSWORD)):
        accounts.change_password("alice", old, new)
        tokens.append(accounts._read_users()["alice"]["login_token"])
        assert marker.read_text() == tokens[-1] + "\n"
    assert len(set(tokens)) == 3


def test_a_login_before_the_first_password_change_ends_with_it(accounts: Accounts) -> None:
    """Records without login_token (every account until its first change, and those of older
    nbchat) open their store with the account id, which the change replaces."""
    accounts.register("alice", PASSWORD)
    old = accounts.login("alice", PASSWORD)
    old.conversations.create("from before the change")
    new = accounts.change_password("alice", PASSWORD, NEW_PASSWORD)
    assert [c.title for c in new.conversations.list()] == ["from before the change"]
    with pytest.raises(NotLoggedIn):
        old.conversations.list()
