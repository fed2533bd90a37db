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


# -- addresses that would be silently changed are refused ---------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("host:0", "port 0"),
        ("http://host:0", "port 0"),
        ("host:", "no port after ':'"),
        ("host:+80", "port '+80'"),
        ("host:٣٤", "port '٣٤'"),
        ("http://a\nb", "a space or control character"),
        ("http://a\tb:11434", "a space or control character"),
        ("a b", "a space or control character"),
        ("host\x00:1", "a space or control character"),
        ("host\u200b", "a space or control character"),
        ("//h", "no host"),
        ("http://", "no host"),
        ("http://:80", "no host"),
        ("http:///path", "no host"),
        ("::1", "IPv6 addresses go in brackets"),
        ("[::1", "an unclosed '['"),
        ("[zz::1]:11434", "'zz::1' in brackets, which is not an IPv6 address"),
        ("[::1]x", "text after ']'"),
        ("user:pw@host", "a user name or password"),
        ("http://host/api?x=1", "a query (?) or fragment (#)"),
        ("host#frag", "a query (?) or fragment (#)"),
        ("ho$t:11434", "the host 'ho$t'"),
        ("HTTP://host", "scheme 'HTTP'"),
    ],
)
def test_an_ollama_host_that_would_be_silently_changed_is_refused_saying_what_is_valid(
    raw: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_ollama_host(raw)
    message = str(caught.value)
    shown = raw.replace("user:pw@", "***@")  # a password is never shown
    assert message.startswith(f"OLLAMA_HOST {shown!r} ") and problem in message, message
    assert "1-65535" in message and "127.0.0.1:11434" in message, message  # what a valid value looks like


def test_a_refused_ollama_host_names_where_it_came_from() -> None:
    with pytest.raises(ConfigError, match=r"^OLLAMA_URL 'h:0' has port 0"):
        load_config({"OLLAMA_URL": "h:0"})
    with pytest.raises(ConfigError, match=r"^OLLAMA_HOST 'h:0' has port 0"):
        load_config({"OLLAMA_HOST": "h:0", "OLLAMA_URL": "fine:1"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("localhost", "http://localhost:11434"),
        ("0.0.0.0:11434", "http://0.0.0.0:11434"),
        ("http://h:1234/", "http://h:1234"),
        ("[::1]:11434", "http://[::1]:11434"),
        ("https://ollama.example.org/", "https://ollama.example.org:443"),
        ("http://ollama.internal:11434/ollama/", "http://ollama.internal:11434/ollama"),
        ("gpu_box-2.lan:65535", "http://gpu_box-2.lan:65535"),
        ("Ollama.Internal", "http://ollama.internal:11434"),
        ("http://host:1", "http://host:1"),
    ],
)
def test_legitimate_ollama_hosts_keep_working(raw: str, expected: str) -> None:
    assert parse_ollama_host(raw) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("http://127.0.0.1:8000/v1\n", None),  # a trailing newline (from `cat key`) is trimmed: fine
        ("http://127.0.0.1:8000/v1\nX-Injected: 1", "a space or control character"),
        ("http://vllm:8000/v 1", "a space or control character"),
        ("http://vllm:8000/v1\x7f", "a space or control character"),
        ("ftp://vllm/v1", "http:// or https://"),
        ("vllm:8000/v1", "http:// or https://"),
        ("http:///v1", "no host"),
        ("http://vllm:0/v1", "port 0"),
        ("http://vllm:99999/v1", "port 99999"),
        ("http://vllm:abc/v1", "port 'abc'"),
        ("http://key:secret@vllm:8000/v1", "a user name or password"),
        ("http://vllm:8000/v1?api-version=1", "a query (?) or fragment (#)"),
    ],
)
def test_an_unusable_openai_base_url_is_refused_when_the_config_is_loaded(
    raw: str, problem: str | None
) -> None:
    if problem is None:
        assert load_config({"OPENAI_BASE_URL": raw}).openai_base_url == raw.strip()
        return
    with pytest.raises(ConfigError) as caught:
        load_config({"OPENAI_BASE_URL": raw})
    message = str(caught.value)
    assert message.startswith("OPENAI_BASE_URL ") and problem in message, message
    assert "http://127.0.0.1:8000/v1" in message, message  # an example of a valid value
    assert "secret" not in message


@pytest.mark.parametrize(
    "raw", ["http://127.0.0.1:8000/v1", "https://api.example.com/v1/", "http://[::1]:8080/v1", "http://h"]
)
def test_legitimate_openai_base_urls_are_kept_as_written(raw: str) -> None:
    assert load_config({"OPENAI_BASE_URL": f"  {raw} "}).openai_base_url == raw


def test_an_api_key_with_a_newline_inside_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY contains a space or control character") as caught:
        load_config({"OPENAI_API_KEY": "sk-abc123\nX-Injected: 1"})
    assert "abc123" not in str(caught.value)
    assert load_config({"OPENAI_API_KEY": "sk-abc123\n"}).openai_api_key == "sk-abc123"  # trimmed


# -- paths and numbers the operating system would trip over later -------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NBCHAT_CONFIG": "/etc/nbchat/a\x00b.toml"}, "NBCHAT_CONFIG contains a NUL character"),
        ({"NBCHAT_CONFIG": "~no-such-user-here/config.toml"}, "NBCHAT_CONFIG names the home of"),
        ({"NBCHAT_DATA_DIR": "~no-such-user-here/chats"}, "NBCHAT_DATA_DIR names the home of"),
    ],
)
def test_a_path_that_cannot_be_resolved_is_a_config_error_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env)


@pytest.mark.parametrize("raw", ["1e12", "1e300", "86401"])
def test_a_read_timeout_too_long_for_the_operating_system_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="NBCHAT_READ_TIMEOUT must be at most 86,400 seconds"):
        load_config({"NBCHAT_READ_TIMEOUT": raw})
    assert load_config({"NBCHAT_READ_TIMEOUT": "86400"}).read_timeout_s == 86400.0


@pytest.mark.parametrize("variable", ["OLLAMA_HOST", "OPENAI_BASE_URL"])
@pytest.mark.parametrize("address", ["http://ann:hunter22@host:11434", "https://ann:hunter22@h/v1"])
def test_a_refused_address_never_shows_its_password(variable: str, address: str) -> None:
    with pytest.raises(ConfigError, match="user name or password") as refused:
        load_config({variable: address})
    assert "hunter22" not in str(refused.value) and "***@" in str(refused.value)
