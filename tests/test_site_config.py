"""An administrator's site file (``NBCHAT_CONFIG``, default ``/etc/nbchat/config.toml``):
defaults for every user, a policy the session enforces, and clear errors for a broken file."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import CHEAP_KDF
from nbchat import Accounts, ChatSession, ConfigError, PolicyError, load_config
from nbchat.config import Policy
from nbchat.testing.ollama_server import OllamaTestServer
from nbchat.types import ConversationSettings

SITE = """
[nbchat]
ollama_host = "ollama.internal:11434"
max_users = 50
qwen_model = "/models/Qwen3-1.7B"

[policy]
models = ["ollama:qwen3:*", "qwen3"]
max_new_tokens = 1024
max_temperature = 1.0
default_system = "You help the data team."
allow_registration = false
"""


def site_file(tmp_path: Path, text: str = SITE) -> dict[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return {"NBCHAT_CONFIG": str(path), "NBCHAT_DATA_DIR": str(tmp_path / "data")}


def test_the_site_file_sets_defaults_for_everyone(tmp_path: Path) -> None:
    config = load_config(site_file(tmp_path))
    assert config.ollama_host == "http://ollama.internal:11434"
    assert config.max_users == 50 and config.qwen_model == "/models/Qwen3-1.7B"
    assert config.site_file == tmp_path / "config.toml"
    assert config.policy == Policy(
        models=("ollama:qwen3:*", "qwen3"),
        max_new_tokens=1024,
        max_temperature=1.0,
        default_system="You help the data team.",
        allow_registration=False,
        source=f"the site policy in {tmp_path / 'config.toml'}",
    )


def test_the_environment_wins_over_the_site_file(tmp_path: Path) -> None:
    env = {**site_file(tmp_path), "OLLAMA_HOST": "http://127.0.0.1:9999", "NBCHAT_MAX_USERS": "4"}
    config = load_config(env)
    assert config.ollama_host == "http://127.0.0.1:9999" and config.max_users == 4


def test_no_site_file_means_defaults_and_no_policy(tmp_path: Path) -> None:
    config = load_config({"NBCHAT_DATA_DIR": str(tmp_path)})
    assert config.policy == Policy() and config.policy.allows_model("ollama:anything")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nbchat\n", "not valid TOML"),
        ("[nbchat]\nollama = 'x'\n", "unknown setting nbchat.ollama"),
        ("[polcy]\n", "unknown table [polcy]"),
        ("[policy]\nmodels = 'ollama:*'\n", "policy.models must be a list"),
        ("[policy]\nmax_new_tokens = 0\n", "policy.max_new_tokens must be a whole number"),
        ("[policy]\nmax_temperature = 3\n", "policy.max_temperature must be a number from 0 to 2"),
        ("[policy]\nallow_registration = 'no'\n", "policy.allow_registration must be true or false"),
        ("[nbchat]\nmax_users = 0\n", "nbchat.max_users in .*config.toml must be at least 1"),
    ],
)
def test_a_broken_site_file_is_a_clear_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        load_config(site_file(tmp_path, text))
    assert str(tmp_path / "config.toml") in str(caught.value)


def test_a_named_site_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config({"NBCHAT_CONFIG": str(tmp_path / "nope.toml")})


# -- hub users on a shared volume ---------------------------------------------------------------


def test_hub_users_on_a_shared_data_volume_get_directories_of_their_own(tmp_path: Path) -> None:
    shared = {"NBCHAT_DATA_DIR": str(tmp_path / "shared")}
    ann = load_config({**shared, "JUPYTERHUB_USER": "ann"})
    ben = load_config({**shared, "JUPYTERHUB_USER": "Ben.Lee@uni.edu"})
    assert ann.data_dir == tmp_path / "shared" / "ann"
    assert ben.data_dir.parent == tmp_path / "shared" and ben.data_dir.name.startswith("ben.lee-uni")
    session = ChatSession(ann, accounts=Accounts(ann, bcrypt_rounds=4, kdf=CHEAP_KDF))
    session.login_from_hub()
    session.new_conversation("Mine")
    assert stat.S_IMODE(ann.data_dir.stat().st_mode) == 0o700
    for path in ann.data_dir.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


def test_without_hub_trust_a_shared_data_dir_is_one_account_store(tmp_path: Path) -> None:
    config = load_config(
        {"NBCHAT_DATA_DIR": str(tmp_path), "JUPYTERHUB_USER": "ann", "NBCHAT_TRUST_HUB_USER": "0"}
    )
    assert config.data_dir == tmp_path


# -- the policy, enforced by the session --------------------------------------------------------


@pytest.fixture
def server() -> Iterator[OllamaTestServer]:
    with OllamaTestServer() as running:
        yield running


@pytest.fixture
def policed(tmp_path: Path, server: OllamaTestServer) -> ChatSession:
    config = replace(load_config(site_file(tmp_path)), ollama_host=server.url)
    session = ChatSession(config, accounts=Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF))
    Accounts(replace(config, policy=Policy()), bcrypt_rounds=4, kdf=CHEAP_KDF).register(
        "alice", "correct horse"
    )
    session.login("alice", "correct horse")
    return session


def test_only_allowed_models_are_offered(policed: ChatSession) -> None:
    assert policed.models() == ["ollama:qwen3:1.7b", "qwen3"]
    assert policed.model_choices() == (["ollama:qwen3:1.7b", "qwen3"], None)


def test_a_forbidden_model_is_refused_naming_the_rule(policed: ChatSession) -> None:
    policed.new_conversation()
    with pytest.raises(
        PolicyError,
        match=(
            r"ollama:llama3.2:1b is not allowed here: "
            r"the site policy in .*config.toml allows only ollama:qwen3:\*, qwen3\."
        ),
    ):
        policed.configure(model="ollama:llama3.2:1b")
    assert policed.settings.model is None


def test_caps_on_max_tokens_and_temperature(policed: ChatSession) -> None:
    policed.new_conversation()
    with pytest.raises(PolicyError, match="at most 1,024"):
        policed.configure(model="ollama:qwen3:1.7b", max_new_tokens=2000)
    with pytest.raises(PolicyError, match=r"at most 1\.0"):
        policed.configure(temperature=1.5)
    policed.configure(model="ollama:qwen3:1.7b", max_new_tokens=1024, temperature=1.0)


def test_new_conversations_start_with_the_sites_system_prompt(policed: ChatSession) -> None:
    assert policed.new_conversation().settings.system == "You help the data team."


def test_a_conversation_saved_before_the_policy_cannot_send_past_it(
    policed: ChatSession, server: OllamaTestServer
) -> None:
    before = ChatSession(replace(policed.config, policy=Policy()), accounts=policed.accounts)
    before.login("alice", "correct horse")
    before.new_conversation()
    before.configure(model="ollama:llama3.2:1b")  # saved before the rule existed
    policed.select(before.current.id)  # type: ignore[union-attr]
    with pytest.raises(PolicyError, match="not allowed"):
        policed.send("hello")
    assert policed.history() == [] and not [r for r in server.requests if r["path"] == "/api/chat"]


def test_registration_can_be_closed(policed: ChatSession) -> None:
    with pytest.raises(PolicyError, match="Registration is closed"):
        policed.register("bob", "correct horse")


# -- the rules themselves, on Policy (the session calls these) ---------------------------------

RULES = Policy(
    models=("ollama:qwen3:*", "qwen3"),
    max_new_tokens=1024,
    max_temperature=1.0,
    default_system="You help the data team.",
    source="the site policy in /etc/nbchat/config.toml",
)


def test_policy_refuse_model_names_the_rule_and_where_it_is_set() -> None:
    RULES.refuse_model("ollama:qwen3:1.7b")
    RULES.refuse_model("qwen3")
    with pytest.raises(PolicyError) as caught:
        RULES.refuse_model("ollama:llama3.2:1b")
    assert str(caught.value) == (
        "ollama:llama3.2:1b is not allowed here: the site policy in /etc/nbchat/config.toml "
        "allows only ollama:qwen3:*, qwen3."
    )
    Policy().refuse_model("anything:at-all")  # no [policy] models: every model


def test_a_policy_with_an_empty_model_list_says_it_allows_no_model() -> None:
    with pytest.raises(PolicyError, match=r"allows no model at all\.$"):
        Policy(models=()).refuse_model("qwen3")


def test_policy_check_settings_refuses_what_is_past_a_rule_with_todays_messages() -> None:
    RULES.check_settings(ConversationSettings(model="qwen3", max_new_tokens=1024, temperature=1.0))
    RULES.check_settings(ConversationSettings())  # no model chosen yet: nothing to refuse
    with pytest.raises(PolicyError, match=r"^ollama:llama3.2:1b is not allowed here"):
        RULES.check_settings(ConversationSettings(model="ollama:llama3.2:1b"))
    with pytest.raises(PolicyError) as tokens:
        RULES.check_settings(ConversationSettings(model="qwen3", max_new_tokens=2000))
    assert str(tokens.value) == (
        "Max new tokens must be at most 1,024 here (the site policy in /etc/nbchat/config.toml), not 2,000."
    )
    with pytest.raises(PolicyError) as temperature:
        RULES.check_settings(ConversationSettings(temperature=1.5))
    assert str(temperature.value) == (
        "Temperature must be at most 1.0 here (the site policy in /etc/nbchat/config.toml), not 1.5."
    )
    Policy().check_settings(ConversationSettings(model="x", max_new_tokens=131_072, temperature=2.0))


def test_policy_starting_settings_bring_the_system_prompt_within_the_caps() -> None:
    start = RULES.starting_settings(ConversationSettings(max_new_tokens=4096, temperature=1.8, think=True))
    assert start == ConversationSettings(
        max_new_tokens=1024, temperature=1.0, think=True, system="You help the data team."
    )
    RULES.check_settings(start)
    within = ConversationSettings(max_new_tokens=100, temperature=0.2)
    assert RULES.starting_settings(within) == replace(within, system="You help the data team.")
    plain = ConversationSettings()
    assert Policy().starting_settings(plain) is plain  # no rules: nothing changes
