"""Model engines behind one protocol (``base.Backend``), and the registry that picks one.

Model ids: ``ollama:<name>`` (e.g. ``ollama:qwen3:1.7b``), ``openai:<model>`` (a model of
the OpenAI-compatible server at ``OPENAI_BASE_URL``: vLLM, llama-server, TGI, ...),
``transformers:<hub id or local path>``, and the alias ``qwen3`` for the configured local
Qwen3 (``NBCHAT_QWEN_MODEL``, default ``Qwen/Qwen3-1.7B``). Backends are created once per
kernel (one HTTP client per Ollama host and per OpenAI base URL, one local-model manager)
and shared.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nbchat.config import Config, load_config
from nbchat.errors import BackendError, ConfigError, InvalidValue
from nbchat.types import check_model_id

if TYPE_CHECKING:
    from nbchat.backends.base import Backend

LOCAL_ALIAS = "qwen3"
PREFIXES = ("ollama", "transformers", "openai")

_backends: dict[tuple[str, str], Backend] = {}
_backends_lock = threading.Lock()


@dataclass(frozen=True)
class ModelRef:
    """A model id split into its engine and the name inside that engine."""

    prefix: str
    name: str

    @property
    def id(self) -> str:
        return f"{self.prefix}:{self.name}"


def parse_model_id(model_id: str, config: Config | None = None) -> ModelRef:
    """``"ollama:qwen3:1.7b"`` → ``ModelRef("ollama", "qwen3:1.7b")``; unknown forms are refused."""
    text = check_model_id("The model id", model_id)
    if text is None:
        raise InvalidValue("Choose a model first.")
    if text == LOCAL_ALIAS:
        return ModelRef("transformers", (config or load_config()).qwen_model)
    prefix, sep, name = text.partition(":")
    name = name.strip()
    if not sep or prefix not in PREFIXES or not name:
        raise InvalidValue(
            f"Unknown model id {text!r}: use ollama:<name> (e.g. ollama:qwen3:1.7b), "
            "openai:<model> (a model of the server at OPENAI_BASE_URL, e.g. openai:Qwen/Qwen3-1.7B), "
            f"transformers:<hub id or local directory>, or {LOCAL_ALIAS!r} for the local Qwen3."
        )
    return ModelRef(prefix, name)


def backend_for(prefix: str, config: Config | None = None) -> Backend:
    """The shared backend of an engine (for Ollama: of the configured host; for OpenAI: base URL).

    ``openai`` without ``OPENAI_BASE_URL`` is a ``ConfigError`` saying to set it. The API key is
    read each time, so a key set in a running kernel is used from the next request on.
    """
    config = config or load_config()
    if prefix == "openai":
        from nbchat.backends.openai import OpenAIBackend, check_base_url

        base_url = check_base_url(config.openai_base_url)
        with _backends_lock:
            key = (prefix, f"{base_url} {config.read_timeout_s} {config.openai_think_switch}")
            backend = _backends.get(key)
            if not isinstance(backend, OpenAIBackend):
                backend = OpenAIBackend(
                    base_url,
                    config.openai_api_key,
                    read_timeout=config.read_timeout_s,
                    think_switch=config.openai_think_switch,
                )
                _backends[key] = backend
        backend.use_api_key(config.openai_api_key)
        return backend
    key = (prefix, f"{config.ollama_host} {config.read_timeout_s}" if prefix == "ollama" else "")
    with _backends_lock:
        backend = _backends.get(key)
        if backend is None:
            if prefix == "ollama":
                from nbchat.backends.ollama import OllamaBackend

                backend = OllamaBackend(config.ollama_host, read_timeout=config.read_timeout_s)
            elif prefix == "transformers":
                from nbchat.backends.transformers import TransformersBackend  # imports no torch yet

                backend = TransformersBackend()
            else:
                raise InvalidValue(f"Unknown engine {prefix!r}; the engines are {', '.join(PREFIXES)}.")
            _backends[key] = backend
        return backend


def resolve(model_id: str, config: Config | None = None) -> tuple[Backend, str]:
    """The backend that serves ``model_id``, and the model's name inside it."""
    ref = parse_model_id(model_id, config)
    return backend_for(ref.prefix, config), ref.name


def model_choices(config: Config | None = None) -> tuple[list[str], list[str]]:
    """Model ids to offer now, and why an engine's models are missing (one line per engine).

    The Ollama server's models, the OpenAI-compatible server's (when ``OPENAI_BASE_URL`` is
    set), each sorted, then the local Qwen3. An engine that is unreachable or misconfigured
    is left out and its error kept: the others are still offered.
    """
    config = config or load_config()
    engines = ["ollama", "openai"] if config.openai_base_url else ["ollama"]
    models: list[str] = []
    problems: list[str] = []
    for engine in engines:
        try:
            models += sorted(backend_for(engine, config).models())  # a dropdown reads best in order
        except (BackendError, ConfigError) as exc:
            problems.append(str(exc))
    return [*models, LOCAL_ALIAS], problems


def available_models(config: Config | None = None) -> list[str]:
    """Model ids to offer now (see ``model_choices``), without the reasons for missing ones."""
    return model_choices(config)[0]
