"""Shared fixtures. No test ever touches the real user's data dir."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

from nbchat import Accounts, Config

# CI runs property tests with a fixed seed, so a red build is reproducible; locally they explore.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_configure(config: pytest.Config) -> None:
    # Notebook kernels (nbval) inherit this environment: point them at scratch space too.
    os.environ["NBCHAT_DATA_DIR"] = tempfile.mkdtemp(prefix="nbchat-test-data-")


class FakeClock:
    """A clock the throttling tests can move forward instead of sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
    return Accounts(config, bcrypt_rounds=4, clock=clock)
