"""Login throttling under attack and damage: huge failure counts, sprayed names, deeply nested or
huge files, and a damaged users.json, none of which may lock out the right password for good."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from conftest import CHEAP_KDF, PASSWORD, FakeClock
from nbchat import Accounts, AuthenticationFailed, Config, CorruptFile, LoginThrottled, NbchatWarning
from nbchat.accounts import (
    FREE_FAILURES,
    MAX_DELAY_S,
    MAX_FAILURES_PER_MINUTE,
    MAX_THROTTLED_NAMES,
    login_delay,
)

DEEP = "[" * 100_000 + "]" * 100_000


def throttle_file(accounts: Accounts) -> Path:
    return accounts.data_dir / "login-failures.json"


def write_throttle(accounts: Accounts, failures: dict[str, dict[str, float]], **extra: object) -> None:
    payload = {"version": 1, "failures": failures, **extra}
    throttle_file(accounts).write_text(json.dumps(payload), encoding="utf-8")


def from_a_deep_stack(call: Callable[[], object], frames: int = 100) -> object:
    """``call()`` from ``frames`` calls deeper, as from inside a Jupyter kernel's own call stack."""
    return call() if frames == 0 else from_a_deep_stack(call, frames - 1)


def fail_login(accounts: Accounts, name: str) -> None:
    with pytest.raises(AuthenticationFailed):
        accounts.login(name, "a wrong guess")


# -- defect 6: the delay's exponent ----------------------------------------------------------


@pytest.mark.parametrize("failures", [1_028, 1_100, 10**6, 10**400], ids=["1028", "1100", "1e6", "1e400"])
def test_the_delay_stays_capped_for_any_number_of_failures(failures: int) -> None:
    assert login_delay(failures) == MAX_DELAY_S


def test_the_right_password_works_after_a_thousand_spaced_failures(accounts: Accounts, clock) -> None:
    """~1,028 failed logins spaced by the delay (about 86 hours): the right password still works."""
    accounts.register("alice", PASSWORD)
    write_throttle(accounts, {"alice": {"count": 1_100, "last": clock.now - MAX_DELAY_S}})
    assert accounts.login("alice", PASSWORD).username == "alice"


@pytest.mark.parametrize(
    "last",
    [float("inf"), float("nan"), 1e308, 10**400, "future"],
    ids=["inf", "nan", "1e308", "int-1e400", "future"],
)
def test_an_impossible_failure_time_never_locks_a_name_out(accounts: Accounts, clock, last) -> None:
    """A failure 'in the future' (a clock set back, a tampered file) is forgotten, not waited for."""
    accounts.register("alice", PASSWORD)
    when = clock.now + 10**9 if last == "future" else last
    write_throttle(accounts, {"alice": {"count": 50, "last": when}})
    assert accounts.login("alice", PASSWORD).username == "alice"


# -- defect 12: deeply nested files ----------------------------------------------------------


def test_a_deeply_nested_throttle_file_is_moved_aside(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    throttle_file(accounts).write_text('{"version": 1, "failures": ' + DEEP + "}")
    with pytest.warns(NbchatWarning, match="moved"):
        assert accounts.login("alice", PASSWORD).username == "alice"
    assert list(accounts.data_dir.glob("login-failures.json.corrupt-*"))


def test_a_deeply_nested_users_json_is_one_damaged_file_never_overwritten(accounts: Accounts) -> None:
    users_file = accounts.config.users_file
    users_file.parent.mkdir(parents=True)
    users_file.write_text(DEEP)
    for attempt in (lambda: accounts.register("bob", PASSWORD), lambda: accounts.login("bob", PASSWORD)):
        with pytest.raises(CorruptFile, match="will not overwrite") as error:
            attempt()
        assert error.value.path == users_file
    assert users_file.read_text() == DEEP


def test_an_account_holding_a_field_too_deep_to_write_back_is_reported_as_damage(accounts: Accounts) -> None:
    """950 levels decode, but writing them back from a deeper call stack would raise RecursionError."""
    accounts.register("alice", PASSWORD)
    users_file = accounts.config.users_file
    users = json.loads(users_file.read_text())
    users["users"]["alice"]["notes"] = json.loads("[" * 950 + "]" * 950)
    users_file.write_text(json.dumps(users))
    before = users_file.read_text()
    with pytest.raises(CorruptFile, match="nested"):
        from_a_deep_stack(lambda: accounts.register("bob", PASSWORD))
    assert users_file.read_text() == before


# -- defect 13: a damaged users.json is not the user's failure -------------------------------


def test_logins_refused_over_a_damaged_users_json_cost_no_attempts(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    users_file = accounts.config.users_file
    good = users_file.read_bytes()
    users_file.write_text("{damaged")
    for _ in range(FREE_FAILURES + 3):
        with pytest.raises(CorruptFile):
            accounts.login("alice", PASSWORD)
    users_file.write_bytes(good)  # repaired from a backup
    assert accounts.login("alice", PASSWORD).username == "alice"


# -- defect 14b: the dummy hash --------------------------------------------------------------


def test_the_dummy_hash_is_made_up_front_at_the_configured_cost(
    config: Config, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So the first unknown name costs one bcrypt check, like a real name, and no hashing."""
    made: list[bytes] = []
    real_hashpw = bcrypt.hashpw

    def recording_hashpw(password: bytes, salt: bytes) -> bytes:
        made.append(salt)
        return real_hashpw(password, salt)

    monkeypatch.setattr(bcrypt, "hashpw", recording_hashpw)
    accounts = Accounts(config, bcrypt_rounds=5, kdf=CHEAP_KDF, clock=clock)
    assert len(made) == 1 and made[0].startswith(b"$2b$05$")
    fail_login(accounts, "nobody")
    assert len(made) == 1


# -- defect 14c: a limit across names --------------------------------------------------------


def test_failures_sprayed_across_names_throttle_every_login_of_the_data_dir(
    accounts: Accounts, clock: FakeClock
) -> None:
    accounts.register("alice", PASSWORD)
    for number in range(MAX_FAILURES_PER_MINUTE):
        fail_login(accounts, f"sprayed{number}")
        clock.advance(0.5)
    with pytest.raises(LoginThrottled, match="across all names") as throttled:
        accounts.login("alice", PASSWORD)  # even the right password, even a name never tried
    assert 0 < throttled.value.retry_after <= 60
    clock.advance(throttled.value.retry_after)
    assert accounts.login("alice", PASSWORD).username == "alice"


def test_the_limit_across_names_is_shared_by_every_kernel(accounts: Accounts, config: Config, clock) -> None:
    for number in range(MAX_FAILURES_PER_MINUTE):
        fail_login(accounts, f"sprayed{number}")
    with pytest.raises(LoginThrottled, match="across all names"):
        Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF, clock=clock).login("alice", PASSWORD)


def test_failures_spread_over_more_than_a_minute_are_not_limited_across_names(
    accounts: Accounts, clock: FakeClock
) -> None:
    accounts.register("alice", PASSWORD)
    for number in range(3 * MAX_FAILURES_PER_MINUTE):
        fail_login(accounts, f"typo{number}")
        clock.advance(60 / MAX_FAILURES_PER_MINUTE + 0.01)
    assert accounts.login("alice", PASSWORD).username == "alice"


# -- defect 14d: a bounded throttle file -----------------------------------------------------


def test_a_throttle_file_of_300k_sprayed_names_is_trimmed_by_one_login(accounts: Accounts, clock) -> None:
    accounts.register("alice", PASSWORD)
    an_hour_ago = clock.now - 3600
    sprayed = {f"n{number}": {"count": 1, "last": an_hour_ago + number / 1000} for number in range(300_000)}
    write_throttle(accounts, sprayed)
    started = time.monotonic()
    assert accounts.login("alice", PASSWORD).username == "alice"
    print(f"one login over 300k names: {time.monotonic() - started:.2f} s")
    kept = json.loads(throttle_file(accounts).read_text())["failures"]
    assert len(kept) <= MAX_THROTTLED_NAMES
    assert "n299999" in kept and "n0" not in kept  # the newest are kept: forgetting only forgives
    started = time.monotonic()
    accounts.login("alice", PASSWORD)
    assert time.monotonic() - started < 1.0


def test_a_class_logging_in_at_once_is_never_throttled_by_its_own_right_passwords(
    data_dir: Path, clock: FakeClock
) -> None:
    """Forty students of one server log in within the same minute: a right password is no failure, so
    none of them waits; the data dir's limit counts only wrong guesses."""
    students = [f"student{i}" for i in range(MAX_FAILURES_PER_MINUTE + 10)]
    accounts = Accounts(Config(data_dir=data_dir, max_users=100), bcrypt_rounds=4, clock=clock, kdf=CHEAP_KDF)
    for name in students:
        accounts.register(name, PASSWORD)
    for name in students:
        assert accounts.login(name, PASSWORD).username == name
    for i in range(MAX_FAILURES_PER_MINUTE):  # wrong guesses sprayed over many names: they do count
        fail_login(accounts, f"nobody{i}")
    with pytest.raises(LoginThrottled, match="across all names"):
        accounts.login("student1", PASSWORD)
