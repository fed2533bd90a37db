"""Every key of the site file has one type: a wrong one is a ConfigError naming the file, the key,
the type found and the type expected, when the file is read (never a stringified value later)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbchat import ConfigError, load_config
from nbchat.types import MAX_SYSTEM_CHARS


def load_site(tmp_path: Path, text: str, **env: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    data_dir = {} if "data_dir" in text else {"NBCHAT_DATA_DIR": str(tmp_path / "data")}
    load_config({"NBCHAT_CONFIG": str(path), **data_dir, **env})


# (the TOML line, the key as the error names it, what the error says was found)
WRONG_TYPES = [
    ("[nbchat]\nqwen_dtype = 16", "nbchat.qwen_dtype", "an integer"),
    ("[nbchat]\ndata_dir = 5", "nbchat.data_dir", "an integer"),
    ('[nbchat]\ndata_dir = ["/a"]', "nbchat.data_dir", "an array"),
    ("[nbchat]\ndata_dir = { path = '/a' }", "nbchat.data_dir", "a table"),
    ("[nbchat]\nmax_users = 'ten'", "nbchat.max_users", "text"),
    ("[nbchat]\nmax_users = true", "nbchat.max_users", "true/false"),
    ("[nbchat]\nmax_users = 2.5", "nbchat.max_users", "a decimal number"),
    ("[nbchat]\nollama_host = 11434", "nbchat.ollama_host", "an integer"),
    ("[nbchat]\nqwen_model = false", "nbchat.qwen_model", "true/false"),
    ("[nbchat]\nopenai_base_url = 8000", "nbchat.openai_base_url", "an integer"),
    ("[nbchat]\nopenai_api_key = 123", "nbchat.openai_api_key", "an integer"),
    ("[nbchat]\ntrust_hub_user = 'no'", "nbchat.trust_hub_user", "text"),
    ("[nbchat]\ntrust_hub_user = 0", "nbchat.trust_hub_user", "an integer"),
    ("[nbchat]\nread_timeout = '30'", "nbchat.read_timeout", "text"),
    ("[nbchat]\nread_timeout = true", "nbchat.read_timeout", "true/false"),
    ("[nbchat]\nread_timeout = 1979-05-27", "nbchat.read_timeout", "a date"),
    ("[nbchat]\nopenai_think_switch = 'yes'", "nbchat.openai_think_switch", "text"),
    ("[policy]\nmodels = 'ollama:*'", "policy.models", "text"),
    ("[policy]\nmodels = ['ollama:*', 3]", "policy.models", "an integer"),
    ("[policy]\nmax_new_tokens = '512'", "policy.max_new_tokens", "text"),
    ("[policy]\nmax_new_tokens = true", "policy.max_new_tokens", "true/false"),
    ("[policy]\nmax_new_tokens = 512.0", "policy.max_new_tokens", "a decimal number"),
    ("[policy]\nmax_temperature = '1'", "policy.max_temperature", "text"),
    ("[policy]\nmax_temperature = true", "policy.max_temperature", "true/false"),
    ("[policy]\ndefault_system = 5", "policy.default_system", "an integer"),
    ("[policy]\ndefault_system = ['Be brief.']", "policy.default_system", "an array"),
    ("[policy]\nallow_registration = 'no'", "policy.allow_registration", "text"),
    ("[policy]\nallow_registration = 1", "policy.allow_registration", "an integer"),
    ("[policy]\nencrypt_local_accounts = 'no'", "policy.encrypt_local_accounts", "text"),
    ("[policy]\nencrypt_local_accounts = 1", "policy.encrypt_local_accounts", "an integer"),
]


@pytest.mark.parametrize(("text", "key", "found"), WRONG_TYPES)
def test_a_wrong_type_is_refused_naming_the_file_the_key_and_the_type_found(
    tmp_path: Path, text: str, key: str, found: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_site(tmp_path, text + "\n")
    message = str(caught.value)
    assert str(tmp_path / "config.toml") in message, message
    assert f"{key} must be " in message and f"not {found}" in message, message


def test_every_key_of_every_table_is_covered_by_a_wrong_type_case() -> None:
    from nbchat.config import POLICY_KEYS, SITE_SETTINGS

    covered = {key for _, key, _ in WRONG_TYPES}
    assert covered == {f"nbchat.{k}" for k in SITE_SETTINGS} | {f"policy.{k}" for k in POLICY_KEYS}


def test_the_error_says_what_type_is_expected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nbchat\.data_dir must be text in quotes"):
        load_site(tmp_path, "[nbchat]\ndata_dir = 5\n")
    with pytest.raises(ConfigError, match=r"nbchat\.max_users must be a whole number"):
        load_site(tmp_path, "[nbchat]\nmax_users = 'ten'\n")
    with pytest.raises(ConfigError, match=r"nbchat\.trust_hub_user must be true or false"):
        load_site(tmp_path, "[nbchat]\ntrust_hub_user = 'no'\n")
    with pytest.raises(ConfigError, match=r"nbchat\.read_timeout must be a number"):
        load_site(tmp_path, "[nbchat]\nread_timeout = '30'\n")
    with pytest.raises(ConfigError, match=r"policy\.models must be a list of text"):
        load_site(tmp_path, "[policy]\nmodels = [1]\n")


def test_a_wrong_type_is_refused_even_when_the_environment_overrides_that_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nbchat\.max_users"):
        load_site(tmp_path, "[nbchat]\nmax_users = 'ten'\n", NBCHAT_MAX_USERS="3")


def test_the_api_keys_value_is_never_shown_in_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_site(tmp_path, "[nbchat]\nopenai_api_key = 987654321\n")
    assert "987654321" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nbchat]\nmax_users = 0\n", "nbchat.max_users in {file} must be at least 1"),
        ("[nbchat]\nread_timeout = -1\n", "nbchat.read_timeout in {file} must be a positive number"),
        ("[nbchat]\nread_timeout = inf\n", "nbchat.read_timeout in {file} must be a positive number"),
        ("[nbchat]\nread_timeout = nan\n", "nbchat.read_timeout in {file} must be a positive number"),
        ("[nbchat]\nollama_host = 'ftp://x'\n", "nbchat.ollama_host in {file}"),
        ("[nbchat]\nopenai_base_url = 'ftp://x/v1'\n", "nbchat.openai_base_url in {file}"),
        ('[nbchat]\ndata_dir = "/a\\u0000b"\n', "nbchat.data_dir in {file} contains a NUL"),
    ],
)
def test_a_bad_value_from_the_file_names_the_file_and_key_not_the_environment_variable(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_site(tmp_path, text)
    assert message.format(file=tmp_path / "config.toml") in str(caught.value)


TEXT_KEYS = ["data_dir", "ollama_host", "qwen_model", "openai_base_url", "openai_api_key"]


@pytest.mark.parametrize("key", TEXT_KEYS)
def test_an_empty_text_setting_in_the_file_is_refused_not_silently_the_default(
    tmp_path: Path, key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"nbchat\.{key} in .*config.toml is empty"):
        load_site(tmp_path, f"[nbchat]\n{key} = '  '\n")


def test_a_default_system_prompt_over_the_size_cap_is_refused_when_the_file_is_read(
    tmp_path: Path,
) -> None:
    too_long = "x" * (MAX_SYSTEM_CHARS + 1)
    with pytest.raises(ConfigError) as caught:
        load_site(tmp_path, f"[policy]\ndefault_system = '{too_long}'\n")
    message = str(caught.value)
    assert str(tmp_path / "config.toml") in message and "policy.default_system" in message
    assert f"{MAX_SYSTEM_CHARS:,}" in message
    load_site(tmp_path, f"[policy]\ndefault_system = '{too_long[:-1]}'\n")  # at the cap: fine


def test_right_types_load_with_their_values(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "[nbchat]\n"
        f"data_dir = '{tmp_path / 'shared'}'\n"
        "max_users = 7\n"
        "ollama_host = 'gpu:11434'\n"
        "qwen_model = '/models/q'\n"
        "openai_base_url = 'http://vllm:8000/v1'\n"
        "openai_api_key = 'sk-site'\n"
        "trust_hub_user = false\n"
        "read_timeout = 30\n"
        "openai_think_switch = true\n"
        "[policy]\n"
        "max_temperature = 1\n"
    )
    config = load_config({"NBCHAT_CONFIG": str(path), "JUPYTERHUB_USER": "ann"})
    assert config.data_dir == tmp_path / "shared"  # trust_hub_user = false: no per-user directory
    assert (config.max_users, config.ollama_host, config.qwen_model) == (7, "http://gpu:11434", "/models/q")
    assert (config.openai_base_url, config.openai_api_key) == ("http://vllm:8000/v1", "sk-site")
    assert config.trust_hub_user is False and config.openai_think_switch is True
    assert config.read_timeout_s == 30.0 and config.policy.max_temperature == 1.0


def test_the_environments_ollama_url_wins_over_the_files_ollama_host(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[nbchat]\nollama_host = 'site-box:11434'\n")
    site = {"NBCHAT_CONFIG": str(path)}
    assert load_config(site).ollama_host == "http://site-box:11434"
    assert load_config({**site, "OLLAMA_URL": "http://mine:1"}).ollama_host == "http://mine:1"
    assert load_config({**site, "OLLAMA_URL": "mine:1", "OLLAMA_HOST": "h:2"}).ollama_host == "http://h:2"
