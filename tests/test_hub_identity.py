"""Logging a JupyterHub user in: how hub names become nbchat usernames, the password-less
account ``Accounts.hub_login`` gives them, and the ``NBCHAT_TRUST_HUB_USER`` switch."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import replace
from pathlib import Path

import bcrypt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from conftest import CHEAP_KDF, PASSWORD
from nbchat import (
    Accounts,
    AuthenticationFailed,
    Config,
    ConfigError,
    InvalidUsername,
    UserLimitReached,
    load_config,
)
from nbchat.accounts import hub_user_data_dir
from nbchat.errors import HubAccountConflict
from nbchat.store import claim_directory
from nbchat.usernames import check_username, hub_username, legacy_hub_username

DATA = Path(__file__).resolve().parent.parent / "data"
HASHED = re.compile(r"-[0-9a-f]{20}\Z")  # the hash of the hub name that ends a made-up username

#: Hub names nbchat cannot use as they are, each for another rule.
ODD_HUB_NAMES = [
    "Ann.Lee@uni.edu",  # '@'
    "ann lee",  # a space
    " alice",  # a leading space
    "名前",  # nothing ASCII at all
    "José",  # one non-ASCII letter
    "CON",  # a Windows device name
    "con.x",  # a device name before the first '.'
    "x" * 40,  # too long
    "-@-",  # nothing readable left
    ".hidden",  # starts with '.'
    "a/b",  # a path separator
    "Ann.Lee-uni.edu-00000000",  # valid, but shaped like a made-up name of old
    "ann-0123456789abcdef0123",  # valid, but shaped like a made-up name
]


def users_schema_validator() -> Draft202012Validator:
    schema = json.loads((DATA / "users.schema.json").read_text(encoding="utf-8"))
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


# -- hub_username ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "Bob", "first.last", "a-b_c", "0day", "x" * 32])
def test_a_valid_hub_name_is_the_username(name: str) -> None:
    assert hub_username(name) == name


@pytest.mark.parametrize("hub_name", ODD_HUB_NAMES)
def test_an_odd_hub_name_becomes_a_valid_username_ending_in_its_hash(hub_name: str) -> None:
    username = hub_username(hub_name)
    assert check_username(username) == username
    assert username != hub_name
    assert HASHED.search(username)
    assert hub_username(hub_name) == username  # the same every time: the next login finds it


def test_made_up_usernames_stay_readable() -> None:
    assert re.fullmatch(r"Ann\.Lee-uni-[0-9a-f]{20}", hub_username("Ann.Lee@uni.edu"))
    assert re.fullmatch(r"CON-[0-9a-f]{20}", hub_username("CON"))
    assert re.fullmatch(r"hub-con\.x-[0-9a-f]{20}", hub_username("con.x"))  # never a device name
    assert re.fullmatch(r"hub-[0-9a-f]{20}", hub_username("名前"))  # nothing readable: 'hub-'
    assert re.fullmatch(r"hub-[0-9a-f]{20}", hub_username("-@-"))
    assert re.fullmatch(r"x{11}-[0-9a-f]{20}", hub_username("x" * 40))


def test_distinct_odd_hub_names_get_distinct_accounts() -> None:
    keys = [hub_username(name).lower() for name in ODD_HUB_NAMES]
    assert len(set(keys)) == len(keys)


def test_a_hub_user_cannot_take_another_ones_account_by_choosing_its_made_up_name() -> None:
    """A hub user named like Ann's made-up username (in any case) gets an account of their own."""
    ann = hub_username("Ann.Lee@uni.edu")
    for impostor in (ann, ann.lower(), ann.upper()):
        assert hub_username(impostor).lower() != ann.lower()


def test_hub_names_that_differ_only_in_case_map_to_one_username_like_usernames() -> None:
    """As with local accounts; JupyterHub lower-cases names by default anyway (and ``hub_login``
    refuses the second spelling rather than share the account: see below)."""
    assert hub_username("Alice").lower() == hub_username("alice").lower()


@pytest.mark.parametrize("hub_name", ["", " ", "\t\n", None, 42])
def test_an_empty_hub_name_is_refused(hub_name: object) -> None:
    with pytest.raises(InvalidUsername, match="JUPYTERHUB_USER"):
        hub_username(hub_name)  # type: ignore[arg-type]


def test_a_hub_name_that_is_not_valid_unicode_is_refused() -> None:
    """A non-UTF-8 byte in JUPYTERHUB_USER reaches Python as a lone surrogate."""
    with pytest.raises(InvalidUsername, match="not valid Unicode"):
        hub_username("ann\udcff")


@settings(max_examples=500)
@given(st.text(min_size=1, max_size=60).filter(str.strip))
@example("Ann.Lee@uni.edu")
@example("ǅ")  # a title-case letter
@example("ß" * 40)
def test_every_hub_name_becomes_a_stable_valid_username(hub_name: str) -> None:
    username = hub_username(hub_name)
    assert check_username(username) == username
    assert hub_username(hub_name) == username
    assert username == hub_name or HASHED.search(username)


@settings(max_examples=200)
@given(st.lists(st.text(min_size=1, max_size=40).filter(str.strip), min_size=2, max_size=30))
def test_distinct_hub_names_never_share_an_account(hub_names: list[str]) -> None:
    """Two hub names share an account only if they are one name in different case."""
    owner: dict[str, str] = {}
    for hub_name in hub_names:
        key = hub_username(hub_name).lower()
        first = owner.setdefault(key, hub_name)
        assert first.lower() == hub_name.lower()


# -- Accounts.hub_login ---------------------------------------------------------------------


def test_the_first_hub_login_creates_the_account(accounts: Accounts) -> None:
    login = accounts.hub_login("Ann.Lee@uni.edu")
    username = hub_username("Ann.Lee@uni.edu")
    assert accounts.usernames() == [username]
    assert login.username == username.lower()
    assert login.display_name == "Ann.Lee@uni.edu"
    assert login.conversations.list() == []


def test_a_valid_hub_name_keeps_its_capitals_for_display(accounts: Accounts) -> None:
    login = accounts.hub_login("Alice")
    assert (login.username, login.display_name) == ("alice", "Alice")
    assert accounts.usernames() == ["Alice"]


@pytest.mark.parametrize("hub_name", ODD_HUB_NAMES)
def test_any_hub_name_gets_an_account(accounts: Accounts, hub_name: str) -> None:
    login = accounts.hub_login(hub_name)
    assert login.display_name == hub_name
    assert login.username == hub_username(hub_name).lower()
    assert accounts.usernames() == [hub_username(hub_name)]


def test_the_next_hub_login_opens_the_same_account(accounts: Accounts) -> None:
    first = accounts.hub_login("Ann.Lee@uni.edu")
    conversation = first.conversations.create("Thesis notes")
    accounts.logout(first)

    again = accounts.hub_login("Ann.Lee@uni.edu")
    assert again.username == first.username
    assert [c.id for c in again.conversations.list()] == [conversation.id]
    assert accounts.usernames() == [hub_username("Ann.Lee@uni.edu")]


def test_hub_users_do_not_see_each_others_conversations(accounts: Accounts) -> None:
    ann = accounts.hub_login("ann@uni.edu")
    ann.conversations.create("Ann's")
    bob = accounts.hub_login("bob@uni.edu")
    assert bob.username != ann.username
    assert bob.conversations.list() == []


def test_hub_logins_respect_the_user_cap(config: Config) -> None:
    accounts = Accounts(replace(config, max_users=2), bcrypt_rounds=4, kdf=CHEAP_KDF)
    accounts.register("alice", PASSWORD)
    accounts.hub_login("bob@uni.edu")
    with pytest.raises(UserLimitReached, match=r"NBCHAT_MAX_USERS=2.*'carol@uni\.edu'"):
        accounts.hub_login("carol@uni.edu")
    assert len(accounts.usernames()) == 2
    assert accounts.hub_login("bob@uni.edu").display_name == "bob@uni.edu"  # existing ones still may


@pytest.mark.parametrize("guess", ["", PASSWORD, "Ann.Lee@uni.edu", "ann.lee-uni.edu"])
def test_a_hub_account_cannot_be_logged_into_with_a_password(accounts: Accounts, guess: str) -> None:
    """Its password is random and never shown: only the hub can log its user in."""
    username = accounts.hub_login("Ann.Lee@uni.edu").username
    with pytest.raises(AuthenticationFailed):
        accounts.login(username, guess)


def test_a_hub_name_that_is_not_valid_unicode_creates_no_account(accounts: Accounts) -> None:
    with pytest.raises(InvalidUsername, match="not valid Unicode"):
        accounts.hub_login("ann\udcff")
    assert accounts.usernames() == []


def test_users_json_with_hub_accounts_follows_its_schema(config: Config) -> None:
    """Hub accounts add a 'hub_name' field, which users.json's schema allows."""
    accounts = Accounts(replace(config, max_users=100), bcrypt_rounds=4, kdf=CHEAP_KDF)
    accounts.register("alice", PASSWORD)
    for hub_name in ODD_HUB_NAMES:
        accounts.hub_login(hub_name)
    users = json.loads(accounts.config.users_file.read_text(encoding="utf-8"))
    problems = [error.message for error in users_schema_validator().iter_errors(users)]
    assert problems == []
    hub_names = {record.get("hub_name") for record in users["users"].values()}
    assert hub_names == {None, *ODD_HUB_NAMES}
    assert len(accounts.usernames()) == 1 + len(ODD_HUB_NAMES)  # and nbchat reads it back


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hub_name=st.text(min_size=1, max_size=40).filter(str.strip))
def test_any_hub_name_logs_in_to_one_account(tmp_path_factory: pytest.TempPathFactory, hub_name: str) -> None:
    accounts = Accounts(Config(data_dir=tmp_path_factory.mktemp("hub")), bcrypt_rounds=4, kdf=CHEAP_KDF)
    first = accounts.hub_login(hub_name)
    second = accounts.hub_login(hub_name)
    assert first.username == second.username == hub_username(hub_name).lower()
    assert second.display_name == hub_name
    assert len(accounts.usernames()) == 1


# -- NBCHAT_TRUST_HUB_USER and JUPYTERHUB_USER ----------------------------------------------


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"NBCHAT_DATA_DIR": str(tmp_path), **values}


def test_the_hub_user_is_trusted_by_default(tmp_path: Path) -> None:
    config = load_config(env(tmp_path, JUPYTERHUB_USER="ann"))
    assert config.trust_hub_user is True
    assert config.hub_user == "ann"


@pytest.mark.parametrize(("raw", "expected"), [(" Ann.Lee@uni.edu ", "Ann.Lee@uni.edu"), ("", None)])
def test_the_hub_user_comes_from_jupyterhub_user(tmp_path: Path, raw: str, expected: str | None) -> None:
    assert load_config(env(tmp_path, JUPYTERHUB_USER=raw)).hub_user == expected
    assert load_config(env(tmp_path)).hub_user is None


@pytest.mark.parametrize("raw", ["0", "false", "no", "off", "FALSE", " Off "])
def test_trusting_the_hub_user_can_be_switched_off(tmp_path: Path, raw: str) -> None:
    assert load_config(env(tmp_path, NBCHAT_TRUST_HUB_USER=raw)).trust_hub_user is False


@pytest.mark.parametrize("raw", ["1", "true", "yes", "on", "YES", "", "  "])
def test_trusting_the_hub_user_can_be_switched_on(tmp_path: Path, raw: str) -> None:
    """Empty counts as unset: the default, on."""
    assert load_config(env(tmp_path, NBCHAT_TRUST_HUB_USER=raw)).trust_hub_user is True


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled", "y"])
def test_an_unclear_trust_setting_is_refused_naming_the_variable(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError, match=f"NBCHAT_TRUST_HUB_USER.*{raw!r}"):
        load_config(env(tmp_path, NBCHAT_TRUST_HUB_USER=raw))


# -- one hub name, one account (issue 11, defect 1) -------------------------------------------

#: Two hub names whose old 8-hex-digit tags are equal (found by brute force, ~3 minutes).
COLLIDING = ("alice@uni.edu", "alice@uni.edu+&@!$$&+#&@@")


def write_users(accounts: Accounts, users: dict[str, dict[str, str]]) -> None:
    accounts.config.users_file.parent.mkdir(parents=True, exist_ok=True)
    accounts.config.users_file.write_text(json.dumps({"version": 1, "users": users}), encoding="utf-8")


def hub_record(name: str, hub_name: str, password: str | None = None) -> dict[str, str]:
    password = password or uuid.uuid4().hex  # by default one nobody knows, as hub_login makes
    return {
        "name": name,
        "account_id": uuid.uuid4().hex,
        "password_hash": bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode(),
        "created": "2025-05-01T09:12:44+00:00",
        "password_changed": "2025-05-01T09:12:44+00:00",
        "hub_name": hub_name,
    }


def test_hub_names_whose_old_tags_collide_get_separate_accounts(accounts: Accounts) -> None:
    first, second = COLLIDING
    alice = accounts.hub_login(first)
    alice.conversations.create("alice's private notes")
    other = accounts.hub_login(second)
    assert other.username != alice.username
    assert other.display_name == second
    assert other.conversations.list() == []


def test_the_hub_tag_holds_80_bits_of_the_hub_names_sha256() -> None:
    tag = hub_username("Ann.Lee@uni.edu").rsplit("-", 1)[1]
    assert tag == hashlib.sha256(b"Ann.Lee@uni.edu").hexdigest()[: len(tag)]
    assert len(tag) * 4 >= 80


def test_a_hub_login_never_reaches_an_account_created_for_another_hub_name(accounts: Accounts) -> None:
    """Should two hub names ever map to one username, the second is refused, naming both and a remedy."""
    name = hub_username("ann@uni.edu")
    write_users(accounts, {name.lower(): hub_record(name, "someone-else@uni.edu")})
    with pytest.raises(HubAccountConflict) as refused:
        accounts.hub_login("ann@uni.edu")
    message = str(refused.value)
    assert "'ann@uni.edu'" in message and "'someone-else@uni.edu'" in message
    assert "same account" in message and str(accounts.config.users_file) in message


def test_hub_names_that_differ_only_in_case_are_refused_rather_than_shared(accounts: Accounts) -> None:
    """Two hub users Alice and alice (a hub that does not lower-case names) never share one account."""
    accounts.hub_login("Alice").conversations.create("Alice's")
    with pytest.raises(HubAccountConflict, match="'alice'"):
        accounts.hub_login("alice")
    assert accounts.hub_login("Alice").display_name == "Alice"


def test_a_hub_login_never_reaches_a_password_account_of_the_same_name(accounts: Accounts) -> None:
    """Someone who registered 'bob' with a password is not the hub user bob (nor the reverse)."""
    accounts.register("bob", PASSWORD)
    accounts.login("bob", PASSWORD).conversations.create("registered bob's")
    with pytest.raises(HubAccountConflict, match="password"):
        accounts.hub_login("bob")
    assert [c.title for c in accounts.login("bob", PASSWORD).conversations.list()] == ["registered bob's"]


def test_a_password_never_opens_a_hub_account_even_one_whose_hash_is_known(accounts: Accounts) -> None:
    name = hub_username("ann@uni.edu")
    write_users(accounts, {name.lower(): hub_record(name, "ann@uni.edu", password=PASSWORD)})
    with pytest.raises(AuthenticationFailed):
        accounts.login(name, PASSWORD)
    assert accounts.hub_login("ann@uni.edu").username == name.lower()


def test_a_name_shaped_like_a_made_up_hub_username_cannot_be_registered(accounts: Accounts) -> None:
    """Otherwise anyone could take Ann's hub account name before her first login."""
    with pytest.raises(InvalidUsername, match="reserved for JupyterHub"):
        accounts.register(hub_username("Ann.Lee@uni.edu"), PASSWORD)
    assert accounts.usernames() == []
    accounts.register("build-2024", PASSWORD)  # an ordinary name with a dash is fine


def test_an_account_made_under_the_old_short_tag_still_serves_its_exact_hub_name(accounts: Accounts) -> None:
    first, second = COLLIDING
    old_name = legacy_hub_username(first)
    assert old_name.lower() == legacy_hub_username(second).lower()  # the pair did collide
    assert re.fullmatch(r"alice-uni\.edu-[0-9a-f]{8}", old_name)
    write_users(accounts, {old_name.lower(): hub_record(old_name, first)})
    claim_directory(accounts.data_dir, old_name, accounts._read_users()[old_name.lower()]["account_id"])

    alice = accounts.hub_login(first)
    assert (alice.username, alice.display_name) == (old_name.lower(), first)
    alice.conversations.create("kept from before the upgrade")
    other = accounts.hub_login(second)  # the old tag's collision partner gets an account of its own
    assert other.username == hub_username(second).lower() != old_name.lower()
    assert other.conversations.list() == []
    titles = [c.title for c in accounts.hub_login(first).conversations.list()]
    assert titles == ["kept from before the upgrade"]


# -- the data dir of a hub user on a shared volume (after the tag grew) -----------------------


def test_a_hub_users_folder_from_before_the_longer_tag_is_still_found(tmp_path: Path) -> None:
    first = COLLIDING[0]
    old_folder = tmp_path / legacy_hub_username(first).lower()
    Accounts(Config(data_dir=old_folder), bcrypt_rounds=4, kdf=CHEAP_KDF).hub_login(
        first
    ).conversations.create("old chat")
    assert hub_user_data_dir(tmp_path, first) == old_folder
    kept = Accounts(
        Config(data_dir=hub_user_data_dir(tmp_path, first)), bcrypt_rounds=4, kdf=CHEAP_KDF
    ).hub_login(first)
    assert [c.title for c in kept.conversations.list()] == ["old chat"]


def test_a_hub_name_whose_old_tag_collides_gets_a_folder_of_its_own(tmp_path: Path) -> None:
    first, second = COLLIDING
    Accounts(
        Config(data_dir=tmp_path / legacy_hub_username(first).lower()), bcrypt_rounds=4, kdf=CHEAP_KDF
    ).hub_login(first)
    assert hub_user_data_dir(tmp_path, second) == tmp_path / hub_username(second).lower()
    assert hub_user_data_dir(tmp_path, "bob@uni.edu") == tmp_path / hub_username("bob@uni.edu").lower()
