"""Local accounts: who may register, how logins are checked and throttled, and what
changing or deleting an account does."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import bcrypt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CHEAP_KDF, PASSWORD
from nbchat import (
    Accounts,
    AuthenticationFailed,
    Config,
    CorruptFile,
    InvalidPassword,
    InvalidUsername,
    LoginThrottled,
    Message,
    NbchatWarning,
    NotLoggedIn,
    UnsupportedVersion,
    UserLimitReached,
    UsernameTaken,
)
from nbchat.accounts import FREE_FAILURES, MAX_DELAY_S, login_delay
from nbchat.usernames import check_username

# -- usernames ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "Bob", "a", "x" * 32, "first.last", "a-b_c", "0day", "con2"])
def test_valid_usernames(name: str) -> None:
    assert check_username(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "Choose a username"),
        ("x" * 33, "33 characters"),
        ("../x", "'/' is not allowed"),
        ("..", "cannot start with '.'"),
        (".hidden", "cannot start with '.'"),
        ("trailing.", "cannot end with '.'"),
        ("a/b", "'/' is not allowed"),
        ("a\\b", "is not allowed"),
        ("a b", "U+0020 is not allowed"),
        ("tab\t", "U+0009 is not allowed"),
        ("nul\x00", "U+0000 is not allowed"),
        ("new\nline", "U+000A is not allowed"),
        ("CON", "reserved device name"),
        ("nul.txt", "reserved device name"),
        ("LPT1", "reserved device name"),
        ("аlice", "'а' is not allowed"),  # Cyrillic а, a look-alike of Latin a
        ("ａlice", "is not allowed"),  # fullwidth a
        ("alice\u200b", "U+200B is not allowed"),  # zero-width space
        ("ß", "is not allowed"),
        ("a:b", "is not allowed"),
    ],
)
def test_hostile_usernames_are_refused_with_the_rule_they_break(
    accounts: Accounts, name: str, reason: str
) -> None:
    with pytest.raises(InvalidUsername, match=re.escape(reason)):
        check_username(name)
    with pytest.raises(InvalidUsername):
        accounts.register(name, PASSWORD)
    assert not accounts.config.users_file.exists()


@pytest.mark.parametrize("value", [None, 42, b"alice", ["alice"]])
def test_non_text_usernames_are_refused(accounts: Accounts, value: object) -> None:
    with pytest.raises(InvalidUsername, match="must be text"):
        accounts.register(value, PASSWORD)  # type: ignore[arg-type]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=40))
def test_no_accepted_username_can_leave_its_directory(tmp_path: Path, name: str) -> None:
    """Whatever text is tried, a name either is refused or names one plain child directory."""
    try:
        key = check_username(name).lower()
    except InvalidUsername:
        return
    root = tmp_path / "conversations"
    target = (root / key).resolve()
    assert target.parent == root.resolve()
    assert key not in (".", "..") and "/" not in key and "\x00" not in key


# -- registration ---------------------------------------------------------------------------


def test_register_then_login(accounts: Accounts) -> None:
    assert accounts.register("Alice", PASSWORD) == "alice"
    login = accounts.login("alice", PASSWORD)
    assert (login.username, login.display_name) == ("alice", "Alice")
    assert accounts.usernames() == ["Alice"]


def test_usernames_are_case_insensitive_unique(accounts: Accounts) -> None:
    accounts.register("Alice", PASSWORD)
    with pytest.raises(UsernameTaken, match="ignore case"):
        accounts.register("ALICE", "another password")
    assert accounts.login("aLiCe", PASSWORD).username == "alice"


def test_passwords_are_stored_as_salted_bcrypt_hashes(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    accounts.register("bob", PASSWORD)
    raw = accounts.config.users_file.read_text()
    assert PASSWORD not in raw
    users = json.loads(raw)["users"]
    hashes = [users[name]["password_hash"] for name in ("alice", "bob")]
    assert all(h.startswith("$2b$") for h in hashes)
    assert hashes[0] != hashes[1], "same password, different salt"
    assert all(bcrypt.checkpw(PASSWORD.encode(), h.encode()) for h in hashes)


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "at least 8 characters"),
        ("", "at least 8 characters"),
        ("é" * 37, "74 bytes"),  # 37 characters but 74 UTF-8 bytes
        ("x" * 73, "73 bytes"),
        ("x" * 1_000_000, "bytes"),
        ("with\x00nul-inside", "control characters"),
        ("line\nbreak!!", "control characters"),
        ("\ud800surrogate", "valid Unicode"),
        ("alice", "at least 8"),
        ("AliceAlice1", None),
    ],
)
def test_bad_passwords_are_refused_never_truncated(
    accounts: Accounts, password: str, reason: str | None
) -> None:
    if reason is None:  # a control case: a fine password
        accounts.register("alice", password)
        return
    with pytest.raises(InvalidPassword, match=reason):
        accounts.register("alice", password)
    assert accounts.usernames() == []


def test_72_byte_password_is_the_longest_accepted(accounts: Accounts) -> None:
    accounts.register("alice", "é" * 36)  # exactly 72 bytes
    accounts.login("alice", "é" * 36)
    with pytest.raises(AuthenticationFailed):
        accounts.login("alice", "é" * 35)


def test_password_equal_to_username_is_refused(accounts: Accounts) -> None:
    with pytest.raises(InvalidPassword, match="same as the username"):
        accounts.register("longusername", "LongUserName")


def test_non_text_password_is_refused(accounts: Accounts) -> None:
    with pytest.raises(InvalidPassword, match="must be text"):
        accounts.register("alice", b"correct horse")  # type: ignore[arg-type]


def test_user_cap_holds(data_dir: Path, clock) -> None:
    accounts = Accounts(Config(data_dir=data_dir, max_users=3), bcrypt_rounds=4, kdf=CHEAP_KDF, clock=clock)
    for name in ("a1", "a2", "a3"):
        accounts.register(name, PASSWORD)
    with pytest.raises(UserLimitReached, match="NBCHAT_MAX_USERS=3"):
        accounts.register("a4", PASSWORD)
    assert len(accounts.usernames()) == 3


def test_default_cap_is_ten(data_dir: Path) -> None:
    accounts = Accounts(Config(data_dir=data_dir), bcrypt_rounds=4, kdf=CHEAP_KDF)
    for i in range(10):
        accounts.register(f"user{i}", PASSWORD)
    with pytest.raises(UserLimitReached):
        accounts.register("user10", PASSWORD)


def test_files_are_private(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    login = accounts.login("alice", PASSWORD)
    conversation = login.conversations.create("Private")
    data_dir = accounts.config.data_dir
    conversation_file = login.conversations.directory / f"{conversation.id}.jsonl"
    for directory in (data_dir, data_dir / "conversations", login.conversations.directory):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for file in (accounts.config.users_file, conversation_file):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file


def test_existing_loose_data_dir_is_tightened(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    Accounts(Config(data_dir=data_dir), bcrypt_rounds=4, kdf=CHEAP_KDF).register("alice", PASSWORD)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


# -- login and throttling -------------------------------------------------------------------


def test_wrong_password_and_unknown_user_give_the_same_answer(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    with pytest.raises(AuthenticationFailed) as wrong_password:
        accounts.login("alice", "not the password")
    with pytest.raises(AuthenticationFailed) as unknown_user:
        accounts.login("mallory", "not the password")
    assert str(wrong_password.value) == str(unknown_user.value) == "Wrong username or password."


@pytest.mark.parametrize("password", [None, 12345678, "x" * 100, "\ud800bad"])
def test_malformed_password_at_login_is_just_a_failed_login(accounts: Accounts, password) -> None:
    accounts.register("alice", PASSWORD)
    with pytest.raises(AuthenticationFailed):
        accounts.login("alice", password)


def test_login_delay_grows_after_five_failures_up_to_a_cap() -> None:
    assert [login_delay(n) for n in range(FREE_FAILURES)] == [0.0] * FREE_FAILURES
    delays = [login_delay(n) for n in range(FREE_FAILURES, FREE_FAILURES + 12)]
    assert delays[:4] == [2.0, 4.0, 8.0, 16.0]
    assert delays == sorted(delays) and delays[-1] == MAX_DELAY_S


def test_failed_logins_are_throttled_even_with_the_right_password(accounts: Accounts, clock) -> None:
    accounts.register("alice", PASSWORD)
    for _ in range(FREE_FAILURES):
        with pytest.raises(AuthenticationFailed):
            accounts.login("alice", "guess")
    with pytest.raises(LoginThrottled, match="try again in 2 s") as throttled:
        accounts.login("alice", PASSWORD)
    assert throttled.value.retry_after == pytest.approx(2.0)
    clock.advance(2.0)
    with pytest.raises(AuthenticationFailed):  # one more wrong guess doubles the wait
        accounts.login("alice", "guess")
    clock.advance(3.9)
    with pytest.raises(LoginThrottled):
        accounts.login("alice", PASSWORD)
    clock.advance(0.2)
    assert accounts.login("alice", PASSWORD).username == "alice"
    with pytest.raises(AuthenticationFailed):  # success reset the count: no throttle now
        accounts.login("alice", "guess")


def test_unknown_names_are_throttled_exactly_like_real_ones(accounts: Accounts, clock) -> None:
    accounts.register("alice", PASSWORD)
    outcomes = {}
    for name in ("alice", "nobody"):
        for _ in range(FREE_FAILURES):
            with pytest.raises(AuthenticationFailed):
                accounts.login(name, "guess")
        with pytest.raises(LoginThrottled) as throttled:
            accounts.login(name, "guess")
        outcomes[name] = str(throttled.value).replace(repr(name), "NAME")
    assert outcomes["alice"] == outcomes["nobody"]


def test_throttling_is_per_name_and_case_insensitive(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    accounts.register("bob", PASSWORD)
    for _ in range(FREE_FAILURES):
        with pytest.raises(AuthenticationFailed):
            accounts.login("alice", "guess")
    with pytest.raises(LoginThrottled):
        accounts.login("ALICE", PASSWORD)
    assert accounts.login("bob", PASSWORD).username == "bob"


def test_throttling_is_shared_by_every_kernel_of_the_data_dir(accounts: Accounts, config, clock) -> None:
    accounts.register("alice", PASSWORD)
    for _ in range(FREE_FAILURES):
        with pytest.raises(AuthenticationFailed):
            accounts.login("alice", "guess")
    other_kernel = Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF, clock=clock)
    with pytest.raises(LoginThrottled):
        other_kernel.login("alice", PASSWORD)


@pytest.mark.reliability
def test_brute_force_rate_is_bounded(accounts: Accounts, clock) -> None:
    """An attacker waiting exactly as long as told gets few guesses: count them over a day.

    5 free guesses, then waits of 2, 4, ... up to 300 s: measured 23 guesses in the first hour,
    then 12 an hour (one every 5 minutes), 299 in a day.
    """
    accounts.register("alice", PASSWORD)
    start, guesses, per_hour = clock.now, 0, []
    while clock.now - start < 24 * 3600:
        hour = int((clock.now - start) // 3600)
        try:
            accounts.login("alice", f"guess{guesses}")
        except LoginThrottled as exc:
            clock.advance(exc.retry_after)
        except AuthenticationFailed:
            guesses += 1
            per_hour.extend([0] * (hour + 1 - len(per_hour)))
            per_hour[hour] += 1
    print(f"guesses per hour: {per_hour}")
    assert per_hour[0] <= 25, f"{per_hour[0]} guesses in the first hour"
    assert max(per_hour[1:]) <= 12, f"{per_hour} guesses per hour"
    assert guesses <= 25 + 23 * 12


def test_corrupt_throttle_file_is_moved_aside_and_login_still_works(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    with pytest.raises(AuthenticationFailed):
        accounts.login("alice", "guess")
    throttle_file = accounts.config.data_dir / "login-failures.json"
    throttle_file.write_text("{broken")
    with pytest.warns(NbchatWarning, match="moved"):
        assert accounts.login("alice", PASSWORD).username == "alice"
    assert list(throttle_file.parent.glob("login-failures.json.corrupt-*"))


# -- logout, password change, deletion ------------------------------------------------------


def test_logout_ends_access_to_the_users_conversations(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    login = accounts.login("alice", PASSWORD)
    conversation = login.conversations.create("Secret plans")
    login.conversations.append(conversation.id, Message("user", "hello"))
    accounts.logout(login)
    assert login.closed
    with pytest.raises(NotLoggedIn):
        login.conversations.list()
    with pytest.raises(NotLoggedIn):
        login.conversations.get(conversation.id)
    assert "Secret plans" not in repr(vars(login.conversations))
    again = accounts.login("alice", PASSWORD)
    assert [c.title for c in again.conversations.list()] == ["Secret plans"]


def test_change_password(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    accounts.change_password("alice", PASSWORD, "battery staple")
    with pytest.raises(AuthenticationFailed):
        accounts.login("alice", PASSWORD)
    assert accounts.login("alice", "battery staple").username == "alice"


def test_change_password_needs_the_old_one_and_checks_the_new(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    with pytest.raises(AuthenticationFailed):
        accounts.change_password("alice", "wrong password", "battery staple")
    with pytest.raises(InvalidPassword):
        accounts.change_password("alice", PASSWORD, "short")
    assert accounts.login("alice", PASSWORD).username == "alice"


def test_delete_account_removes_the_user_and_every_conversation(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    accounts.register("bob", PASSWORD)
    alice = accounts.login("alice", PASSWORD)
    alice.conversations.create("Mine")
    bob = accounts.login("bob", PASSWORD)
    bob.conversations.create("Bob's")
    accounts.delete_account("alice", PASSWORD)
    assert accounts.usernames() == ["bob"]
    conversations_dir = accounts.config.conversations_dir
    assert sorted(p.name for p in conversations_dir.iterdir()) == ["bob"]
    assert [c.title for c in bob.conversations.list()] == ["Bob's"]
    accounts.register("alice", "a new password")
    assert accounts.login("alice", "a new password").conversations.list() == []


def test_delete_account_requires_the_password(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    accounts.login("alice", PASSWORD).conversations.create("Keep me")
    with pytest.raises(AuthenticationFailed):
        accounts.delete_account("alice", "wrong password")
    assert [c.title for c in accounts.login("alice", PASSWORD).conversations.list()] == ["Keep me"]


def test_new_account_never_inherits_leftover_files(accounts: Accounts) -> None:
    """Files left under a name with no account (say, after a crash) are set aside, not inherited."""
    leftover = accounts.config.conversations_dir / "alice"
    leftover.mkdir(parents=True)
    (leftover / ("0" * 32 + ".jsonl")).write_text("old\n")
    with pytest.warns(NbchatWarning, match="moved aside"):
        accounts.register("alice", PASSWORD)
    assert accounts.login("alice", PASSWORD).conversations.list() == []
    assert list(accounts.config.conversations_dir.glob(".orphaned-alice-*/*.jsonl"))


# -- a damaged or newer accounts file -------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"users": {}}',
        '{"version": 1, "users": {"../evil": {}}}',
        '{"version": 1, "users": {"alice": {"name": "Alice"}}}',
    ],
)
def test_damaged_accounts_file_is_reported_and_never_overwritten(accounts: Accounts, content: str) -> None:
    users_file = accounts.config.users_file
    users_file.parent.mkdir(parents=True)
    users_file.write_text(content)
    with pytest.raises(CorruptFile, match="will not overwrite") as error:
        accounts.register("bob", PASSWORD)
    assert error.value.path == users_file
    with pytest.raises(CorruptFile):
        accounts.login("bob", PASSWORD)
    assert users_file.read_text() == content


def test_accounts_file_from_a_newer_nbchat_is_left_alone(accounts: Accounts) -> None:
    users_file = accounts.config.users_file
    users_file.parent.mkdir(parents=True)
    users_file.write_text('{"version": 2, "users": {}}')
    with pytest.raises(UnsupportedVersion, match="newer nbchat"):
        accounts.register("bob", PASSWORD)
    assert users_file.read_text() == '{"version": 2, "users": {}}'


def test_a_login_ends_when_its_account_is_deleted(accounts: Accounts) -> None:
    accounts.register("eve", PASSWORD)
    old = accounts.login("eve", PASSWORD)
    old.conversations.create("Old chat")
    accounts.delete_account("eve", PASSWORD)
    accounts.register("eve", "someone else's password")
    accounts.login("eve", "someone else's password").conversations.create("New owner's chat")
    with pytest.raises(NotLoggedIn, match=r"deleted.* since this login"):
        old.conversations.list()
    with pytest.raises(NotLoggedIn):
        old.conversations.create("Planted")
    titles = [s.title for s in accounts.login("eve", "someone else's password").conversations.list()]
    assert titles == ["New owner's chat"]


def test_a_success_resets_the_failure_count_for_every_kernel(accounts: Accounts, config, clock) -> None:
    accounts.register("alice", PASSWORD)
    for _ in range(FREE_FAILURES - 1):
        with pytest.raises(AuthenticationFailed):
            accounts.login("alice", "guess")
    Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF, clock=clock).login("alice", PASSWORD)
    for _ in range(FREE_FAILURES):
        with pytest.raises(AuthenticationFailed):
            accounts.login("alice", "guess")
