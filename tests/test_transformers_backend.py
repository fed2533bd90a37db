"""The local-model backend, against a real (tiny, random) Qwen3 checkpoint loaded the production way.

``tiny_qwen3`` writes a real ``Qwen3ForCausalLM`` checkpoint with a real
tokenizer and Qwen3's chat template; every test goes through
``TransformersBackend().stream("<path>", ...)``, so ``from_pretrained``, the
model process, the pipe and the streamer all run for real. Nothing of
transformers is mocked. The model's answers are gibberish; what is checked is
everything around them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_until

from nbchat.backends.transformers import (
    LoadProgress,
    ThinkParser,
    TransformersBackend,
    TransformersReply,
    count_tokens,
    loaded,
    sampling_kwargs,
    unload,
)
from nbchat.errors import ContextOverflow, GenerationFailed, ModelLoadError
from nbchat.testing.tiny_qwen3 import tiny_qwen3
from nbchat.types import Chunk, GenerationParams, Message

pytestmark = pytest.mark.slow

HELLO = [Message("system", "Be brief."), Message("user", "Hello there! How are you?")]
GREEDY = GenerationParams(temperature=0.0, max_new_tokens=24)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "tiny", seed=0)


@pytest.fixture(scope="session")
def model(checkpoint: Path) -> Iterator[str]:
    """The shared model id (its directory); the model process is started once for the session."""
    yield str(checkpoint)
    unload()


@pytest.fixture
def backend() -> TransformersBackend:
    return TransformersBackend()


def copy_of(checkpoint: Path, tmp_path: Path) -> str:
    """The same checkpoint under another path: a different model id, so a model of its own."""
    return str(shutil.copytree(checkpoint, tmp_path / "copy"))


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie has already given its memory back)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def consume(reply: TransformersReply, started: threading.Event) -> None:
    for _ in reply:
        started.set()


# -- importing stays light ------------------------------------------------------------------


def test_importing_the_backend_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, nbchat, nbchat.backends.transformers\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- the streaming <think> parser, on its own --------------------------------------------------


def parse(*pieces: str) -> tuple[str, str]:
    parser = ThinkParser()
    chunks = [c for piece in pieces for c in parser.feed(piece)] + parser.flush()
    text = "".join(c.text for c in chunks if c.kind == "text")
    thinking = "".join(c.text for c in chunks if c.kind == "thinking")
    return thinking, text


QWEN_REPLY = "<think>\nThe user greets me.\nBe kind.\n</think>\n\nHi! <b>Fine</b>, thanks."


@pytest.mark.parametrize("cut", range(len(QWEN_REPLY) + 1))
def test_think_blocks_are_split_out_wherever_a_piece_ends(cut: int) -> None:
    assert parse(QWEN_REPLY[:cut], QWEN_REPLY[cut:]) == (
        "The user greets me.\nBe kind.",
        "Hi! <b>Fine</b>, thanks.",
    )


def test_think_tags_cut_into_single_characters_are_still_recognised() -> None:
    assert parse(*QWEN_REPLY) == ("The user greets me.\nBe kind.", "Hi! <b>Fine</b>, thanks.")


def test_text_that_only_looks_like_a_tag_start_is_released_at_the_end() -> None:
    assert parse("a < b and a <th", "ink") == ("", "a < b and a <think")
    assert parse("ends with <thi") == ("", "ends with <thi")


def test_stray_tags_never_reach_the_answer() -> None:
    assert parse("</think>\n\nJust the answer") == ("", "Just the answer")
    assert parse("<think>a<think>b</think>c") == ("ab", "c")


def test_an_unfinished_think_block_stays_thinking() -> None:
    assert parse("<think>\nstill pondering\n") == ("still pondering", "")


# -- sampling settings -------------------------------------------------------------------------


def test_sampling_follows_qwens_recommendations_per_mode() -> None:
    thinking = sampling_kwargs(GenerationParams(temperature=0.6, think=True))
    assert thinking == {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}
    answering = sampling_kwargs(GenerationParams(temperature=0.7, think=False))
    assert answering == {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}


def test_explicit_top_p_and_top_k_override_the_defaults() -> None:
    kwargs = sampling_kwargs(GenerationParams(temperature=1.0, top_p=0.5, top_k=0))
    assert (kwargs["top_p"], kwargs["top_k"]) == (0.5, 0)


def test_temperature_zero_means_greedy() -> None:
    assert sampling_kwargs(GenerationParams(temperature=0.0, think=True))["do_sample"] is False


# -- the checkpoint builder --------------------------------------------------------------------


def test_the_tiny_checkpoint_is_a_real_qwen3_with_qwens_tokens(checkpoint: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(checkpoint).model_type == "qwen3"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    ids = tokenizer("<think>\nhm\n</think>\n\nok<|im_end|>", add_special_tokens=False)["input_ids"]
    # The think tags are single tokens that survive skip_special_tokens, as in Qwen3; eos does not.
    assert tokenizer.convert_tokens_to_ids("<think>") in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>\nhm\n</think>\n\nok"


def test_building_is_deterministic(checkpoint: Path, tmp_path: Path) -> None:
    again = tiny_qwen3(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (checkpoint / name).read_bytes(), name


# -- prompts: history without thinking, the thinking switch ----------------------------------------


def test_history_sent_to_the_model_holds_answers_only(backend: TransformersBackend, model: str) -> None:
    history = [
        Message("user", "What is 2+2?"),
        Message("assistant", "<think>\nadd them: SECRET-A\n</think>\n\nFour.", thinking="SECRET-B"),
        Message("user", "And 3+3?"),
    ]
    for think in (True, False):
        prompt = backend.render_prompt(model, history, think=think)
        assert "SECRET" not in prompt
        assert "<|im_start|>assistant\nFour.<|im_end|>\n" in prompt


def test_thinking_off_prefills_an_empty_think_block(backend: TransformersBackend, model: str) -> None:
    assert backend.render_prompt(model, HELLO, think=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert backend.render_prompt(model, HELLO, think=True).endswith("<|im_start|>assistant\n")


def test_the_reply_records_the_prompt_it_sent(backend: TransformersBackend, model: str) -> None:
    reply = backend.stream(model, HELLO, GREEDY).wait()
    assert reply.prompt == backend.render_prompt(model, HELLO, think=False)
    assert reply.stats is not None and reply.stats.prompt_tokens == count_tokens(model, HELLO)


# -- streaming -----------------------------------------------------------------------------------


def test_chunks_add_up_to_the_reply_and_to_the_decoded_token_ids(
    backend: TransformersBackend, model: str
) -> None:
    from transformers import AutoTokenizer

    reply = backend.stream(model, HELLO, GenerationParams(temperature=1.0, max_new_tokens=40, seed=3))
    chunks = list(reply)
    assert "".join(c.text for c in chunks if c.kind == "text") == reply.text
    assert "".join(c.text for c in chunks if c.kind == "thinking") == reply.thinking
    assert reply.stats is not None and reply.stats.completion_tokens == len(reply.token_ids)
    decoded = AutoTokenizer.from_pretrained(model).decode(reply.token_ids, skip_special_tokens=True)
    assert parse(decoded) == (reply.thinking, reply.text)


def test_think_tags_never_leak_into_the_answer(backend: TransformersBackend, model: str) -> None:
    for seed in range(3):
        params = GenerationParams(temperature=1.5, max_new_tokens=60, think=True, seed=seed, top_k=0)
        reply = backend.stream(model, HELLO, params).wait()
        for tag in ("<think>", "</think>"):
            assert tag not in reply.text and tag not in reply.thinking


def test_greedy_is_deterministic_and_equals_generate_in_this_process(
    backend: TransformersBackend, model: str
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = backend.stream(model, HELLO, GREEDY).wait()
    second = backend.stream(model, HELLO, GREEDY).wait()
    assert first.token_ids == second.token_ids and first.text == second.text

    tokenizer = AutoTokenizer.from_pretrained(model)
    direct = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ids = tokenizer(first.prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = direct.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24)
    assert out[0, ids.shape[1] :].tolist() == first.token_ids


def test_a_seed_makes_sampling_reproducible(backend: TransformersBackend, model: str) -> None:
    def sample(seed: int) -> list[int]:
        params = GenerationParams(temperature=1.0, max_new_tokens=20, seed=seed)
        return backend.stream(model, HELLO, params).wait().token_ids

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_max_new_tokens_ends_the_reply_with_length(backend: TransformersBackend, model: str) -> None:
    reply = backend.stream(model, HELLO, GenerationParams(temperature=0.0, max_new_tokens=9)).wait()
    assert reply.stats is not None
    assert (reply.stats.finish_reason, reply.stats.completion_tokens) == ("length", 9)
    assert reply.stats.tokens_per_s is not None and reply.stats.ttft_s is not None


def test_the_end_of_turn_token_ends_the_reply_with_stop(backend: TransformersBackend, model: str) -> None:
    # A random model says <|im_end|> now and then; near-uniform sampling finds a seed where it does.
    for seed in range(200):
        params = GenerationParams(temperature=2.0, top_k=0, top_p=1.0, max_new_tokens=40, seed=seed)
        reply = backend.stream(model, HELLO, params).wait()
        assert reply.stats is not None
        if reply.stats.finish_reason == "stop":
            break
    else:
        pytest.fail("no seed in 200 stopped on eos")
    assert reply.stats.completion_tokens == len(reply.token_ids) < 40
    assert "<|im_end|>" not in reply.text and "<|endoftext|>" not in reply.text


# -- cancel, failures, limits ----------------------------------------------------------------------


def test_cancel_from_another_thread_stops_promptly_and_keeps_the_text(
    backend: TransformersBackend, model: str
) -> None:
    reply = backend.stream(model, HELLO, GenerationParams(temperature=1.0, max_new_tokens=1900, seed=1))
    received: list[Chunk] = []
    cancelled_at: list[float] = []

    def cancel_soon() -> None:
        wait_until(lambda: len(received) >= 5, 30)
        cancelled_at.append(time.monotonic())
        reply.cancel()

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    for chunk in reply:
        received.append(chunk)
    canceller.join()
    assert time.monotonic() - cancelled_at[0] < 2.0
    assert reply.stats is not None and reply.stats.finish_reason == "cancelled"
    assert 0 < len(reply.token_ids) < 1900
    assert reply.text + reply.thinking and reply.text == "".join(c.text for c in received if c.kind == "text")
    # The model is free again at once.
    assert backend.stream(model, HELLO, GREEDY).wait().stats.finish_reason == "length"  # type: ignore[union-attr]


def test_a_reply_abandoned_mid_way_frees_the_model_at_once(backend: TransformersBackend, model: str) -> None:
    reply = backend.stream(model, HELLO, GenerationParams(temperature=1.0, max_new_tokens=1900, seed=4))
    for number, _ in enumerate(reply):
        if number == 3:
            break
    started = time.monotonic()
    assert backend.stream(model, HELLO, GREEDY).wait().stats.finish_reason == "length"  # type: ignore[union-attr]
    assert time.monotonic() - started < 2.0


def test_an_error_inside_generate_reaches_the_caller(model: str) -> None:
    # A negative repetition penalty passes every check before generate(), which then refuses it.
    broken = TransformersBackend(generate_kwargs={"repetition_penalty": -1.0})
    reply = broken.stream(model, HELLO, GREEDY)
    with pytest.raises(GenerationFailed, match="penalty"):
        reply.wait()
    assert reply.stats is not None and reply.stats.finish_reason == "error"
    assert TransformersBackend().stream(model, HELLO, GREEDY).wait().text  # the model still works


def test_a_prompt_that_does_not_fit_the_context_is_refused(backend: TransformersBackend, model: str) -> None:
    prompt_tokens = count_tokens(model, HELLO)
    too_many = 2048 - prompt_tokens + 5  # the tiny model's context is 2048 tokens
    with pytest.raises(ContextOverflow, match="which is 5 more than the 2,048-token context"):
        backend.stream(model, HELLO, GenerationParams(max_new_tokens=too_many)).wait()
    with pytest.raises(ContextOverflow, match="more than the 100-token context"):
        backend.stream(model, HELLO, GenerationParams(max_new_tokens=90, context_size=100)).wait()


def test_a_missing_directory_is_a_clear_load_error(backend: TransformersBackend, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError) as error:
        backend.stream(str(missing), HELLO, GREEDY).wait()
    assert str(missing) in str(error.value) and "NBCHAT_QWEN_MODEL" in str(error.value)


def test_a_directory_without_a_model_is_a_clear_load_error(
    backend: TransformersBackend, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError) as error:
        backend.load(str(tmp_path))
    assert str(tmp_path) in str(error.value) and "NBCHAT_QWEN_MODEL" in str(error.value)
    assert not any(str(tmp_path) in m for m in loaded())


def test_a_hub_id_that_is_not_cached_fails_fast_when_the_hub_is_unreachable(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what an unreachable hub looks like, without the wait
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as error:
        backend.load("nbchat-tests/no-such-model")
    message = str(error.value)
    assert "nbchat-tests/no-such-model" in message and "unreachable" in message
    assert "NBCHAT_QWEN_MODEL" in message
    assert time.monotonic() - started < 15


# -- loading once, health, unloading ---------------------------------------------------------------


def test_health_reports_the_loaded_model(backend: TransformersBackend, model: str) -> None:
    backend.load(model)
    [entry] = [e for e in backend.health()["loaded"] if e["model"] == f"transformers:{model}"]
    assert (entry["device"], entry["dtype"]) == ("cpu", "float32")
    assert entry["parameters"] > 100_000 and entry["memory_bytes"] >= 4 * entry["parameters"]
    assert entry["load_seconds"] > 0 and entry["process_rss_bytes"] > entry["memory_bytes"]
    assert f"transformers:{model}" in backend.models()


def test_models_lists_the_configured_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBCHAT_QWEN_MODEL", "Qwen/Qwen3-0.6B")
    assert TransformersBackend().models()[0] == "transformers:Qwen/Qwen3-0.6B"


def test_two_threads_asking_at_once_load_once_and_unload_gives_everything_back(
    checkpoint: Path, tmp_path: Path
) -> None:
    own = copy_of(checkpoint, tmp_path)
    events: list[LoadProgress] = []
    start = threading.Barrier(2)
    results: list[dict[str, object]] = []

    def first_use() -> None:
        start.wait()
        results.append(TransformersBackend().load(own, on_progress=events.append))

    threads = [threading.Thread(target=first_use) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [e.phase for e in events] == ["tokenizer", "weights", "ready"]
    assert results[0]["pid"] == results[1]["pid"] and f"transformers:{own}" in loaded()

    pid = int(results[0]["pid"])  # type: ignore[call-overload]
    weights = int(results[0]["memory_bytes"])  # type: ignore[call-overload]
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert rss > weights  # the weights live in the model process, not in this one
    from nbchat.backends.local import registry

    handle = registry.get(own)
    assert handle is not None
    tokenizer = weakref.ref(handle.tokenizer)
    del handle
    streaming = TransformersBackend().stream(own, HELLO, GenerationParams(max_new_tokens=1900, seed=5))
    first = threading.Event()
    reader = threading.Thread(target=consume, args=(streaming, first))
    reader.start()
    assert first.wait(30)
    assert unload(own) == [f"transformers:{own}"]  # a reply in flight is cancelled first
    reader.join(5)
    assert streaming.stats is not None and streaming.stats.finish_reason == "cancelled"
    assert not running(pid)  # the process, and every byte it held, is gone
    assert tokenizer() is None  # this side kept no reference either
    assert f"transformers:{own}" not in loaded()


def test_a_model_process_that_dies_fails_the_reply_and_is_forgotten(checkpoint: Path, tmp_path: Path) -> None:
    own = copy_of(checkpoint, tmp_path)
    backend = TransformersBackend(dtype="bfloat16")  # half precision on request, even on a CPU
    info = backend.load(own)
    assert info["dtype"] == "bfloat16" and info["memory_bytes"] < 3 * info["parameters"]  # float32: 4x
    pid = int(info["pid"])
    reply = backend.stream(own, HELLO, GenerationParams(temperature=1.0, max_new_tokens=1900, seed=2))
    with pytest.raises(GenerationFailed, match=r"stopped unexpectedly \(exit code -9"):
        for number, _ in enumerate(reply):
            if number == 3:
                os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does
    assert reply.text + reply.thinking  # what streamed is kept
    assert f"transformers:{own}" not in loaded()
    unload(own)


def test_the_model_process_does_not_outlive_its_kernel(checkpoint: Path, tmp_path: Path) -> None:
    kernel = textwrap.dedent(
        """
        import sys, time
        from nbchat.backends.transformers import TransformersBackend
        print(TransformersBackend().load(sys.argv[1])["pid"], flush=True)
        time.sleep(120)
        """
    )
    own = copy_of(checkpoint, tmp_path)
    process = subprocess.Popen([sys.executable, "-c", kernel, own], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        pid = int(process.stdout.readline())
        assert running(pid)
        process.kill()  # SIGKILL: no atexit, no cleanup of any kind
        process.wait()
        assert wait_until(lambda: not running(pid), 5.0)
    finally:
        process.kill()
