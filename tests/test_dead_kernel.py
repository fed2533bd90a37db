"""A reply outlives the kernel that was writing it: real ipykernel processes SIGKILLed mid-reply.

While a reply streams its text is appended to the conversation file as drafts (at least every
2 s); a kernel killed at a random moment leaves a reply that the next reader shows, marked
interrupted, missing at most the last 2 s of text. The kernel writes down what it had received
and when, so the test knows exactly what must have survived.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager
from polling import wait_until

from conftest import CHEAP_KDF, PASSWORD, another_kernel, file_records
from nbchat import Accounts, ChatSession, Config
from nbchat.testing.ollama_server import OllamaTestServer

MODEL = "ollama:qwen3:1.7b"
#: The most text a dead kernel may lose: the issue's promise.
MAY_LOSE_S = 2.0

KERNEL_CODE = """
import time
from pathlib import Path
from nbchat import Accounts, ChatSession, Config
config = Config(data_dir=Path({data!r}), max_users=10, ollama_host={url!r})
session = ChatSession(config, accounts=Accounts(config, bcrypt_rounds=4))
session.login("alice", {password!r})
session.select({conversation!r})
progress = open({progress!r}, "a", buffering=1)
def seen(reply):
    progress.write(f"{{time.time()}} {{len(reply.text)}}\\n")
reply = session.send({prompt!r}, namespace={{}})
reply.subscribe(seen)
"""


@pytest.fixture
def kernels(tmp_path: Path) -> Iterator[list[KernelManager]]:
    started: list[KernelManager] = []
    yield started
    for manager in started:
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)


def start_kernel(tmp_path: Path, started: list[KernelManager]) -> Any:
    manager = KernelManager(kernel_name="python3")
    env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipython"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    manager.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    manager.start_kernel(env=env)
    started.append(manager)
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    return manager, client


def run_cell(client: Any, code: str) -> None:
    msg_id = client.execute(code)
    while True:
        try:
            message = client.get_iopub_msg(timeout=30)
        except queue.Empty:
            raise AssertionError("the kernel stopped answering") from None
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "error":
            raise AssertionError("\n".join(message["content"]["traceback"]))
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return


def received(progress: Path) -> list[tuple[float, int]]:
    """(when, how many characters of text) the kernel had, line by line."""
    lines = progress.read_text().splitlines() if progress.exists() else []
    return [(float(when), int(length)) for when, length in (line.split() for line in lines)]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Config, str, OllamaTestServer]]:
    with OllamaTestServer() as server:
        config = Config(data_dir=tmp_path / "data", max_users=10, ollama_host=server.url)
        session = ChatSession(config, accounts=Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF))
        session.register("alice", PASSWORD)
        session.login("alice", PASSWORD)
        conversation = session.new_conversation("Long story")
        session.configure(model=MODEL)
        yield config, conversation.id, server


def test_replies_of_kernels_killed_at_random_moments_survive_marked_interrupted(
    tmp_path: Path, setup: tuple[Config, str, OllamaTestServer], kernels: list[KernelManager]
) -> None:
    config, conversation_id, server = setup
    rng = random.Random(13)
    full = "".join(f"w{i} " for i in range(5000))
    # Steady streaming killed at random moments, and one engine that stalls before the kill:
    # the text that came before a long silence must be saved too.
    rounds = [("steady", rng.uniform(0.3, 4.0)) for _ in range(3)] + [("stall", 3.5)]
    for number, (kind, kill_after) in enumerate(rounds):
        server.chunk_count, server.chunk_delay_s = 5000, 0.01
        server.fault, server.fault_after_chunks = ("stall", 40) if kind == "stall" else (None, 3)
        progress = tmp_path / f"progress-{number}.txt"
        manager, client = start_kernel(tmp_path, kernels)
        code = KERNEL_CODE.format(
            data=str(config.data_dir),
            url=server.url,
            password=PASSWORD,
            conversation=conversation_id,
            progress=str(progress),
            prompt=f"story {number}",
        )
        run_cell(client, code)
        wait_until(lambda p=progress: bool(received(p)), seconds=30)
        time.sleep(kill_after)
        killed_at = time.time()
        os.kill(manager.provisioner.process.pid, signal.SIGKILL)
        manager.provisioner.process.wait(10)
        client.stop_channels()

        must_have = max(
            (length for when, length in received(progress) if when <= killed_at - MAY_LOSE_S), default=0
        )
        if kind == "stall":
            must_have = 40 * len("w0 ")  # everything before the silence (all 40 chunks are short)
        conversation = another_kernel(config).get(conversation_id)
        question, answer = conversation.messages[-2:]
        assert question.content == f"story {number}"
        assert answer.role == "assistant" and answer.parent == question.id
        assert answer.stats is not None and answer.stats.get("interrupted") is True, answer.stats
        assert full.startswith(answer.content), "the saved text is what streamed, in order"
        assert len(answer.content) >= must_have, (kind, kill_after, len(answer.content), must_have)
    # Every round is in one conversation: each next kernel went on after the interrupted reply.
    conversation = another_kernel(config).get(conversation_id)
    assert [m.content for m in conversation.messages if m.role == "user"] == [f"story {n}" for n in range(4)]
    assert len(conversation.tree) == 8


def test_a_reply_that_ends_normally_is_read_as_exactly_one_reply(
    setup: tuple[Config, str, OllamaTestServer],
) -> None:
    """Drafts were written while it streamed (a reader saw it grow); once it ends there is one reply."""
    config, conversation_id, server = setup
    session = ChatSession(config, accounts=Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF))
    session.login("alice", PASSWORD)
    session.select(conversation_id)
    server.chunk_count, server.chunk_delay_s = 300, 0.01  # about 3 s: two or three drafts
    reply = session.send("go", namespace={})
    reader = another_kernel(config)

    def drafted() -> bool:
        last = reader.get(conversation_id).messages[-1]
        return last.role == "assistant" and bool(last.content)

    wait_until(drafted, seconds=30)
    partial = reader.get(conversation_id).messages[-1]
    assert partial.id == reply.message_id
    assert partial.stats == {"partial": True, "live": True}, "another reader sees it is still being written"
    assert session.history()[-1].content == "go", "the kernel writing it shows it live, not as a draft"
    reply.wait(30)
    path = config.data_dir / "conversations" / "alice" / f"{conversation_id}.jsonl"
    lines = file_records(config.data_dir, "alice", path)[1:]
    assert sum("draft" in line for line in lines) >= 1
    for store in (reader, another_kernel(config)):
        messages = store.get(conversation_id).messages
        assert [m.role for m in messages] == ["user", "assistant"]
        assert messages[-1].id == reply.message_id and messages[-1].content == reply.text
        assert "interrupted" not in (messages[-1].stats or {})
    assert len(reader.get(conversation_id).tree) == 2
    assert replace(session.history()[-1]) == reader.get(conversation_id).messages[-1]
