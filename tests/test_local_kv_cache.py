"""The model process keeps recent prompts' KV caches: a next turn encodes only what is new, never wrongly.

Two copies of the tiny random Qwen3 run side by side, each in its own model
process: one with the prompt cache (the default), one with it off
(``NBCHAT_QWEN_CACHE_PROMPTS=0``: every prompt encoded in full, as raw
``generate`` does). Greedy replies must be token for token the same whatever
the history does — grow, lose its old turns, branch, change its system prompt,
alternate with another conversation, be evicted — in float32 (in bfloat16 the two
ways of computing the same logits round differently, and a random model's near
ties then flip; a real model's rarely are that close), and the ``done`` report's
``cached_tokens`` says how much of each prompt was reused. Most tests speak the
process's protocol through the kernel's handle (``registry.load``) to read that
report; one runs a whole chat through ``TransformersBackend``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nbchat.backends.local import registry
from nbchat.backends.transformers import TransformersBackend, sampling_kwargs, unload
from nbchat.errors import ModelLoadError
from nbchat.testing.tiny_qwen3 import tiny_qwen3
from nbchat.types import GenerationParams, Message

pytestmark = pytest.mark.slow

# Greedy; the penalty keeps a random model from repeating one token, and it reads the whole
# sequence, so it also checks that a cached prompt still reaches the logits processors in full.
GREEDY = {**sampling_kwargs(GenerationParams(temperature=0.0)), "repetition_penalty": 5.0}
SYSTEM = Message("system", "Be brief.")
EMPTY_THINK = "<think>\n\n</think>\n\n"  # what a prompt with thinking off ends with
_IDS = itertools.count(10**9)  # request ids of our own, far from the backend's


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "tiny", seed=0)


def started(checkpoint: Path, name: str, **env: str) -> str:
    """A copy of the checkpoint (a model id of its own), loaded with ``env`` set for its process."""
    path = str(shutil.copytree(checkpoint, checkpoint.parent / name))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        TransformersBackend(dtype="float32").load(path)
    return path


@pytest.fixture(scope="module")
def models(checkpoint: Path) -> Iterator[tuple[str, str]]:
    """(with the prompt cache, without it)."""
    yield started(checkpoint, "cached"), started(checkpoint, "uncached", NBCHAT_QWEN_CACHE_PROMPTS="0")
    unload()


@pytest.fixture
def cached(models: tuple[str, str]) -> str:
    return models[0]


@pytest.fixture
def uncached(models: tuple[str, str]) -> str:
    return models[1]


@dataclass
class Turn:
    prompt: list[int]
    tokens: list[int]
    report: dict[str, Any]
    text: str


def prompt_ids(model: str, messages: list[Message], think: bool = False) -> list[int]:
    handle = registry.get(model)
    assert handle is not None
    text = TransformersBackend().render_prompt(model, messages, think=think)
    return list(handle.tokenizer(text, add_special_tokens=False)["input_ids"])


def ask(
    model: str,
    messages: list[Message],
    *,
    think: bool = False,
    max_new: int = 24,
    cancel_after: int | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Turn:
    """One generate request, spoken to the model process as the backend speaks it."""
    handle = registry.load(model)
    ids = prompt_ids(model, messages, think)
    request = next(_IDS)
    tokens: list[int] = []
    with handle.turn:
        handle.send("generate", request, ids, {**GREEDY, **(kwargs or {}), "max_new_tokens": max_new}, None)
        while True:
            message = handle.receive(timeout=120)
            assert message is not None, "the model process sent nothing for 2 minutes"
            if message[1] != request:
                continue
            if message[0] == "tokens":
                if cancel_after is not None and len(tokens) < cancel_after <= len(tokens) + len(message[2]):
                    handle.send("cancel", request)
                tokens += message[2]
            elif message[0] == "done":
                text = handle.tokenizer.decode(tokens, skip_special_tokens=True)
                return Turn(ids, tokens, message[2], text)
            else:
                pytest.fail(f"the model process failed: {message}")


def same(cached: str, uncached: str, messages: list[Message], **options: Any) -> Turn:
    """The cached model's turn, checked token for token against the uncached model's."""
    with_cache = ask(cached, messages, **options)
    without = ask(uncached, messages, **options)
    assert without.report["cached_tokens"] == 0
    if options.get("cancel_after") is None:
        assert with_cache.tokens == without.tokens
    return with_cache


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def reuse_after(previous: Turn, turn: Turn) -> int:
    """What ``turn`` reuses of ``previous``'s cache: the prompt and every reply token fed but the last."""
    return min(common_prefix(previous.prompt + previous.tokens[:-1], turn.prompt), len(turn.prompt) - 1)


def opening(model: str) -> int:
    """Tokens every prompt begins with (``<|im_start|>system\n``): all another system prompt shares."""
    return common_prefix(
        prompt_ids(model, [Message("system", "A")]), prompt_ids(model, [Message("system", "B")])
    )


def question(number: int) -> Message:
    return Message("user", f"Question {number}: what is {number} + {number}? Please answer briefly.")


def chat(cached: str, uncached: str, turns: int, start: int = 0, system: Message = SYSTEM) -> list[Message]:
    """A conversation of ``turns`` checked turns (cached against uncached); its messages."""
    messages = [system]
    for number in range(start, start + turns):
        messages.append(question(number))
        messages.append(Message("assistant", same(cached, uncached, messages).text))
    return messages


# -- the next turn ------------------------------------------------------------------------------


def test_a_next_turn_reuses_the_previous_prompt_up_to_where_the_template_renders_the_reply_anew(
    cached: str, uncached: str
) -> None:
    history = [Message("system", "You are the first conversation."), question(1)]
    first = same(cached, uncached, history)
    assert first.report["cached_tokens"] <= opening(cached)  # nothing like it was seen before
    history += [Message("assistant", first.text), question(2)]
    second = same(cached, uncached, history)
    # Thinking off: the first prompt ended with an empty think block, which the history leaves out
    # (past answers are rendered without thinking), so reuse ends where that block began.
    without_think = TransformersBackend().render_prompt(cached, history[:2]).removesuffix(EMPTY_THINK)
    handle = registry.get(cached)
    assert handle is not None
    shared = len(handle.tokenizer(without_think, add_special_tokens=False)["input_ids"])
    assert second.report["cached_tokens"] == shared == reuse_after(first, second)
    assert shared > 0.7 * len(first.prompt)


def test_with_thinking_on_the_whole_previous_prompt_is_reused(cached: str, uncached: str) -> None:
    history = [Message("system", "You think first."), question(3)]
    first = same(cached, uncached, history, think=True)
    history += [Message("assistant", first.text), question(4)]
    second = same(cached, uncached, history, think=True)
    assert second.report["cached_tokens"] >= len(first.prompt)
    assert second.report["cached_tokens"] == reuse_after(first, second)


def test_the_same_prompt_again_reuses_all_of_it_but_its_last_token(cached: str, uncached: str) -> None:
    history = [Message("system", "Again and again."), question(5)]
    first = same(cached, uncached, history)
    again = same(cached, uncached, history)
    assert again.tokens == first.tokens
    assert again.report["cached_tokens"] == len(first.prompt) - 1  # the last one is fed for its logits


def test_twelve_turns_with_the_cache_equal_twelve_without_it(cached: str, uncached: str) -> None:
    messages = [SYSTEM]
    previous: Turn | None = None
    for number in range(12):
        messages.append(question(number))
        turn = same(cached, uncached, messages, think=number % 3 == 2)
        if previous is not None:
            assert turn.report["cached_tokens"] == reuse_after(previous, turn), number
        messages.append(Message("assistant", turn.text))
        previous = turn
    assert previous is not None and previous.report["cached_tokens"] > 0.85 * len(previous.prompt)


# -- prompts that diverge -------------------------------------------------------------------------


def test_a_history_that_lost_its_old_turns_reuses_only_what_it_still_shares(
    cached: str, uncached: str
) -> None:
    messages = chat(cached, uncached, 4, start=20)
    truncated = [messages[0], *messages[5:], question(30)]  # the first two exchanges dropped
    turn = same(cached, uncached, truncated)
    system_only = prompt_ids(cached, [messages[0]])
    assert 0 < turn.report["cached_tokens"] <= len(system_only)


def test_switching_back_to_an_earlier_branch_reuses_the_shared_prefix(cached: str, uncached: str) -> None:
    messages = chat(cached, uncached, 4, start=40)
    earlier = [*messages[:4], Message("user", "A different second question, after all?")]
    branch = same(cached, uncached, earlier)
    assert branch.report["cached_tokens"] >= len(prompt_ids(cached, messages[:3]))
    edited = [messages[0], Message("user", "An edited first question."), *messages[2:]]
    assert same(cached, uncached, edited).report["cached_tokens"] <= len(prompt_ids(cached, [messages[0]]))


def test_a_changed_system_prompt_is_encoded_again(cached: str, uncached: str) -> None:
    messages = chat(cached, uncached, 2, start=50)
    changed = [Message("system", "Answer in French, at length."), *messages[1:], question(52)]
    turn = same(cached, uncached, changed)
    # Only the template's opening (``<|im_start|>system\n``) and any words both prompts begin with.
    assert turn.report["cached_tokens"] < len(prompt_ids(cached, [messages[0]]))


def test_two_alternating_conversations_each_keep_their_own_cache(cached: str, uncached: str) -> None:
    conversations: dict[int, list[Message]] = {60: [SYSTEM], 70: [SYSTEM]}
    last: dict[int, Turn] = {}
    for number in range(4):
        for offset, messages in conversations.items():
            messages.append(question(offset + number))
            turn = same(cached, uncached, messages)
            if number > 0:  # the other conversation's turn in between did not take this one's cache
                assert (
                    turn.report["cached_tokens"]
                    == reuse_after(last[offset], turn)
                    > len(prompt_ids(cached, [SYSTEM]))
                )
            messages.append(Message("assistant", turn.text))
            last[offset] = turn


# -- limits, Stop, settings -------------------------------------------------------------------------


def test_the_least_recently_used_prompt_is_evicted_beyond_the_limit(checkpoint: Path, uncached: str) -> None:
    one = started(checkpoint, "one-prompt", NBCHAT_QWEN_CACHE_PROMPTS="1")
    try:
        assert registry.get(one) is not None and registry.get(one).info["prompt_cache"]["prompts"] == 1  # type: ignore[union-attr]
        first = [SYSTEM, question(80)]
        first.append(Message("assistant", same(one, uncached, first).text))
        second = [SYSTEM, question(90)]
        second.append(Message("assistant", same(one, uncached, second).text))
        first.append(question(81))
        turn = same(one, uncached, first)  # its cache was evicted by the second conversation's
        assert turn.report["cached_tokens"] <= len(prompt_ids(one, [SYSTEM, Message("user", "Question ")]))
        first += [Message("assistant", turn.text), question(82)]
        assert same(one, uncached, first).report["cached_tokens"] > 0.7 * len(turn.prompt)  # kept again
    finally:
        unload(one)


def test_a_prompt_bigger_than_the_byte_budget_is_not_kept(checkpoint: Path, uncached: str) -> None:
    shape = json.loads((checkpoint / "config.json").read_text())
    per_token = (
        2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * shape["head_dim"] * 4
    )  # float32
    tiny = started(checkpoint, "tiny-budget", NBCHAT_QWEN_CACHE_MB=str(40 * per_token / 2**20))
    try:
        short = [Message("system", "Hi."), Message("user", "Hi")]  # a few tokens: fits in 40 tokens' worth
        first = same(tiny, uncached, short, max_new=4)
        assert len(first.prompt) + 4 < 40 and first.report["cached_tokens"] == 0
        assert same(tiny, uncached, short, max_new=4).report["cached_tokens"] == len(first.prompt) - 1
        long = [SYSTEM, question(95), Message("assistant", "An answer of some length, " * 4), question(96)]
        shared = common_prefix(first.prompt, prompt_ids(tiny, long))  # with the short prompt, still kept
        assert same(tiny, uncached, long).report["cached_tokens"] == shared
        assert same(tiny, uncached, long).report["cached_tokens"] == shared  # too big to keep: encoded again
    finally:
        unload(tiny)


def test_a_reply_stopped_mid_way_leaves_a_cache_the_next_turn_can_trust(cached: str, uncached: str) -> None:
    messages = [SYSTEM, question(100)]
    stopped = ask(cached, messages, max_new=400, cancel_after=5)
    assert stopped.report["finish_reason"] == "cancelled" and 5 <= len(stopped.tokens) < 400
    messages += [Message("assistant", stopped.text), question(101)]
    turn = same(cached, uncached, messages)
    assert turn.report["cached_tokens"] == reuse_after(stopped, turn) > 0.7 * len(stopped.prompt)


def test_generate_settings_that_turn_caching_off_are_obeyed(cached: str, uncached: str) -> None:
    messages = [SYSTEM, question(110)]
    off = {"use_cache": False}
    assert same(cached, uncached, messages, kwargs=off).report["cached_tokens"] == 0
    assert same(cached, uncached, messages, kwargs=off).report["cached_tokens"] == 0


def test_the_whole_chat_through_the_backend_is_the_same_with_and_without_the_cache(
    cached: str, uncached: str
) -> None:
    backend = TransformersBackend()
    messages = [SYSTEM]
    for number in range(10):
        messages.append(question(120 + number))
        params = GenerationParams(temperature=0.0 if number % 2 else 0.8, max_new_tokens=20, seed=number)
        with_cache = backend.stream(cached, messages, params).wait()
        without = backend.stream(uncached, messages, params).wait()
        assert with_cache.token_ids == without.token_ids, number  # sampling with a seed too
        # The reply's stats say how much of the prompt was not encoded again.
        assert with_cache.stats is not None and without.stats is not None
        assert (with_cache.stats.cached_tokens or 0) > (0 if number else -1)
        assert not without.stats.cached_tokens
        messages.append(Message("assistant", with_cache.text))


def test_a_mistyped_cache_setting_fails_the_load_naming_it(checkpoint: Path) -> None:
    path = str(shutil.copytree(checkpoint, checkpoint.parent / "mistyped"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NBCHAT_QWEN_CACHE_MB", "lots")
        with pytest.raises(ModelLoadError, match="NBCHAT_QWEN_CACHE_MB must be a number of megabytes"):
            TransformersBackend().load(path)
    assert os.environ.get("NBCHAT_QWEN_CACHE_MB") is None


def test_the_limits_come_from_the_environment_and_bad_values_say_how_to_fix_them() -> None:
    from nbchat.backends.local.kv_cache import Limits

    assert Limits.from_env({}) == Limits(4, 2048 * 2**20)
    assert Limits.from_env({"NBCHAT_QWEN_CACHE_PROMPTS": " 0 ", "NBCHAT_QWEN_CACHE_MB": "0.5"}) == Limits(
        0, 2**19
    )
    for name, value in (("NBCHAT_QWEN_CACHE_PROMPTS", "2.5"), ("NBCHAT_QWEN_CACHE_MB", "-1")):
        with pytest.raises(
            ValueError, match=f"{name} must be .* of at least 0 \\(0 turns the prompt cache off\\)"
        ):
            Limits.from_env({name: value})


def test_the_common_prefix_is_found_wherever_two_prompts_part() -> None:
    from nbchat.backends.local.kv_cache import _common_prefix

    base = list(range(1000))
    for cut in (0, 1, 2, 499, 998, 999):
        other = [*base[:cut], -1, *base[cut + 1 :]]
        assert _common_prefix(base, other) == cut == common_prefix(base, other)
    assert _common_prefix(base, base[:300]) == 300 and _common_prefix([], base) == 0
