"""The login form: name, password, *Log in* / *Register*, and its message line."""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets

from nbchat.panel.kit import classed, close_widgets, error_html

#: ``on_submit(name, password, register)``: what *Log in* (False) or *Register* (True) asks for.
Submit = Callable[[str, str, bool], None]

#: Shown beside *Register* where new accounts are encrypted: said before the choice, not after.
ENCRYPTED_NOTICE = (
    "New accounts here keep their conversations encrypted under your password. "
    "If you forget it, they cannot be recovered, by you or by anyone else: "
    "use <b>Export</b> to keep a copy of what you want to keep."
)


class LoginForm:
    """The logged-out view; the password field is emptied after every attempt, whatever happens."""

    def __init__(self, on_submit: Submit) -> None:
        self._on_submit = on_submit
        self.username = classed(widgets.Text(placeholder="username", description="User"), "nbchat-username")
        self.password = classed(
            widgets.Password(placeholder="password", description="Password"), "nbchat-password"
        )
        self.login_button = classed(
            widgets.Button(description="Log in", button_style="primary", icon="sign-in"), "nbchat-login"
        )
        self.register_button = classed(widgets.Button(description="Register"), "nbchat-register")
        self.register_notice = classed(widgets.HTML(), "nbchat-register-notice")
        self.register_notice.layout.display = "none"
        self.message = classed(widgets.HTML(), "nbchat-login-message")
        self.login_button.on_click(lambda _: self._submit(register=False))
        self.register_button.on_click(lambda _: self._submit(register=True))
        self.view = classed(
            widgets.VBox(
                [
                    widgets.HTML("<b>nbchat</b>: log in, or register a new account."),
                    self.username,
                    self.password,
                    widgets.HBox([self.login_button, self.register_button]),
                    self.register_notice,
                    self.message,
                ]
            ),
            "nbchat-login-view",
        )

    def _submit(self, *, register: bool) -> None:
        name, password = self.username.value.strip(), self.password.value
        self.password.value = ""
        self._on_submit(name, password, register)

    def show(self, *, allow_registration: bool, hub_error: str | None, encrypted: bool = False) -> None:
        """Logged out: *Register* only where the site allows it; a failed hub login is said once.

        ``encrypted`` (the site's ``encrypt_local_accounts``): registering creates an encrypted
        account, so the form says, before *Register* is pressed, that a forgotten password loses
        the conversations and that *Export* keeps a copy.
        """
        self.register_button.layout.display = None if allow_registration else "none"
        warn = allow_registration and encrypted
        self.register_notice.value = ENCRYPTED_NOTICE if warn else ""
        self.register_notice.layout.display = None if warn else "none"
        if hub_error is not None and not self.message.value:
            self.message.value = error_html(f"JupyterHub login failed: {hub_error}")
        self.password.value = ""

    def refused(self, reason: str) -> None:
        self.message.value = error_html(reason)

    def accepted(self) -> None:
        """Logged in here: the name is forgotten too, so the next person finds the form empty."""
        self.username.value = ""

    def clear_message(self) -> None:
        self.message.value = ""

    def close(self) -> None:
        close_widgets(self.view)
