"""The panel's prompt box: a multi-line text area that sends on Ctrl+Enter (Cmd+Enter on a Mac).

ipywidgets' ``Textarea`` reports no key presses, so the box is a tiny
``anywidget`` (a front-end module shipped as a string, no build step): it
syncs ``value`` as the user types and, on Ctrl/Cmd+Enter, syncs the text once
more and tells the kernel ``{"event": "submit"}``. Plain Enter makes a new
line, as in any chat app's multi-line box.
"""

from __future__ import annotations

from collections.abc import Callable

import anywidget
import traitlets

_ESM = """
function render({ model, el }) {
  const area = document.createElement("textarea");
  area.className = "nbchat-prompt-input";
  area.rows = 3;
  const sync = () => {
    area.value = model.get("value");
    area.placeholder = model.get("placeholder");
    area.disabled = model.get("disabled");
  };
  sync();
  area.addEventListener("input", () => {
    model.set("value", area.value);
    model.save_changes();
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      event.stopPropagation();
      model.set("value", area.value);
      model.save_changes();
      model.send({ event: "submit" });
    }
  });
  model.on("change:value", () => {
    if (area.value !== model.get("value")) area.value = model.get("value");
  });
  model.on("change:placeholder", sync);
  model.on("change:disabled", sync);
  el.appendChild(area);
}
export default { render };
"""

_CSS = """
.nbchat-prompt-input {
  width: 100%;
  box-sizing: border-box;
  min-height: 4.5em;
  resize: vertical;
  font: inherit;
  padding: 6px 8px;
  border: 1px solid var(--jp-border-color1, #bdbdbd);
  border-radius: 4px;
  background: var(--jp-layout-color1, white);
  color: var(--jp-ui-font-color1, black);
}
"""


class PromptBox(anywidget.AnyWidget):
    """A multi-line prompt; ``on_submit(callback)`` runs on Ctrl/Cmd+Enter with the text."""

    _esm = _ESM
    _css = _CSS
    value = traitlets.Unicode("").tag(sync=True)
    placeholder = traitlets.Unicode("").tag(sync=True)
    disabled = traitlets.Bool(False).tag(sync=True)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._submit_callbacks: list[Callable[[PromptBox], None]] = []
        self.on_msg(self._on_message)

    def on_submit(self, callback: Callable[[PromptBox], None]) -> None:
        self._submit_callbacks.append(callback)

    def submit(self) -> None:
        """What Ctrl/Cmd+Enter does (also callable from code)."""
        if self.disabled:
            return
        for callback in list(self._submit_callbacks):
            callback(self)

    def _on_message(self, _widget: object, content: object, _buffers: object) -> None:
        if isinstance(content, dict) and content.get("event") == "submit":
            self.submit()
