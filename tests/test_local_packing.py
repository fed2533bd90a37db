"""bfloat16 on a CPU with native bf16: the decoder's weights are packed for oneDNN at load.

The packed model must answer exactly as the unpacked one (greedy, the tiny random Qwen3
through ``TransformersBackend``), and only bf16 on such a CPU is packed; on a CPU without
native bf16 nothing is. ``NBCHAT_QWEN_PACK_WEIGHTS=0`` turns it off.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbchat.backends.local.packing import ENV_PACK, wanted
from nbchat.backends.local.precision import cpu_bf16_feature, cpu_flags
from nbchat.backends.transformers import TransformersBackend, unload
from nbchat.testing.tiny_qwen3 import tiny_qwen3
from nbchat.types import GenerationParams, Message

pytestmark = pytest.mark.slow

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=16)
HELLO = [Message("user", "Hello there! How are you today?")]
LINEARS_PER_LAYER = 7  # q, k, v, o; gate, up, down
LAYERS = 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "tiny", seed=0, num_layers=LAYERS)


@pytest.fixture
def two_copies(checkpoint: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The checkpoint at two paths: two model ids, two model processes."""
    first = str(shutil.copytree(checkpoint, tmp_path / "packed"))
    second = str(shutil.copytree(checkpoint, tmp_path / "unpacked"))
    yield first, second
    unload(first)
    unload(second)


def test_only_bf16_weights_on_a_cpu_with_native_bf16_are_packed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_PACK, raising=False)
    assert wanted("cpu", "bfloat16", "AMX-BF16")
    assert not wanted("cpu", "bfloat16", None)  # emulated bf16: auto would not even load it
    assert not wanted("cpu", "float32", "AMX-BF16")
    assert not wanted("cuda", "bfloat16", "the GPU")
    monkeypatch.setenv(ENV_PACK, "0")
    assert not wanted("cpu", "bfloat16", "AMX-BF16")


def test_a_packed_bf16_model_answers_exactly_as_the_unpacked_one(
    two_copies: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    packed_path, unpacked_path = two_copies
    backend = TransformersBackend(dtype="bfloat16")
    monkeypatch.delenv(ENV_PACK, raising=False)
    packed_info = backend.load(packed_path)
    monkeypatch.setenv(ENV_PACK, "0")  # read by the model process at its load
    unpacked_info = backend.load(unpacked_path)

    native = cpu_bf16_feature(cpu_flags() or set())
    assert packed_info["dtype"] == unpacked_info["dtype"] == "bfloat16"
    assert packed_info["packed_linears"] == (LINEARS_PER_LAYER * LAYERS if native else 0)
    assert unpacked_info["packed_linears"] == 0
    assert packed_info["parameters"] == unpacked_info["parameters"]  # packed weights still count

    packed = backend.stream(packed_path, HELLO, GREEDY).wait()
    unpacked = backend.stream(unpacked_path, HELLO, GREEDY).wait()
    assert packed.stats is not None and packed.stats.completion_tokens == 16
    assert packed.text == unpacked.text
