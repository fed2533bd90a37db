"""Settings come from the environment when asked for, with defaults and clear errors."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from nbchat import ConfigError, load_config
from nbchat.config import DEFAULT_QWEN_MODEL, parse_ollama_host


def test_defaults_when_nothing_is_set() -> None:
    config = load_config({})
    assert config.data_dir == Path(platformdirs.user_data_dir("nbchat", appauthor=False))
    assert config.max_users == 10
    assert config.ollama_host == "http://127.0.0.1:11434"
    assert config.qwen_model == DEFAULT_QWEN_MODEL == "Qwen/Qwen3-1.7B"
    assert config.openai_base_url is None and config.openai_api_key is None
    assert config.hub_user is None


def test_every_variable_is_read(tmp_path: Path) -> None:
    config = load_config(
        {
            "NBCHAT_DATA_DIR": str(tmp_path),
            "NBCHAT_MAX_USERS": "3",
            "OLLAMA_HOST": "gpu-box:9999",
            "NBCHAT_QWEN_MODEL": "/models/qwen3",
            "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1",
            "OPENAI_API_KEY": "sk-secret",
            "JUPYTERHUB_USER": "alice",
        }
    )
    assert config.data_dir == tmp_path / "alice"  # a hub user's own directory on the shared volume
    assert config.max_users == 3
    assert config.ollama_host == "http://gpu-box:9999"
    assert config.qwen_model == "/models/qwen3"
    assert config.openai_base_url == "http://127.0.0.1:8000/v1"
    assert config.openai_api_key == "sk-secret"
    assert config.hub_user == "alice"
    assert "sk-secret" not in repr(config), "the API key must never be printed"


def test_environment_is_read_at_call_time_not_import(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("NBCHAT_DATA_DIR", str(tmp_path / "one"))
    assert load_config().data_dir == tmp_path / "one"
    monkeypatch.setenv("NBCHAT_DATA_DIR", str(tmp_path / "two"))
    assert load_config().data_dir == tmp_path / "two"


def test_data_dir_expands_home_and_becomes_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config({"NBCHAT_DATA_DIR": "~/chats"}).data_dir == tmp_path / "chats"
    monkeypatch.chdir(tmp_path)
    assert load_config({"NBCHAT_DATA_DIR": "rel"}).data_dir == tmp_path / "rel"


def test_ollama_url_is_accepted_and_ollama_host_wins() -> None:
    assert load_config({"OLLAMA_URL": "http://10.0.0.5:11434"}).ollama_host == "http://10.0.0.5:11434"
    both = {"OLLAMA_URL": "http://a:1", "OLLAMA_HOST": "http://b:2"}
    assert load_config(both).ollama_host == "http://b:2"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "http://127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434"),
        ("1.2.3.4", "http://1.2.3.4:11434"),
        (":56789", "http://127.0.0.1:56789"),
        ("1.2.3.4:56789", "http://1.2.3.4:56789"),
        ("http://1.2.3.4", "http://1.2.3.4:80"),
        ("https://1.2.3.4", "https://1.2.3.4:443"),
        ("https://example.com:56789", "https://example.com:56789"),
        ("example.com/", "http://example.com:11434"),
        ("example.com:56789/path/", "http://example.com:56789/path"),
        ("[::1]", "http://[::1]:11434"),
        ("https://[::1]:56789", "https://[::1]:56789"),
        ("  localhost  ", "http://localhost:11434"),
    ],
)
def test_ollama_host_follows_the_official_clients_rules(raw: str | None, expected: str) -> None:
    assert parse_ollama_host(raw) == expected


@pytest.mark.parametrize("raw", ["ftp://host", "http://host:notaport", "http://host:99999"])
def test_unusable_ollama_host_is_a_clear_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="OLLAMA_HOST"):
        parse_ollama_host(raw)


@pytest.mark.parametrize("raw", ["ten", "0", "-3", "2.5"])
def test_bad_max_users_is_a_clear_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="NBCHAT_MAX_USERS"):
        load_config({"NBCHAT_MAX_USERS": raw})


def test_nul_in_data_dir_is_refused() -> None:
    with pytest.raises(ConfigError, match="NUL"):
        load_config({"NBCHAT_DATA_DIR": "/tmp/a\x00b"})
