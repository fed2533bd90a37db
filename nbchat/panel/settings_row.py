"""The conversation's settings: model (with "— choose a model —" first), temperature, max new tokens,
thinking and the system prompt."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from nbchat.panel.kit import Quiet, classed, close_widgets, error_html
from nbchat.types import MAX_NEW_TOKENS_CEILING, ConversationSettings

#: The first entry of the model dropdown: nothing can be sent while it is selected.
CHOOSE_MODEL = "— choose a model —"


class SettingsRow:
    """Shows one conversation's settings; a person's change is reported, never applied here.

    ``on_model(model_id or None)`` and ``on_setting(name, value)`` hear what a
    person picked; values written by ``show`` are not reported back.
    """

    def __init__(
        self,
        *,
        on_model: Callable[[str | None], None],
        on_setting: Callable[[str, Any], None],
        on_refresh_models: Callable[[], None],
    ) -> None:
        self._on_model, self._on_setting = on_model, on_setting
        self._quiet = Quiet()
        self._model_ids: list[str] = []
        self.model = classed(
            widgets.Dropdown(description="Model", options=[(CHOOSE_MODEL, "")], layout={"width": "360px"}),
            "nbchat-model",
        )
        self.model.observe(self._picked_model, names="value")
        self.refresh_models_button = classed(
            widgets.Button(
                icon="refresh", tooltip="Ask Ollama for its models again", layout={"width": "auto"}
            ),
            "nbchat-refresh-models",
        )
        self.refresh_models_button.on_click(lambda _: on_refresh_models())
        self.models_note = classed(widgets.HTML(), "nbchat-models-note")
        self.temperature = classed(
            widgets.FloatSlider(
                value=0.7,
                min=0.0,
                max=2.0,
                step=0.05,
                description="Temperature",
                continuous_update=False,
                style={"description_width": "initial"},
            ),
            "nbchat-temperature",
        )
        self.max_tokens = classed(
            widgets.BoundedIntText(
                value=512,
                min=1,
                max=MAX_NEW_TOKENS_CEILING,
                description="Max new tokens",
                style={"description_width": "initial"},
                layout={"width": "220px"},
            ),
            "nbchat-max-tokens",
        )
        self.think = classed(
            widgets.Checkbox(value=False, description="Think first", indent=False), "nbchat-think"
        )
        self.system = classed(
            widgets.Textarea(placeholder="e.g. Be brief.", continuous_update=False, layout={"width": "100%"}),
            "nbchat-system",
        )
        self.system_box = widgets.Accordion(children=[self.system], titles=("System prompt",))
        self.system_box.selected_index = None
        for widget, name in (
            (self.temperature, "temperature"),
            (self.max_tokens, "max_new_tokens"),
            (self.think, "think"),
            (self.system, "system"),
        ):
            widget.observe(self._reporter(name), names="value")
        self.rows: tuple[widgets.Widget, ...] = (
            widgets.HBox([self.model, self.refresh_models_button, self.models_note]),
            widgets.HBox([self.temperature, self.max_tokens, self.think]),
            self.system_box,
        )

    def show(self, settings: ConversationSettings) -> None:
        """``settings`` as they are stored; a model no longer listed (or a local path) still shows."""
        with self._quiet:
            self._set_model_options(settings.model)
            self.model.value = settings.model or ""
            self.temperature.value = settings.temperature
            self.max_tokens.value = settings.max_new_tokens
            self.think.value = settings.think
            self.system.value = settings.system

    def offer(self, model_ids: list[str], problem: str | None, current: str | None) -> None:
        """The models that can be chosen now, and why some may be missing (Ollama unreachable)."""
        self._model_ids = list(model_ids)
        self.models_note.value = error_html(problem) if problem else ""
        with self._quiet:
            self._set_model_options(current)
            self.model.value = current or ""

    def set_busy(self, busy: bool) -> None:
        self.model.disabled = busy

    def clear(self) -> None:
        """Logged out: no model offered, no system prompt left for the next person to read."""
        with self._quiet:
            self._model_ids = []
            self.model.options = [(CHOOSE_MODEL, "")]
            self.models_note.value = ""
            self.system.value = ""

    def close(self) -> None:
        close_widgets(*self.rows)

    def _set_model_options(self, current: str | None) -> None:
        ids = list(self._model_ids)
        if current and current not in ids:
            ids.append(current)
        options = [(CHOOSE_MODEL, ""), *((model, model) for model in ids)]
        if list(self.model.options) != options:
            self.model.options = options

    def _picked_model(self, change: dict[str, Any]) -> None:
        if not self._quiet.on:
            self._on_model(change["new"] or None)

    def _reporter(self, name: str) -> Callable[[dict[str, Any]], None]:
        def changed(change: dict[str, Any]) -> None:
            if not self._quiet.on:
                self._on_setting(name, change["new"])

        return changed
