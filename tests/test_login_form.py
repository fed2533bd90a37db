"""The login form says, before *Register* is pressed, what an encrypted account costs a forgetful user."""

from __future__ import annotations

from dataclasses import replace

from conftest import CHEAP_KDF
from nbchat import Accounts, ChatSession, Config
from nbchat.panel import ChatPanel
from nbchat.panel.login_form import LoginForm


def form() -> LoginForm:
    return LoginForm(lambda name, password, register: None)


def shown(form: LoginForm) -> bool:
    return form.register_notice.layout.display != "none" and bool(form.register_notice.value)


def test_where_registration_creates_encrypted_accounts_the_form_warns_a_lost_password_loses_them() -> None:
    login = form()
    login.show(allow_registration=True, hub_error=None, encrypted=True)
    assert shown(login)
    text = login.register_notice.value.lower()
    assert "forget" in text and "cannot be recovered" in text and "export" in text
    assert "nbchat-register-notice" in login.register_notice._dom_classes
    assert login.view.children.index(login.register_notice) < login.view.children.index(login.message)


def test_without_encryption_or_without_registration_the_form_says_nothing_of_it() -> None:
    login = form()
    login.show(allow_registration=True, hub_error=None, encrypted=False)
    assert not shown(login)
    login.show(allow_registration=False, hub_error=None, encrypted=True)  # nobody can register here
    assert not shown(login)
    login.show(allow_registration=True, hub_error=None)  # a caller that does not say: as before
    assert not shown(login)


def test_the_notice_follows_the_policy_each_time_the_form_is_shown() -> None:
    login = form()
    login.show(allow_registration=True, hub_error=None, encrypted=True)
    login.show(allow_registration=True, hub_error=None, encrypted=False)
    assert not shown(login)
    login.show(allow_registration=True, hub_error=None, encrypted=True)
    assert shown(login)


def test_the_notice_is_not_the_message_line_a_refusal_leaves_it_in_place() -> None:
    login = form()
    login.show(allow_registration=True, hub_error=None, encrypted=True)
    login.refused("That name is taken.")
    login.clear_message()
    assert shown(login) and login.message.value == ""


def test_a_logged_out_panel_on_a_site_that_encrypts_accounts_shows_the_notice(config: Config) -> None:
    """The panel hands the site's policy to the form (a session nobody is logged into)."""
    encrypting = replace(config, policy=replace(config.policy, encrypt_local_accounts=True))
    panel = ChatPanel(ChatSession(encrypting, accounts=Accounts(encrypting, bcrypt_rounds=4, kdf=CHEAP_KDF)))
    try:
        assert shown(panel.login_form)
    finally:
        panel.close()
    clear = replace(config, policy=replace(config.policy, encrypt_local_accounts=False))
    panel = ChatPanel(ChatSession(clear, accounts=Accounts(clear, bcrypt_rounds=4, kdf=CHEAP_KDF)))
    try:
        assert not shown(panel.login_form)
    finally:
        panel.close()
