"""The parts every engine shares: generation parameters, the reply stream, the model-id registry."""

from __future__ import annotations

import threading
from collections.abc import Generator

import pytest

from nbchat import Config, InvalidValue
from nbchat.backends import LOCAL_ALIAS, ModelRef, backend_for, parse_model_id, resolve
from nbchat.backends.base import ReplyStream
from nbchat.errors import GenerationFailed
from nbchat.types import Chunk, GenerationParams, GenerationStats


class ScriptedStream(ReplyStream):
    """A stream that plays a fixed script: the smallest honest engine, to test the shared base."""

    def __init__(self, script: list[Chunk], fail_after: int | None = None) -> None:
        super().__init__("test", "scripted", [], GenerationParams())
        self.script, self.fail_after = script, fail_after

    def _generate(self) -> Generator[Chunk, None, GenerationStats]:
        for number, chunk in enumerate(self.script):
            if self.cancelled:
                return GenerationStats("stop")
            if self.fail_after is not None and number == self.fail_after:
                raise GenerationFailed("the engine broke")
            yield chunk
        return GenerationStats("stop", prompt_tokens=5, completion_tokens=len(self.script))


SCRIPT = [Chunk("thinking", "Hmm, "), Chunk("thinking", "easy."), Chunk("text", "Four"), Chunk("text", ".")]


def test_text_and_thinking_accumulate_apart() -> None:
    stream = ScriptedStream(SCRIPT)
    assert list(stream) == SCRIPT
    assert (stream.thinking, stream.text) == ("Hmm, easy.", "Four.")
    assert stream.stats is not None and stream.stats.finish_reason == "stop"
    assert stream.stats.completion_tokens == 4 and stream.stats.prompt_tokens == 5
    assert stream.stats.ttft_s is not None and stream.stats.duration_s >= stream.stats.ttft_s
    assert stream.done


def test_a_failure_keeps_the_partial_reply_on_the_error_and_the_stream() -> None:
    stream = ScriptedStream(SCRIPT, fail_after=3)
    with pytest.raises(GenerationFailed) as error:
        stream.wait()
    assert (error.value.partial_thinking, error.value.partial_text) == ("Hmm, easy.", "Four")
    assert stream.text == "Four" and stream.error is error.value
    assert stream.stats is not None and stream.stats.finish_reason == "error"
    assert stream.stats.error == "the engine broke"


def test_cancel_from_another_thread_ends_the_stream_as_cancelled_keeping_the_text() -> None:
    stream = ScriptedStream(SCRIPT)
    iterator = iter(stream)
    first = next(iterator)
    canceller = threading.Thread(target=stream.cancel)
    canceller.start()
    canceller.join()
    assert [first, *iterator] == SCRIPT[:1]
    assert stream.thinking == "Hmm, "
    assert stream.stats is not None and stream.stats.finish_reason == "cancelled"


def test_a_stream_is_iterated_once() -> None:
    stream = ScriptedStream(SCRIPT)
    stream.wait()
    with pytest.raises(RuntimeError, match="only once"):
        list(stream)
    assert stream.wait() is stream


def test_stats_convert_to_what_a_message_saves() -> None:
    stats = GenerationStats("length", prompt_tokens=3, completion_tokens=8, tokens_per_s=12.5)
    assert stats.to_dict() == {
        "finish_reason": "length",
        "prompt_tokens": 3,
        "completion_tokens": 8,
        "tokens_per_s": 12.5,
    }


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"temperature": 3}, "from 0 to 2"),
        ({"max_new_tokens": 0}, "from 1 to"),
        ({"seed": -1}, "seed must be"),
        ({"top_k": 2.5}, "top_k must be"),
        ({"top_p": 0}, "top_p must be"),
        ({"top_p": 1.5}, "top_p must be"),
        ({"context_size": 0}, "context_size must be"),
        ({"think": 1}, "True or False"),
    ],
)
def test_generation_params_are_validated(changes: dict, reason: str) -> None:
    with pytest.raises(InvalidValue, match=reason):
        GenerationParams(**changes)


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("ollama:qwen3:1.7b", ModelRef("ollama", "qwen3:1.7b")),
        ("ollama:phi3", ModelRef("ollama", "phi3")),
        ("transformers:/models/qwen3", ModelRef("transformers", "/models/qwen3")),
        ("transformers:Qwen/Qwen3-0.6B", ModelRef("transformers", "Qwen/Qwen3-0.6B")),
        (f"  {LOCAL_ALIAS} ", ModelRef("transformers", "/opt/qwen")),
    ],
)
def test_model_ids_name_an_engine_and_a_model(model_id: str, expected: ModelRef) -> None:
    config = Config(data_dir=None, qwen_model="/opt/qwen")  # type: ignore[arg-type]
    assert parse_model_id(model_id, config) == expected
    assert expected.id == f"{expected.prefix}:{expected.name}"


@pytest.mark.parametrize("model_id", ["phi3", "ollama:", "openai-ish:gpt", "transformers:  ", ":x"])
def test_unknown_model_ids_are_refused_with_the_forms_that_work(model_id: str) -> None:
    with pytest.raises(InvalidValue, match="use ollama:<name>"):
        parse_model_id(model_id)


def test_no_model_chosen_is_its_own_clear_error() -> None:
    with pytest.raises(InvalidValue, match="Choose a model"):
        parse_model_id(None)  # type: ignore[arg-type]


def test_backends_are_shared_per_engine_and_host(tmp_path) -> None:
    one = Config(data_dir=tmp_path, ollama_host="http://127.0.0.1:1")
    two = Config(data_dir=tmp_path, ollama_host="http://127.0.0.1:2")
    assert backend_for("ollama", one) is backend_for("ollama", one)
    assert backend_for("ollama", one) is not backend_for("ollama", two)
    backend, name = resolve("ollama:phi3", one)
    assert backend is backend_for("ollama", one) and name == "phi3"
