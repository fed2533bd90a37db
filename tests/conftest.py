"""Shared fixtures. No test ever touches the real user's data dir."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from nbchat import Accounts, ChatSession, Config, ConversationStore
from nbchat.crypto import KdfParams, LineCipher, unwrap_data_key
from nbchat.testing.ollama_server import OllamaTestServer

PASSWORD = "correct horse"  # every test account's password (import it: `from conftest import PASSWORD`)
#: scrypt at its smallest allowed cost (about 1 ms) for the shared fixtures' data keys
#: (production: KdfParams.default(), about 0.2 s).
CHEAP_KDF = KdfParams(n=2**10, r=8, p=1)

# CI runs property tests with a fixed seed, so a red build is reproducible; locally they explore.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_configure(config: pytest.Config) -> None:
    # Notebook kernels (nbval) inherit this environment: point them at scratch space too.
    os.environ["NBCHAT_DATA_DIR"] = tempfile.mkdtemp(prefix="nbchat-test-data-")
    # Local models in float32 whatever this CPU supports (auto picks bfloat16 where it is native),
    # so greedy outputs and memory figures are the same on every machine; the precision tests
    # (tests/test_local_precision.py) set or remove it themselves.
    os.environ.setdefault("NBCHAT_QWEN_DTYPE", "float32")


class FakeClock:
    """A clock the throttling tests can move forward instead of sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def chatting(
    session: ChatSession,
    user: str = "alice",
    model: str | None = "ollama:qwen3:1.7b",
    title: str | None = None,
) -> ChatSession:
    """Log ``user`` in (password ``PASSWORD``), start a conversation and choose ``model`` (None: none)."""
    session.login(user, PASSWORD)
    session.new_conversation(title)
    if model is not None:
        session.configure(model=model)
    return session


def another_kernel(config: Config, user: str = "alice") -> ConversationStore:
    """The store a second kernel of ``user`` reads (it logs in: encrypted accounts need the key)."""
    return Accounts(config, bcrypt_rounds=4, kdf=CHEAP_KDF).login(user, PASSWORD).conversations


def file_records(data_dir: Path, user: str, path: Path, password: str = PASSWORD) -> list[dict[str, Any]]:
    """Every line of a conversation file as the clear record it holds, the header first: an
    encrypted account's sealed lines opened with its key (unwrapped with ``password``)."""
    lines = [json.loads(line) for line in path.read_bytes().splitlines()]
    if not lines or "sealed" not in lines[0]:
        return lines
    cipher = LineCipher(_data_key(data_dir, user.lower(), password))
    conversation_id = path.name.removesuffix(".jsonl")
    return [
        json.loads(cipher.open(line["sealed"], conversation_id=conversation_id, position=position))
        for position, line in enumerate(lines)
    ]


def _data_key(data_dir: Path, user: str, password: str) -> bytes:
    record = json.loads((data_dir / "users.json").read_text(encoding="utf-8"))["users"][user]
    return unwrap_data_key(record["data_key"], password, account=user)


@pytest.fixture
def interruptible() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, as in every IPython kernel. A test run started in the
    background by a shell (``pytest &``) inherits SIGINT ignored, and then ``_thread.interrupt_main``
    (Jupyter's Interrupt button, as tests press it) does nothing at all."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem of this test's own (``disks.fill`` fills it), unmounted afterwards."""
    from disks import mount_small_disk, unmount

    disk = mount_small_disk(tmp_path / "disk")
    try:
        yield disk
    finally:
        unmount(disk)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "nbchat-data"


@pytest.fixture
def config(data_dir: Path) -> Config:
    return Config(data_dir=data_dir, max_users=10)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def accounts(config: Config, clock: FakeClock) -> Accounts:
    # Cost 4 keeps tests fast; production uses bcrypt's cost 12.
    return Accounts(config, bcrypt_rounds=4, clock=clock, kdf=CHEAP_KDF)


@pytest.fixture
def server() -> Iterator[OllamaTestServer]:
    """A loopback Ollama server for one test (modules needing other models override this)."""
    with OllamaTestServer() as running:
        yield running


@pytest.fixture
def make_session(config: Config) -> Iterator[Callable[..., ChatSession]]:
    """``make_session(server, *users)``: a session on scratch data talking to ``server``, with those
    accounts registered (password ``PASSWORD``); a reply still streaming at the end is stopped.
    ``encrypted=False``: under a site policy that stores new accounts in clear."""
    made: list[ChatSession] = []

    def make(server: OllamaTestServer, *users: str, encrypted: bool = True) -> ChatSession:
        session_config = replace(config, ollama_host=server.url)
        if not encrypted:
            policy = replace(session_config.policy, encrypt_local_accounts=False)
            session_config = replace(session_config, policy=policy)
        accounts = Accounts(session_config, bcrypt_rounds=4, kdf=CHEAP_KDF)
        session = ChatSession(session_config, accounts=accounts)
        for user in users:
            session.register(user, PASSWORD)
        made.append(session)
        return session

    yield make
    for session in made:
        if session.reply is not None:
            session.stop()
            session.reply.join(10)


@pytest.fixture(scope="module")
def ollama() -> Iterator[OllamaTestServer]:
    """One loopback Ollama server for a whole module (the browser suites start Jupyter once)."""
    with OllamaTestServer() as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian Chromium under Playwright (never a browser Playwright downloads)."""
    from browser import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's Chromium is missing: `apt-get install -y chromium` (make test does)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def kernel_session(
    make_session: Callable[..., ChatSession], server: OllamaTestServer, monkeypatch: pytest.MonkeyPatch
) -> ChatSession:
    """The kernel's one session (what ``%chat`` uses), on scratch data and the loopback server,
    with alice's and bob's accounts."""
    import nbchat.session

    session = make_session(server, "alice", "bob")
    monkeypatch.setattr(nbchat.session, "_session", session)
    return session


@pytest.fixture
def shell(session: ChatSession) -> Iterator[Any]:
    """A real IPython shell with the extension loaded, on the module's ``session`` (the kernel's one)."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell("%load_ext nbchat", store_history=False)
    yield shell
    shell.run_cell("%reset -f", store_history=False)


@pytest.fixture
def passwords(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the user types at the password prompts, in order (getpass never echoes)."""
    import getpass

    typed: list[str] = []
    monkeypatch.setattr(getpass, "getpass", lambda prompt="Password: ", stream=None: typed.pop(0))
    return typed


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start ``tests/workers.py`` processes (``worker_process.Worker``); any left running is killed.

    ``spawn(*args, key=data_key)`` starts one that opens its stores encrypted with that key."""
    from worker_process import Worker, worker_env

    started: list[Worker] = []

    def _spawn(*args: object, key: bytes | None = None) -> Worker:
        worker = Worker(args, tmp_path / f"worker-{len(started)}.stderr", env=worker_env(key))
        started.append(worker)
        return worker

    yield _spawn
    for worker in started:
        worker.stop()
        if worker.proc.stdout is not None:
            worker.proc.stdout.close()
