"""Each local account's data key (issue 15): made at registration, stored only wrapped under the
password, unwrapped by a login, re-wrapped by a password change, removed first by a deletion, given
to an older account at its next login; every step crash-safe (worker processes SIGKILLed at random
moments and at the ``_reached`` hooks)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from conftest import CHEAP_KDF, PASSWORD, FakeClock
from nbchat import Accounts, Config, crypto
from nbchat.config import Policy, load_config
from nbchat.errors import (
    AuthenticationFailed,
    ConfigError,
    CorruptFile,
    KeyRecordInvalid,
    KeyUnlockFailed,
    NbchatWarning,
)

NEW_PASSWORD = "battery staple"
REPO_ROOT = Path(__file__).resolve().parent.parent
PLAIN = Policy(encrypt_local_accounts=False)
ENCRYPTING = Policy(encrypt_local_accounts=True)


@pytest.fixture
def config(config: Config) -> Config:
    """The shared fixture's config with encryption turned on (it is off unless a site asks)."""
    return replace(config, policy=ENCRYPTING)


def users_file(accounts: Accounts) -> dict[str, Any]:
    return json.loads(accounts.config.users_file.read_bytes())["users"]


def write_old_account(config: Config, name: str, password: str = PASSWORD) -> None:
    """An account as the release before data keys wrote it: no ``data_key``, no directory yet."""
    path = config.users_file
    users = json.loads(path.read_bytes())["users"] if path.exists() else {}
    users[name.lower()] = {
        "name": name,
        "account_id": os.urandom(16).hex(),
        "password_hash": bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode("ascii"),
        "created": "2026-01-05T09:30:05+00:00",
        "password_changed": "2026-01-05T09:30:05+00:00",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "users": users}, indent=2))


def files_under(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time, by relative path: to show nothing was rewritten."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- registration and login ------------------------------------------------------------------------


def test_registration_stores_the_data_key_only_wrapped_under_the_password(accounts: Accounts) -> None:
    accounts.register("Alice", PASSWORD)
    key = accounts.login("alice", PASSWORD).data_key
    assert key is not None and len(key) == crypto.KEY_BYTES

    raw = accounts.config.users_file.read_bytes()
    record = users_file(accounts)["alice"]["data_key"]
    assert set(record) == set(accounts_fields()) and record["kdf"] == "scrypt"
    assert (record["n"], record["r"], record["p"]) == (CHEAP_KDF.n, CHEAP_KDF.r, CHEAP_KDF.p)
    blobs = [base64.b64decode(record[name]) for name in ("salt", "nonce", "wrapped")]
    for form in (key, key.hex().encode(), base64.b64encode(key), base64.urlsafe_b64encode(key).rstrip(b"=")):
        assert form not in raw
        assert not any(form in blob for blob in blobs)
    assert crypto.unwrap_data_key(record, PASSWORD, account="alice") == key


def accounts_fields() -> list[str]:
    from nbchat.accounts import KEY_RECORD_FIELDS

    return list(KEY_RECORD_FIELDS)


def test_every_account_gets_its_own_key(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    accounts.register("bob", PASSWORD)
    alice, bob = accounts.login("alice", PASSWORD).data_key, accounts.login("bob", PASSWORD).data_key
    assert alice is not None and bob is not None and alice != bob
    with pytest.raises(KeyUnlockFailed):  # a record copied to another account does not unwrap
        crypto.unwrap_data_key(users_file(accounts)["alice"]["data_key"], PASSWORD, account="bob")


def test_the_key_is_the_same_at_every_login_and_in_every_kernel(accounts: Accounts, config: Config) -> None:
    accounts.register("alice", PASSWORD)
    other_kernel = Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF)
    keys = {accounts.login("alice", PASSWORD).data_key, other_kernel.login("ALICE", PASSWORD).data_key}
    keys.add(accounts.login("alice", PASSWORD).data_key)
    assert len(keys) == 1 and None not in keys


def test_a_wrong_password_gives_no_key(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    with pytest.raises(AuthenticationFailed):
        accounts.login("alice", "wrong password")
    with pytest.raises(KeyUnlockFailed, match="could not be unlocked"):
        crypto.unwrap_data_key(users_file(accounts)["alice"]["data_key"], "wrong password", account="alice")


def test_logout_drops_the_key(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    login = accounts.login("alice", PASSWORD)
    assert login.data_key is not None
    accounts.logout(login)
    assert login.data_key is None and login.closed


def test_a_hub_login_has_no_key(accounts: Accounts) -> None:
    login = accounts.hub_login("carol")
    assert login.data_key is None
    assert "data_key" not in users_file(accounts)["carol"]


# -- password change -------------------------------------------------------------------------------


def test_a_password_change_rewraps_the_same_key_and_rewrites_nothing_else(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    accounts.register("bob", PASSWORD)
    login = accounts.login("alice", PASSWORD)
    login.conversations.create("Plans")
    key, before = login.data_key, users_file(accounts)
    conversations = files_under(accounts.config.conversations_dir / "alice")
    conversations.pop(".account")  # the login token's marker: rewritten by design

    after_login = accounts.change_password("alice", PASSWORD, NEW_PASSWORD)
    assert after_login.data_key == key
    after = users_file(accounts)
    assert after["bob"] == before["bob"]
    changed = {name for name in after["alice"] if after["alice"][name] != before["alice"].get(name)}
    assert changed - {"password_changed"} == {"password_hash", "login_token", "data_key"}  # time: seconds
    assert after["alice"]["data_key"]["salt"] != before["alice"]["data_key"]["salt"]
    now = files_under(accounts.config.conversations_dir / "alice")
    now.pop(".account")
    assert now == conversations

    record = after["alice"]["data_key"]
    assert crypto.unwrap_data_key(record, NEW_PASSWORD, account="alice") == key
    with pytest.raises(KeyUnlockFailed):
        crypto.unwrap_data_key(record, PASSWORD, account="alice")
    assert accounts.login("alice", NEW_PASSWORD).data_key == key


def test_a_password_change_gives_an_older_account_a_key_under_the_new_password(
    accounts: Accounts, config: Config
) -> None:
    write_old_account(config, "alice")
    login = accounts.change_password("alice", PASSWORD, NEW_PASSWORD)
    assert login.data_key is not None
    record = users_file(accounts)["alice"]["data_key"]
    assert crypto.unwrap_data_key(record, NEW_PASSWORD, account="alice") == login.data_key
    assert accounts.login("alice", NEW_PASSWORD).data_key == login.data_key


# -- deletion --------------------------------------------------------------------------------------


class Stopped(Exception):
    """Raised by ``Halting._reached``: the operation stops there, as a crash would stop it."""


class Halting(Accounts):
    """Accounts that stop half-way at ``step`` (in this process; the worker tests SIGKILL there)."""

    step = ""

    def _reached(self, step: str) -> None:
        if step == self.step:
            raise Stopped(step)


def test_deleting_an_account_removes_its_key_before_anything_else(config: Config) -> None:
    halting = Halting(config, bcrypt_rounds=4, kdf=CHEAP_KDF)
    halting.step = "key-removed"
    halting.register("alice", PASSWORD)
    halting.register("bob", PASSWORD)
    login = halting.login("alice", PASSWORD)
    login.conversations.create("Plans")
    user_dir = config.conversations_dir / "alice"
    with pytest.raises(Stopped):
        halting.delete_account("alice", PASSWORD)

    record = users_file(halting)["alice"]
    assert "data_key" not in record and "deleting" in record  # the key is gone: the data is unreadable
    assert user_dir.is_dir() and (user_dir / ".account").exists()  # nothing else happened yet
    assert "data_key" in users_file(halting)["bob"]

    fresh = Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF)  # the next use, say another kernel
    with pytest.warns(NbchatWarning, match="deletion of the account 'alice' was interrupted"):
        assert fresh.usernames() == ["bob"]
    assert not user_dir.exists() and set(users_file(fresh)) == {"bob"}
    assert not list(config.conversations_dir.glob(".deleted-*"))
    with pytest.raises(AuthenticationFailed):
        fresh.login("alice", PASSWORD)
    assert fresh.login("bob", PASSWORD).data_key is not None


def test_a_login_finishes_a_deletion_stopped_after_the_key_went(config: Config) -> None:
    halting = Halting(config, bcrypt_rounds=4, kdf=CHEAP_KDF)
    halting.step = "key-removed"
    halting.register("alice", PASSWORD)
    with pytest.raises(Stopped):
        halting.delete_account("alice", PASSWORD)
    with pytest.warns(NbchatWarning, match="interrupted"), pytest.raises(AuthenticationFailed):
        Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF).login("alice", PASSWORD)  # never a fresh key
    assert users_file(halting) == {}


def test_deleting_an_account_without_a_key_is_as_before(config: Config) -> None:
    halting = Halting(replace(config, policy=PLAIN), bcrypt_rounds=4, kdf=CHEAP_KDF)
    halting.step = "key-removed"
    halting.register("alice", PASSWORD)
    halting.delete_account("alice", PASSWORD)  # no key to remove: that step never comes
    assert users_file(halting) == {}


# -- accounts from before, and the policy ----------------------------------------------------------


def test_an_account_from_before_gets_a_key_at_its_next_login(accounts: Accounts, config: Config) -> None:
    write_old_account(config, "alice")
    write_old_account(config, "bob")
    bob_before = users_file(accounts)["bob"]
    key = accounts.login("alice", PASSWORD).data_key
    assert key is not None
    stored = users_file(accounts)
    assert crypto.unwrap_data_key(stored["alice"]["data_key"], PASSWORD, account="alice") == key
    assert stored["bob"] == bob_before  # converted one at a time, each at its own login
    assert Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF).login("alice", PASSWORD).data_key == key


def test_two_kernels_converting_one_account_at_once_agree_on_its_key(config: Config) -> None:
    """Every kernel has made and wrapped a key of its own before any stores one: the first stored wins."""
    write_old_account(config, "alice")
    gate = threading.Barrier(4, timeout=30)

    class Racing(Accounts):
        def _reached(self, step: str) -> None:
            if step == "key-wrapped":
                gate.wait()

    kernels = [Racing(config, bcrypt_rounds=4, kdf=CHEAP_KDF) for _ in range(gate.parties)]
    keys: list[bytes | None] = []
    threads = [
        threading.Thread(target=lambda k=kernel: keys.append(k.login("alice", PASSWORD).data_key))
        for kernel in kernels
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stored = crypto.unwrap_data_key(users_file(kernels[0])["alice"]["data_key"], PASSWORD, account="alice")
    assert keys == [stored] * len(kernels)


def test_with_the_policy_off_no_key_is_made_and_existing_keys_still_unlock(config: Config) -> None:
    encrypting = Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF)
    encrypting.register("alice", PASSWORD)
    key = encrypting.login("alice", PASSWORD).data_key
    write_old_account(config, "olga")

    plain = Accounts(replace(config, policy=PLAIN), bcrypt_rounds=4, kdf=CHEAP_KDF)
    plain.register("bob", PASSWORD)
    assert plain.login("bob", PASSWORD).data_key is None
    assert plain.login("olga", PASSWORD).data_key is None
    assert plain.login("alice", PASSWORD).data_key == key  # kept, never deleted
    assert plain.change_password("alice", PASSWORD, NEW_PASSWORD).data_key == key
    assert plain.change_password("bob", PASSWORD, NEW_PASSWORD).data_key is None
    stored = users_file(plain)
    assert "data_key" not in stored["bob"] and "data_key" not in stored["olga"]
    assert crypto.unwrap_data_key(stored["alice"]["data_key"], NEW_PASSWORD, account="alice") == key


def test_local_accounts_are_encrypted_unless_the_site_file_turns_it_off(tmp_path: Path) -> None:
    site = tmp_path / "config.toml"
    environ = {"NBCHAT_CONFIG": str(site), "NBCHAT_DATA_DIR": str(tmp_path / "data")}
    assert load_config({"NBCHAT_DATA_DIR": str(tmp_path / "data")}).policy.encrypt_local_accounts is True
    site.write_text("[policy]\nallow_registration = true\n")
    assert load_config(environ).policy.encrypt_local_accounts is True  # a site file silent on it
    assert Policy().encrypt_local_accounts is True
    site.write_text("[policy]\nencrypt_local_accounts = true\n")
    assert load_config(environ).policy.encrypt_local_accounts is True
    site.write_text("[policy]\nencrypt_local_accounts = false\n")
    assert load_config(environ).policy.encrypt_local_accounts is False
    site.write_text("[policy]\nencrypt_local_accounts = 'no'\n")
    with pytest.raises(ConfigError, match=r"policy\.encrypt_local_accounts must be true or false"):
        load_config(environ)


# -- damage ----------------------------------------------------------------------------------------


def tamper(config: Config, name: str, change: Any) -> None:
    path = config.users_file
    data = json.loads(path.read_bytes())
    change(data["users"][name]["data_key"])
    path.write_text(json.dumps(data, indent=2))


def flip_wrapped(record: dict[str, Any]) -> None:
    wrapped = bytearray(base64.b64decode(record["wrapped"]))
    wrapped[5] ^= 0x01
    record["wrapped"] = base64.b64encode(bytes(wrapped)).decode("ascii")


@pytest.mark.parametrize(
    "change, error",
    [
        (flip_wrapped, KeyUnlockFailed),
        (lambda r: r.update(salt=base64.b64encode(b"another salt 16b").decode()), KeyUnlockFailed),
        (lambda r: r.update(n=2**11), KeyUnlockFailed),  # the parameters are bound to the key
        (lambda r: r.update(n=2**40), KeyRecordInvalid),  # refused before any work
        (lambda r: r.update(version=2), KeyRecordInvalid),
        (lambda r: r.update(nonce="not base64!"), KeyRecordInvalid),
    ],
    ids=["wrapped-bit", "salt", "weaker-n", "huge-n", "version", "bad-base64"],
)
def test_a_tampered_key_is_a_clear_error_and_the_account_is_left_as_it_was(
    accounts: Accounts, config: Config, change: Any, error: type[Exception]
) -> None:
    accounts.register("alice", PASSWORD)
    accounts.register("bob", PASSWORD)
    accounts.login("alice", PASSWORD).conversations.create("Plans")
    tamper(config, "alice", change)
    before = files_under(config.data_dir)
    before.pop("login-failures.json", None)

    for attempt in (
        lambda: accounts.login("alice", PASSWORD),
        lambda: accounts.change_password("alice", PASSWORD, NEW_PASSWORD),
    ):
        with pytest.raises(error, match=r"password of 'alice' is right.*Restore users\.json") as caught:
            attempt()
        assert type(caught.value) is error
    after = files_under(config.data_dir)
    after.pop("login-failures.json", None)
    assert after == before  # users.json, the conversations, the marker: all untouched
    assert accounts.login("bob", PASSWORD).data_key is not None  # everyone else logs in


def test_a_key_record_of_the_wrong_shape_is_reported_naming_the_account(
    accounts: Accounts, config: Config
) -> None:
    accounts.register("alice", PASSWORD)
    raw = config.users_file.read_bytes()
    for change in (lambda r: r.pop("wrapped"), lambda r: r.update(n="65536")):
        config.users_file.write_bytes(raw)
        tamper(config, "alice", change)
        damaged = config.users_file.read_bytes()
        with pytest.raises(CorruptFile, match="the account 'alice' has a data_key that"):
            accounts.login("alice", PASSWORD)
        assert config.users_file.read_bytes() == damaged  # reported, never rewritten


# -- the real cost ---------------------------------------------------------------------------------


def test_the_default_kdf_registers_and_logs_in_within_the_login_budget(config: Config) -> None:
    """The one test at production cost (scrypt n=2**16: 64 MiB, about 0.2 s a derivation here)."""
    accounts = Accounts(config, bcrypt_rounds=4)
    started = time.perf_counter()
    accounts.register("alice", PASSWORD)
    registered = time.perf_counter()
    key = accounts.login("alice", PASSWORD).data_key
    logged_in = time.perf_counter()
    record = users_file(accounts)["alice"]["data_key"]
    assert (record["n"], record["r"], record["p"]) == (2**16, 8, 1)
    assert key is not None and crypto.unwrap_data_key(record, PASSWORD, account="alice") == key
    print(f"default KDF: register {registered - started:.3f} s, login {logged_in - registered:.3f} s")
    assert registered - started < 2.0 and logged_in - registered < 2.0  # a loaded 2-core machine


# -- crashes: worker processes SIGKILLed at random moments and at the hooks ------------------------

WORKER = r"""
import json, sys, time
from pathlib import Path
from nbchat import Accounts, Config
from nbchat.config import Policy
from nbchat.crypto import KdfParams

data_dir, command, pause_at, *args = sys.argv[1:]

class Worker(Accounts):
    def _reached(self, step):
        if step == pause_at:
            print(f"reached {step}", flush=True)
            time.sleep(60)

ticks = [time.time()]
def ticking():  # a minute on at every reading, as the test's Ticking clock
    ticks[0] += 61.0
    return ticks[0]

accounts = Worker(Config(data_dir=Path(data_dir), max_users=10_000,
                         policy=Policy(encrypt_local_accounts=True)), bcrypt_rounds=4,
                  kdf=KdfParams(n=2**10, r=8, p=1), clock=ticking)
print("ready", flush=True)
if command == "register":
    for i in range(int(args[0]), 10_000):
        accounts.register(f"user{i}", args[1])
        print(f"registered user{i}", flush=True)
elif command == "change":
    passwords, turn = args[1:3], int(args[3])
    while True:
        accounts.change_password(args[0], passwords[turn % 2], passwords[(turn + 1) % 2])
        turn += 1
        print(f"changed {turn}", flush=True)
elif command == "login":
    for name in args[1:]:
        print(f"{name}={accounts.login(name, args[0]).data_key.hex()}", flush=True)
elif command == "delete":
    accounts.delete_account(args[0], args[1])
    print("finished", flush=True)
"""


class Killable:
    """A worker process; ``kill_after`` SIGKILLs it a given time after it is ready, or at a hook."""

    def __init__(self, data_dir: Path, command: str, *args: object, pause_at: str = "-") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(data_dir), command, pause_at, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            text=True,
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        first = self.proc.stdout.readline().strip()
        assert first == "ready", self.failure(first)

    def failure(self, line: str) -> str:
        self.proc.kill()
        _, err = self.proc.communicate(timeout=30)
        return f"worker said {line!r}; stderr: {err[-2000:]}"

    def wait_for(self, wanted: str) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line == wanted, self.failure(line)

    def kill_after(self, seconds: float) -> list[str]:
        """SIGKILL after ``seconds``; returns the lines it printed (what it had finished). A worker
        with a finite task may have finished it first."""
        time.sleep(seconds)
        self.proc.send_signal(signal.SIGKILL)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode in (0, -signal.SIGKILL), f"worker failed: {err[-2000:]}"
        return out.split()  # tokens are enough: "registered", "userN", "changed", "N", "name=hex"

    def kill(self) -> None:
        self.kill_after(0)


class Ticking(FakeClock):
    """A clock a minute further on at every reading: these tests log in hundreds of times, and the
    data dir's failure-rate limit (which counts every attempt until it succeeds) must not interfere."""

    def __call__(self) -> float:
        self.advance(61.0)
        return self.now


TICKING = Ticking()


def fresh(config: Config) -> Accounts:
    return Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF, clock=TICKING)


KILLS = 12  # per operation; each kill lands at a random moment within a few operations


def test_registrations_killed_at_random_moments_leave_accounts_that_open_with_their_key(
    config: Config,
) -> None:
    rng = random.Random(15)
    config = replace(config, max_users=10_000)
    start = 0
    for _ in range(KILLS):
        Killable(config.data_dir, "register", start, PASSWORD).kill_after(rng.uniform(0, 0.08))
        users = users_file(fresh(config)) if config.users_file.exists() else {}
        accounts = fresh(config)
        for name, record in users.items():
            assert "data_key" in record, f"{name} was written without its key"
            assert accounts.login(name, PASSWORD).data_key == crypto.unwrap_data_key(
                record["data_key"], PASSWORD, account=name
            )
        start = len(users)  # a name the kill left half-made (a folder, no record) is made again
    assert len(users_file(fresh(config))) >= 3


def test_password_changes_killed_at_random_moments_keep_the_key_under_one_of_the_passwords(
    config: Config,
) -> None:
    rng = random.Random(16)
    fresh(config).register("alice", PASSWORD)
    key = fresh(config).login("alice", PASSWORD).data_key
    passwords = (PASSWORD, NEW_PASSWORD)
    turn = 0
    for _ in range(KILLS):
        Killable(config.data_dir, "change", "alice", *passwords, turn).kill_after(rng.uniform(0, 0.15))
        accounts = fresh(config)
        opened = []
        for candidate in (turn, turn + 1):
            with contextlib.suppress(AuthenticationFailed):
                opened.append((candidate, accounts.login("alice", passwords[candidate % 2]).data_key))
        assert [k for _, k in opened] == [key], opened  # exactly one password opens it, with the key
        turn = opened[0][0]
        record = users_file(accounts)["alice"]["data_key"]
        with pytest.raises(KeyUnlockFailed):
            crypto.unwrap_data_key(record, passwords[(turn + 1) % 2], account="alice")


@pytest.mark.parametrize("step", [*Accounts.CONVERSION_STEPS, "password-saved"])
def test_a_kill_at_each_key_step_leaves_the_account_whole(config: Config, step: str) -> None:
    write_old_account(config, "alice")
    command = (
        ("change", "alice", PASSWORD, NEW_PASSWORD, 0)
        if step == "password-saved"
        else ("login", PASSWORD, "alice")
    )
    worker = Killable(config.data_dir, *command, pause_at=step)
    worker.wait_for(f"reached {step}")
    worker.kill()
    accounts = fresh(config)
    password = NEW_PASSWORD if command[0] == "change" else PASSWORD
    record = users_file(accounts)["alice"]
    assert ("data_key" in record) == (step != "key-wrapped")
    key = accounts.login("alice", password).data_key
    assert key is not None and accounts.login("alice", password).data_key == key


def test_conversions_killed_at_random_moments_keep_every_key_that_was_handed_out(config: Config) -> None:
    rng = random.Random(17)
    names = [f"old{i}" for i in range(40)]
    for name in names:
        write_old_account(config, name)
    handed_out: dict[str, str] = {}
    interrupted = 0
    for _ in range(KILLS):
        pending = [n for n in names if n not in handed_out]
        if not pending:
            break
        printed = Killable(config.data_dir, "login", PASSWORD, *pending).kill_after(rng.uniform(0, 0.1))
        handed_out.update(line.split("=") for line in printed)
        interrupted += len(printed) < len(pending)
        users = users_file(fresh(config))
        for name, hex_key in handed_out.items():  # a key once given out is the key from then on
            assert crypto.unwrap_data_key(users[name]["data_key"], PASSWORD, account=name).hex() == hex_key
        for name in names:  # and every record is whole: a key or none
            if "data_key" in users[name]:
                crypto.unwrap_data_key(users[name]["data_key"], PASSWORD, account=name)
    assert interrupted >= 3, "the kills did not land inside the conversions"
    accounts = fresh(config)
    for name in names:  # every account logs in, and the keys from before are kept
        key = accounts.login(name, PASSWORD).data_key
        assert key is not None and (name not in handed_out or key.hex() == handed_out[name])


def test_a_deletion_killed_after_the_key_went_is_finished_by_the_next_use(config: Config) -> None:
    fresh(config).register("alice", PASSWORD)
    fresh(config).register("bob", PASSWORD)
    worker = Killable(config.data_dir, "delete", "alice", PASSWORD, pause_at="key-removed")
    worker.wait_for("reached key-removed")
    worker.kill()
    assert "data_key" not in users_file(fresh(config))["alice"]
    with pytest.warns(NbchatWarning, match="interrupted"):
        assert fresh(config).usernames() == ["bob"]
    assert not (config.conversations_dir / "alice").exists()
    assert fresh(config).login("bob", PASSWORD).data_key is not None
