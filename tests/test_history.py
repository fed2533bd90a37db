"""Fitting a conversation into a model's context window: which messages ``truncate_history``
keeps, which it drops, and how ``estimate_tokens`` counts a prompt without a tokenizer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbchat import ContextOverflow, InvalidValue, Message, NbchatError
from nbchat.history import (
    ESTIMATE_BYTES_PER_TOKEN,
    ESTIMATE_REPLY_PRIMER_TOKENS,
    ESTIMATE_TOKENS_PER_MESSAGE,
    TokenCounter,
    estimate_tokens,
    sendable,
    truncate_history,
)

# -- helpers --------------------------------------------------------------------------------


def count_words(messages: Sequence[Message]) -> int:
    """A token counter that counts whole words: easy to reason about in a test."""
    return sum(len(m.content.split()) for m in messages)


def words(n: int, word: str = "word") -> str:
    return " ".join([word] * n)


def system(text: str, thinking: str | None = None) -> Message:
    return Message("system", text, thinking=thinking)


def user(text: str, thinking: str | None = None) -> Message:
    return Message("user", text, thinking=thinking)


def assistant(text: str, thinking: str | None = None) -> Message:
    return Message("assistant", text, thinking=thinking)


def ids(messages: Sequence[Message]) -> list[str]:
    return [m.id for m in messages]


BIG = 10**9  # a budget everything fits in


# -- what is kept -----------------------------------------------------------------------------


def test_a_history_that_fits_is_sent_whole_in_its_order() -> None:
    """Nothing is dropped when everything fits; only thinking is taken off."""
    history = [
        system("Be brief."),
        user("What is 2 + 2?"),
        assistant("4", thinking="Two plus two is four."),
        user("And 3 + 3?"),
        assistant("6"),
    ]
    result = truncate_history(history, BIG, count_words)
    assert ids(result) == ids(history)
    assert [m.content for m in result] == [m.content for m in history]
    assert [m.role for m in result] == [m.role for m in history]


def test_the_oldest_turns_are_dropped_first() -> None:
    """Turns leave oldest first: the two newest turns fit, the two oldest go."""
    turns = [[user(words(5)), assistant(words(5))] for _ in range(4)]
    history = [m for turn in turns for m in turn]
    result = truncate_history(history, 20, count_words)
    assert ids(result) == ids(turns[2] + turns[3])


def test_the_system_prompt_is_always_kept() -> None:
    """Even when it leaves room for nothing but the newest message."""
    prompt = system(words(30))
    history = [prompt, user(words(5)), assistant(words(5)), user(words(5))]
    result = truncate_history(history, 35, count_words)
    assert ids(result) == [prompt.id, history[-1].id]


def test_the_newest_user_message_is_kept_when_nothing_else_fits() -> None:
    history = [user(words(50)), assistant(words(50)), user(words(10))]
    result = truncate_history(history, 10, count_words)
    assert ids(result) == [history[-1].id]


def test_the_newest_turn_keeps_its_replies() -> None:
    """The newest turn is the newest user message with every reply after it."""
    history = [user(words(50)), user("continue"), assistant("one"), assistant("two")]
    result = truncate_history(history, 3, count_words)
    assert ids(result) == ids(history[1:])


def test_a_reply_is_never_kept_without_the_question_it_answered() -> None:
    """The short reply would fit on its own, but its long question does not, so both go."""
    question, answer, newest = user(words(100)), assistant("Yes."), user("Thanks!")
    result = truncate_history([question, answer, newest], 5, count_words)
    assert ids(result) == [newest.id]


def test_all_replies_to_a_question_leave_with_it() -> None:
    """A turn with several replies (a retry, a continuation) is kept or dropped whole."""
    history = [user(words(3)), assistant(words(3)), assistant(words(3)), user(words(3))]
    assert ids(truncate_history(history, 12, count_words)) == ids(history)
    assert ids(truncate_history(history, 11, count_words)) == [history[-1].id]


def test_replies_before_the_first_user_message_are_dropped() -> None:
    """A greeting with no question before it is never sent, even when it would fit."""
    greeting, question = assistant("Hello! How can I help?"), user("Hi")
    result = truncate_history([greeting, question], BIG, count_words)
    assert ids(result) == [question.id]


def test_thinking_is_never_sent_back() -> None:
    """Every returned message has thinking=None, and the counter never sees any thinking."""
    history = [
        system("Be brief.", thinking="odd, but possible in a hand-edited file"),
        user("Why is the sky blue?", thinking="users do not think, but still"),
        assistant("Rayleigh scattering.", thinking="Short wavelengths scatter more..."),
        user("Thanks"),
    ]

    def counter(messages: Sequence[Message]) -> int:
        assert all(m.thinking is None for m in messages)
        return count_words(messages)

    result = truncate_history(history, BIG, counter)
    assert ids(result) == ids(history)
    assert all(m.thinking is None for m in result)
    assert history[2].thinking == "Short wavelengths scatter more..."  # the input is untouched


def test_an_empty_reply_from_a_failed_generation_is_left_out() -> None:
    history = [user("Hello"), assistant(""), user("Are you there?")]
    result = truncate_history(history, BIG, count_words)
    assert ids(result) == [history[0].id, history[2].id]


def test_a_blank_system_prompt_is_not_sent() -> None:
    history = [system("  \n"), user("Hello")]
    assert ids(truncate_history(history, BIG, count_words)) == [history[1].id]


def test_sendable_splits_system_messages_from_turns() -> None:
    """``sendable`` is the cleaning step on its own: system messages, then turns."""
    prompt = system("Be brief.")
    history = [prompt, assistant("stray"), user("a"), assistant("b", thinking="t"), assistant("")]
    history += [user("c")]
    system_messages, turns = sendable(history)
    assert ids(system_messages) == [prompt.id]
    assert [ids(turn) for turn in turns] == [[history[2].id, history[3].id], [history[5].id]]
    assert all(m.thinking is None for turn in turns for m in turn)


# -- refusals -----------------------------------------------------------------------------


def test_a_newest_message_that_cannot_fit_raises_context_overflow_saying_by_how_much() -> None:
    """System prompt and newest message need 110 tokens, 50 are available: 60 too many."""
    history = [system(words(10)), user("hi"), user(words(100))]
    with pytest.raises(ContextOverflow, match="shorten it by about 60 tokens") as caught:
        truncate_history(history, 50, count_words)
    assert caught.value.needed == 110
    assert caught.value.available == 50
    assert "needs 110 tokens" in str(caught.value)
    assert isinstance(caught.value, NbchatError)


def test_context_overflow_counts_large_numbers_with_thousands_separators() -> None:
    with pytest.raises(ContextOverflow, match=r"needs 12,000 tokens.*only 2,000 fit.*about 10,000"):
        truncate_history([user(words(12_000))], 2_000, count_words)


@pytest.mark.parametrize("max_tokens", [0, -100])
def test_a_budget_of_nothing_overflows(max_tokens: int) -> None:
    """A zero or negative budget (max new tokens above the context) reports 0 tokens available."""
    with pytest.raises(ContextOverflow, match="only 0 fit") as caught:
        truncate_history([user("hi")], max_tokens, count_words)
    assert caught.value.needed == 1
    assert caught.value.available == max_tokens


@pytest.mark.parametrize(
    "history",
    [[], [system("Be brief.")], [system("Be brief."), assistant("Hello!")]],
    ids=["empty", "system only", "no user message"],
)
def test_a_history_without_a_user_message_is_refused(history: list[Message]) -> None:
    with pytest.raises(InvalidValue, match="no user message"):
        truncate_history(history, BIG, count_words)


@pytest.mark.parametrize("max_tokens", [100.0, "100", True, None])
def test_max_tokens_must_be_a_whole_number(max_tokens: object) -> None:
    with pytest.raises(InvalidValue, match="whole number"):
        truncate_history([user("hi")], max_tokens, count_words)  # type: ignore[arg-type]


# -- estimate_tokens ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        ([], 3),  # only the reply's opening marker
        ([""], 3 + 5),
        (["abc"], 3 + 5 + 1),
        (["abcd"], 3 + 5 + 2),  # a started token counts whole
        (["名前"], 3 + 5 + 2),  # 6 bytes of UTF-8
        (["hello", "world!"], 3 + (5 + 2) + (5 + 2)),
    ],
)
def test_estimate_tokens_follows_its_documented_formula(contents: list[str], expected: int) -> None:
    """ceil(UTF-8 bytes / 3) + 5 per message, plus 3 for the reply."""
    assert estimate_tokens([user(c) for c in contents]) == expected


@given(st.lists(st.text(max_size=200), max_size=10))
def test_estimate_tokens_matches_the_formula_for_any_text(contents: list[str]) -> None:
    expected = ESTIMATE_REPLY_PRIMER_TOKENS + sum(
        math.ceil(len(c.encode("utf-8")) / ESTIMATE_BYTES_PER_TOKEN) + ESTIMATE_TOKENS_PER_MESSAGE
        for c in contents
    )
    assert estimate_tokens([user(c) for c in contents]) == expected


def test_estimate_tokens_counts_more_for_longer_text() -> None:
    short, long = [user("Hello")], [user("Hello, could you explain how tokenizers work?")]
    assert estimate_tokens(long) > estimate_tokens(short)
    assert estimate_tokens(short + long) > estimate_tokens(long)


def test_estimate_tokens_counts_cjk_text_generously() -> None:
    """A CJK character takes 3 bytes of UTF-8, so it counts as a whole token (as tokenizers do)."""
    cjk, latin = "日本語の文章です", "abcdefgh"  # 8 characters each
    assert len(cjk) == len(latin)
    assert estimate_tokens([user(cjk)]) > estimate_tokens([user(latin)])
    assert estimate_tokens([user(cjk)]) - estimate_tokens([user("")]) == len(cjk)


def test_truncation_with_the_estimate_keeps_the_newest_turns_that_fit() -> None:
    """A realistic run: 50 turns of about 200 characters against a 1,000-token budget."""
    prompt = system("You are a helpful assistant. Answer briefly and precisely.")
    history = [prompt]
    for i in range(50):
        history += [user(f"Question {i}: " + "why? " * 40), assistant(f"Answer {i}: " + "because. " * 20)]
    result = truncate_history(history, 1_000, estimate_tokens)
    assert estimate_tokens(result) <= 1_000
    assert result[0].id == prompt.id
    assert result[-1].id == history[-1].id
    kept_from = history.index(next(m for m in history if m.id == result[1].id))
    assert ids(result[1:]) == ids(history[kept_from:])
    one_more = [prompt, *history[kept_from - 2 :]]
    assert estimate_tokens(one_more) > 1_000


def test_truncation_with_a_word_counter() -> None:
    """Any counter of the whole prompt works, here one that counts words."""
    history = [user("one two three"), assistant("four five"), user("six seven"), assistant("eight")]
    assert ids(truncate_history(history, 8, count_words)) == ids(history)
    assert ids(truncate_history(history, 7, count_words)) == ids(history[2:])
    assert ids(truncate_history(history, 3, count_words)) == ids(history[2:])
    with pytest.raises(ContextOverflow):
        truncate_history(history, 2, count_words)


# -- cost ---------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [10, 1_000, 5_000, BIG], ids=["newest only", "some", "half", "all"])
def test_a_long_history_is_measured_a_logarithmic_number_of_times(budget: int) -> None:
    """It binary-searches how many turns to drop: 1,000 turns take about a dozen counts, not 1,000."""
    history = [m for _ in range(1_000) for m in (user(words(5)), assistant(words(5)))]
    calls: list[int] = []

    def counter(messages: Sequence[Message]) -> int:
        calls.append(len(messages))
        return count_words(messages)

    result = truncate_history(history, budget, counter)
    assert count_words(result) <= budget
    assert len(calls) <= 2 + math.ceil(math.log2(1_000))


# -- properties -----------------------------------------------------------------------------

WORDS = st.sampled_from(["a", "bb", "ccc", "名前", "café", "🙂", "x\ny"])
CONTENT = st.lists(WORDS, max_size=8).map(" ".join) | st.text(max_size=40)
THINKING = st.none() | st.text(max_size=20)
COUNTERS: st.SearchStrategy[TokenCounter] = st.sampled_from([estimate_tokens, count_words])


@st.composite
def histories(draw: st.DrawFn) -> list[Message]:
    """An optional system prompt, then any mix of user and assistant messages, with
    thinking on some and empty replies (failed generations) among them."""
    serial = iter(range(1, 10**6))

    def message(role: str, content: str) -> Message:
        return Message(role, content, id=f"{next(serial):032x}", thinking=draw(THINKING))  # type: ignore[arg-type]

    history = []
    if draw(st.booleans()):
        history.append(message("system", draw(CONTENT)))
    for role in draw(st.lists(st.sampled_from(["user", "assistant"]), max_size=20)):
        empty = role == "assistant" and draw(st.integers(0, 4)) == 0
        history.append(message(role, "" if empty else draw(CONTENT)))
    return history


def clean(messages: Sequence[Message]) -> list[Message]:
    return [replace(m, thinking=None) for m in messages]


def expected_parts(history: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    """The test's own reading of a history: the non-blank system prompt, and the turns
    (a user message and its non-empty replies; replies before any question ignored)."""
    prompt = [m for m in history if m.role == "system" and m.content.strip()]
    turns: list[list[Message]] = []
    for m in history:
        if m.role == "user":
            turns.append([m])
        elif m.role == "assistant" and turns and m.content:
            turns[-1].append(m)
    return prompt, turns


@given(data=st.data(), history=histories(), count_tokens=COUNTERS)
def test_truncation_keeps_the_longest_suffix_of_whole_turns_that_fits(
    data: st.DataObject, history: list[Message], count_tokens: TokenCounter
) -> None:
    """For any history and budget: a result that fits, keeps system prompt and newest turn,
    is a suffix of whole turns in the original order, carries no thinking, and could not
    hold one more turn; or ContextOverflow exactly when the newest turn alone cannot fit."""
    count = count_tokens
    prompt, turns = expected_parts(history)
    full = count(clean(prompt + [m for turn in turns for m in turn]))
    max_tokens = data.draw(st.integers(min_value=-5, max_value=full + 5), label="max_tokens")

    if not turns:
        with pytest.raises(InvalidValue):
            truncate_history(history, max_tokens, count)
        return

    def prompt_from(first_turn: int) -> list[Message]:
        return clean(prompt + [m for turn in turns[first_turn:] for m in turn])

    try:
        result = truncate_history(history, max_tokens, count)
    except ContextOverflow as exc:
        needed = count(prompt_from(len(turns) - 1))
        assert needed > max_tokens
        assert (exc.needed, exc.available) == (needed, max_tokens)
        return

    assert count(result) <= max_tokens
    assert all(m.thinking is None for m in result)
    # A subsequence of the input, in order.
    position = {m.id: i for i, m in enumerate(history)}
    assert [position[m.id] for m in result] == sorted(position[m.id] for m in result)
    assert [m.content for m in result] == [history[position[m.id]].content for m in result]
    # The system prompt first, then user messages and replies, starting with a question.
    assert ids(result[: len(prompt)]) == ids(prompt)
    rest = result[len(prompt) :]
    assert rest and rest[0].role == "user"
    assert rest[-1].id == turns[-1][-1].id and turns[-1][0].id in ids(rest)
    # A suffix of whole turns: everything from the first kept question on.
    first = next(i for i, turn in enumerate(turns) if turn[0].id == rest[0].id)
    assert ids(result) == ids(prompt_from(first))
    # Maximal: one more (older) turn would not have fitted.
    if first > 0:
        assert count(prompt_from(first - 1)) > max_tokens


@given(history=histories(), count_tokens=COUNTERS)
def test_a_budget_the_whole_history_fits_in_drops_nothing_but_noise(
    history: list[Message], count_tokens: TokenCounter
) -> None:
    """With room for everything, only thinking, empty replies, stray replies and blank
    system prompts are left out."""
    prompt, turns = expected_parts(history)
    if not turns:
        return
    result = truncate_history(history, BIG, count_tokens)
    assert ids(result) == ids(prompt + [m for turn in turns for m in turn])
