"""The accounts' own files when the disk refuses them: every refusal is a ``StoreError`` that names
the file, never a bare ``OSError`` from deep inside nbchat."""

from __future__ import annotations

import pytest

from conftest import PASSWORD
from nbchat import Accounts
from nbchat.errors import StorageFailed


def test_a_users_json_that_cannot_be_read_is_a_storage_error_naming_it(accounts: Accounts) -> None:
    users_file = accounts.config.users_file
    users_file.mkdir(parents=True)  # a folder where the file should be: reading it fails with EISDIR
    for attempt in (accounts.usernames, lambda: accounts.register("bob", PASSWORD)):
        with pytest.raises(StorageFailed, match=r"users\.json") as refused:
            attempt()
        assert refused.value.path == users_file


def test_a_throttle_file_that_cannot_be_read_is_a_storage_error_naming_it(accounts: Accounts) -> None:
    accounts.register("alice", PASSWORD)
    throttle_file = accounts.data_dir / "login-failures.json"
    throttle_file.mkdir()
    with pytest.raises(StorageFailed, match=r"login-failures\.json") as refused:
        accounts.login("alice", PASSWORD)
    assert refused.value.path == throttle_file


def test_a_conversations_path_that_is_a_file_is_a_storage_error_naming_it(accounts: Accounts) -> None:
    accounts.config.conversations_dir.parent.mkdir(parents=True)
    accounts.config.conversations_dir.write_text("not a folder")
    with pytest.raises(StorageFailed, match="conversations"):
        accounts.register("alice", PASSWORD)
