"""JupyterHub accounts encrypted under the hub's per-user secret (issue 15): with
``NBCHAT_HUB_SECRET`` a hub login has a data key like a local one, an account still in clear is
converted at its next login, a server without that secret (or with another) is refused with
nothing changed, and ``NBCHAT_HUB_SECRET_PREVIOUS`` re-wraps the key under a new secret."""

from __future__ import annotations

import html
import json
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from conftest import CHEAP_KDF
from nbchat import Accounts, ChatSession, Config, ConfigError, crypto, load_config
from nbchat.config import Policy
from nbchat.errors import HubSecretMismatch, KeyRecordInvalid, KeyUnlockFailed
from nbchat.panel.login_form import LoginForm
from nbchat.testing.ollama_server import OllamaTestServer

HUB_NAME = "ann"
SECRET = "a" * 16 + secrets.token_hex(24)  # as long as a real one, unguessable
OTHER_SECRET = secrets.token_hex(32)


def word() -> str:
    """A word no ciphertext, id or time will ever contain by chance."""
    return "zq" + "".join(secrets.choice("bcdfghjklmnpstvwxz") for _ in range(14))


def leaks(root: Path, words: list[str]) -> list[tuple[str, str]]:
    """(file, word) for every word found in any byte of any file under ``root``."""
    found = []
    for path in sorted(root.rglob("*")):
        data = path.read_bytes() if path.is_file() else b""
        found += [(str(path), w) for w in words if w.lower().encode() in data.lower()]
    return found


def changed(before: dict[str, bytes], root: Path) -> list[str]:
    """The files under ``root`` made, removed or rewritten since ``before`` (a ``snapshot``)."""
    after = snapshot(root)
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its path, but the empty lock files (``.users.lock``, a store's
    ``.lock``) that taking a lock may create: they hold no data."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.endswith(".lock")
    }


def made_by_a_hub_session(config: Config, server: OllamaTestServer, secret: str) -> list[str]:
    """The hub user's account and one conversation made with ``secret``, that kernel closed; the words."""
    session = hub_session(hub_config(config, server, secret))
    words = chat(session, server)
    session.logout()
    return words


def hub_config(
    config: Config, server: OllamaTestServer, secret: str | None, previous: str | None = None
) -> Config:
    return replace(
        config, hub_user=HUB_NAME, ollama_host=server.url, hub_secret=secret, hub_secret_previous=previous
    )


def hub_session(config: Config) -> ChatSession:
    """A fresh kernel of the hub user: its own Accounts, logged in by the hub."""
    session = ChatSession(config, accounts=Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF))
    session.login_from_hub()
    return session


def hub_key(config: Config) -> bytes | None:
    """The data key a fresh hub login of ``config`` unwraps (``Login.data_key``)."""
    login = Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF).hub_login(HUB_NAME)
    try:
        return login.data_key
    finally:
        login.close()


def chat(session: ChatSession, server: OllamaTestServer) -> list[str]:
    """One conversation with a unique word in its title, prompt, answer and new title; returns them."""
    title, question, answer, renamed = (word() for _ in range(4))
    session.new_conversation(f"about {title}")
    session.configure(model="ollama:qwen3:1.7b")
    server.reply_words = [f"{answer} ", "indeed"]
    session.send(f"What of {question}?").wait(30)
    session.rename(session.current.id, f"now {renamed}")  # type: ignore[union-attr]
    return [title, question, answer, renamed]


def read_all(session: ChatSession) -> dict[str, list[str]]:
    """Every conversation's title and message contents, by id."""
    read = {}
    for summary in session.conversations():
        conversation = session.select(summary.id)
        read[summary.id] = [conversation.title, *(m.content for m in conversation.tree.messages)]
    return read


class Steps(Accounts):
    """Accounts that note the steps it reaches (the seam tests/workers.py kills workers at)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps: list[str] = []

    def _reached(self, step: str) -> None:
        self.steps.append(step)


def hub_record(config: Config) -> dict[str, object]:
    record: dict[str, object] = json.loads(config.users_file.read_bytes())["users"][HUB_NAME]
    return record


# -- encrypted from the first login ----------------------------------------------------------------


def test_a_hub_users_words_never_reach_the_disk_and_a_new_kernel_with_the_secret_reads_them(
    config: Config, server: OllamaTestServer
) -> None:
    keyed = hub_config(config, server, SECRET)
    first = hub_session(keyed)
    words = chat(first, server) + chat(first, server)
    before = read_all(first)
    key = hub_key(keyed)
    assert key is not None and "data_key" in hub_record(config)
    assert leaks(config.data_dir, words) == []
    files = list((config.conversations_dir / HUB_NAME).glob("*.jsonl"))
    assert len(files) == 2 and all(b'"sealed"' in path.read_bytes().splitlines()[0] for path in files)

    schema = json.loads((Path(__file__).resolve().parent.parent / "data" / "users.schema.json").read_text())
    Draft202012Validator(schema).validate(json.loads(config.users_file.read_bytes()))

    again = hub_session(keyed)
    assert read_all(again) == before and hub_key(keyed) == key
    assert again.search(words[2]) and leaks(config.data_dir, words) == []


def test_without_a_secret_hub_accounts_stay_in_clear_whatever_the_policy(
    config: Config, server: OllamaTestServer
) -> None:
    clear = replace(hub_config(config, server, None), policy=Policy(encrypt_local_accounts=True))
    session = hub_session(clear)
    words = chat(session, server)
    assert hub_key(clear) is None and "data_key" not in hub_record(config)
    assert {w for _, w in leaks(config.data_dir, words)} == set(words[1:])  # the title was renamed


# -- converting a clear hub account ----------------------------------------------------------------


def test_a_clear_hub_account_is_sealed_at_its_first_login_with_a_secret_and_reads_the_same(
    config: Config, server: OllamaTestServer
) -> None:
    clear = hub_session(hub_config(config, server, None))
    words = chat(clear, server) + chat(clear, server)
    before = read_all(clear)
    clear.logout()
    assert leaks(config.data_dir, words)

    keyed = hub_session(hub_config(config, server, SECRET))
    assert leaks(config.data_dir, words) == []
    assert hub_key(keyed.config) is not None and "data_key" in hub_record(config)
    assert read_all(keyed) == before
    later = word()
    keyed.send(f"and {later}").wait(30)
    assert keyed.search(later) and leaks(config.data_dir, [*words, later]) == []


# -- refused: no secret, another secret ------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, OTHER_SECRET], ids=["no secret", "another secret"])
def test_an_encrypted_hub_account_without_its_secret_is_refused_and_nothing_changes(
    config: Config, server: OllamaTestServer, secret: str | None
) -> None:
    words = made_by_a_hub_session(config, server, SECRET)
    before = snapshot(config.data_dir)

    refused = ChatSession(
        hub_config(config, server, secret),
        accounts=Accounts(hub_config(config, server, secret), bcrypt_rounds=4, kdf=CHEAP_KDF),
    )
    with pytest.raises(HubSecretMismatch) as caught:
        refused.login_from_hub()
    message = str(caught.value)
    assert "NBCHAT_HUB_SECRET" in message and "administrator must restore" in message
    assert "'ann'" in message and "Nothing was changed" in message
    assert SECRET not in message and OTHER_SECRET not in message
    assert isinstance(caught.value, KeyUnlockFailed) and refused.user is None
    assert changed(before, config.data_dir) == []
    assert leaks(config.data_dir, words) == []


def test_the_refusal_reads_as_a_sentence_in_the_panels_login_form(
    config: Config, server: OllamaTestServer
) -> None:
    made_by_a_hub_session(config, server, SECRET)
    with pytest.raises(HubSecretMismatch) as caught:
        hub_session(hub_config(config, server, None))
    form = LoginForm(lambda name, password, register: None)
    form.show(allow_registration=True, hub_error=str(caught.value))  # as the panel shows session.hub_error
    shown = html.unescape(form.message.value)
    assert (
        "JupyterHub login failed: The nbchat account of the JupyterHub user 'ann' is encrypted, but "
        "this server has no NBCHAT_HUB_SECRET to unlock it. The hub's administrator must restore"
    ) in shown
    assert SECRET not in shown
    form.close()


def test_a_damaged_hub_key_record_says_so_and_changes_nothing(
    config: Config, server: OllamaTestServer
) -> None:
    made_by_a_hub_session(config, server, SECRET)
    users = json.loads(config.users_file.read_bytes())
    users["users"][HUB_NAME]["data_key"]["nonce"] = "not base64!"
    config.users_file.write_text(json.dumps(users))
    before = snapshot(config.data_dir)
    with pytest.raises(KeyRecordInvalid, match=r"damaged .*Restore users\.json from a backup"):
        hub_session(hub_config(config, server, SECRET, previous=OTHER_SECRET))
    assert changed(before, config.data_dir) == []


# -- rotating the secret ---------------------------------------------------------------------------


def test_the_previous_secret_rewraps_the_key_under_the_new_one_and_rewrites_no_conversation(
    config: Config, server: OllamaTestServer
) -> None:
    first = hub_session(hub_config(config, server, OTHER_SECRET))
    words = chat(first, server)
    before, key = read_all(first), hub_key(first.config)
    folder = config.conversations_dir / HUB_NAME
    files = {path.name: path.read_bytes() for path in folder.glob("*.jsonl")}
    old_record = hub_record(config)["data_key"]

    rotating = Steps(
        hub_config(config, server, SECRET, previous=OTHER_SECRET), bcrypt_rounds=4, kdf=CHEAP_KDF
    )
    rotated = ChatSession(rotating.config, accounts=rotating)
    rotated.login_from_hub()
    assert rotating.steps == ["key-wrapped", "key-stored"]  # one write of users.json, no file sealed again
    assert read_all(rotated) == before
    new_record = hub_record(config)["data_key"]
    assert new_record != old_record
    assert crypto.unwrap_data_key(new_record, SECRET, account=HUB_NAME) == key  # type: ignore[arg-type]
    with pytest.raises(KeyUnlockFailed):
        crypto.unwrap_data_key(new_record, OTHER_SECRET, account=HUB_NAME)  # type: ignore[arg-type]
    assert {path.name: path.read_bytes() for path in folder.glob("*.jsonl")} == files
    assert leaks(config.data_dir, words) == []

    # From now on the new secret alone opens it; the old one alone no longer does.
    assert read_all(hub_session(hub_config(config, server, SECRET))) == before
    with pytest.raises(HubSecretMismatch, match="NBCHAT_HUB_SECRET_PREVIOUS"):
        hub_session(hub_config(config, server, OTHER_SECRET, previous=word() * 3))


def test_a_previous_secret_that_does_not_unlock_either_is_refused_and_nothing_changes(
    config: Config, server: OllamaTestServer
) -> None:
    made_by_a_hub_session(config, server, SECRET)
    before = snapshot(config.data_dir)
    with pytest.raises(HubSecretMismatch, match=r"nor by NBCHAT_HUB_SECRET_PREVIOUS"):
        hub_session(hub_config(config, server, OTHER_SECRET, previous=secrets.token_hex(32)))
    assert changed(before, config.data_dir) == []


# -- reading the secret ----------------------------------------------------------------------------


def test_the_secret_is_read_from_the_environment_and_never_shown(tmp_path: Path) -> None:
    config = load_config(
        {
            "NBCHAT_DATA_DIR": str(tmp_path),
            "NBCHAT_HUB_SECRET": SECRET,
            "NBCHAT_HUB_SECRET_PREVIOUS": OTHER_SECRET,
        }
    )
    assert config.hub_secret == SECRET and config.hub_secret_previous == OTHER_SECRET
    assert SECRET not in repr(config) and OTHER_SECRET not in repr(config)
    assert load_config({"NBCHAT_DATA_DIR": str(tmp_path)}).hub_secret is None


@pytest.mark.parametrize("variable", ["NBCHAT_HUB_SECRET", "NBCHAT_HUB_SECRET_PREVIOUS"])
@pytest.mark.parametrize("bad", ["x" * 31, "tooshort1", "a" * 20 + " " + "b" * 20], ids=["31", "9", "space"])
def test_a_weak_or_malformed_secret_is_refused_without_showing_it(
    tmp_path: Path, variable: str, bad: str
) -> None:
    env = {"NBCHAT_DATA_DIR": str(tmp_path), "NBCHAT_HUB_SECRET": SECRET, variable: bad}
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    message = str(caught.value)
    assert message.startswith(f"{variable} must be at least 32 characters")
    assert "hmac.new(MASTER, spawner.user.name.encode()" in message
    assert bad not in message and bad.split()[0] not in message and SECRET not in message


def test_a_previous_secret_without_a_current_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Set NBCHAT_HUB_SECRET too") as caught:
        load_config({"NBCHAT_DATA_DIR": str(tmp_path), "NBCHAT_HUB_SECRET_PREVIOUS": OTHER_SECRET})
    assert OTHER_SECRET not in str(caught.value)


def test_the_site_file_cannot_hold_a_hub_secret(tmp_path: Path) -> None:
    site = tmp_path / "config.toml"
    site.write_text(f'[nbchat]\nhub_secret = "{SECRET}"\n')
    with pytest.raises(ConfigError, match=r"unknown setting nbchat\.hub_secret") as caught:
        load_config({"NBCHAT_CONFIG": str(site), "NBCHAT_DATA_DIR": str(tmp_path)})
    assert SECRET not in str(caught.value)
