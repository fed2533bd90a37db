"""Local models load in bfloat16 where the CPU computes it natively, float32 elsewhere, half
precision on a GPU; ``NBCHAT_QWEN_DTYPE`` / the site file's ``qwen_dtype`` override it, and the
dtype and the reason reach the model's info and ``nbchat.health()``.

The decision is tested on given flag sets (pure); the loads are real: the tiny random Qwen3
through ``TransformersBackend``, the weights' dtype as the model process reports it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from nbchat import ConfigError, load_config
from nbchat.backends.local.loader import requested_dtype
from nbchat.backends.local.precision import (
    CHOICES,
    check_choice,
    cpu_bf16_feature,
    cpu_flags,
    decide,
    reason,
)
from nbchat.backends.transformers import TransformersBackend, loaded, unload
from nbchat.health import check_health
from nbchat.testing.tiny_qwen3 import tiny_qwen3
from nbchat.types import GenerationParams, Message

SAPPHIRE_RAPIDS = {"fpu", "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
COOPER_LAKE = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}  # also AMD Zen 4
SKYLAKE = {"avx2", "avx512f", "avx512bw", "avx512_vnni"}
GRAVITON = {"fp", "asimd", "bf16", "i8mm"}  # ARM's bf16 is not what auto trusts


@pytest.fixture(autouse=True)
def no_dtype_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NBCHAT_QWEN_DTYPE", raising=False)
    monkeypatch.delenv("NBCHAT_CONFIG", raising=False)


# -- the decision, on given hardware ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "feature"),
    [
        (SAPPHIRE_RAPIDS, "AMX-BF16"),
        (COOPER_LAKE, "AVX512-BF16"),
        (SKYLAKE, None),
        (GRAVITON, None),
        (set(), None),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags_not_guessed(flags: set[str], feature: str | None) -> None:
    assert cpu_bf16_feature(flags) == feature


def test_auto_picks_bfloat16_only_on_a_cpu_that_computes_it_natively() -> None:
    assert decide("cpu", "auto", cpu_bf16_feature(SAPPHIRE_RAPIDS)) == "bfloat16"
    assert decide("cpu", "auto", cpu_bf16_feature(COOPER_LAKE)) == "bfloat16"
    assert decide("cpu", "auto", cpu_bf16_feature(SKYLAKE)) == "float32"
    assert decide("cpu", "auto", cpu_bf16_feature(GRAVITON)) == "float32"


def test_auto_keeps_half_precision_on_gpus() -> None:
    assert decide("cuda", "auto", "the GPU") == "bfloat16"
    assert decide("cuda", "auto", None) == "float16"  # an older GPU without bf16
    assert decide("mps", "auto", None) == "float16"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_an_explicit_dtype_wins_on_any_hardware(dtype: str) -> None:
    for device, native in (("cpu", "AMX-BF16"), ("cpu", None), ("cuda", "the GPU"), ("mps", None)):
        assert decide(device, dtype, native) == dtype


def test_the_reason_says_which_dtype_and_why() -> None:
    assert reason("bfloat16", "cpu", "AVX512-BF16", None) == "bfloat16: this CPU has AVX512-BF16"
    assert reason("float32", "cpu", None, None) == "float32: no native bf16 on this CPU"
    assert reason("float32", "cpu", None, "NBCHAT_QWEN_DTYPE") == "float32: set by NBCHAT_QWEN_DTYPE"
    assert (
        reason("bfloat16", "cuda", "the GPU", None)
        == "bfloat16: half precision on the GPU, which supports bf16"
    )
    assert reason("float16", "mps", None, None) == "float16: half precision on the Apple GPU"


def test_the_reason_warns_when_an_explicit_choice_is_the_slower_one() -> None:
    slow = reason("bfloat16", "cpu", None, "NBCHAT_QWEN_DTYPE")
    assert slow.startswith("bfloat16: set by NBCHAT_QWEN_DTYPE") and "slower than float32" in slow
    assert "bfloat16 would be faster" in reason("float32", "cpu", "AMX-BF16", "NBCHAT_QWEN_DTYPE")


def test_cpu_flags_are_read_from_a_linux_cpuinfo_file(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n\n")
    assert cpu_bf16_feature(cpu_flags(x86) or set()) == "AMX-BF16"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") is None  # not Linux: the model process asks torch


def test_a_dtype_is_accepted_in_any_case_and_a_wrong_one_suggests_the_right_spelling() -> None:
    assert [check_choice(c.upper(), "X") for c in CHOICES] == list(CHOICES)
    with pytest.raises(
        ValueError, match=r"X must be auto, bfloat16, float16 or float32, not 'bf16'.*'bfloat16'"
    ):
        check_choice("bf16", "X")


# -- the setting -------------------------------------------------------------------------------------


def site(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return {"NBCHAT_CONFIG": str(path), "NBCHAT_DATA_DIR": str(tmp_path / "data")}


def test_auto_is_the_default_and_the_environment_sets_it(tmp_path: Path) -> None:
    default = load_config({"NBCHAT_DATA_DIR": str(tmp_path)})
    assert (default.qwen_dtype, default.qwen_dtype_source) == ("auto", None)
    config = load_config({"NBCHAT_DATA_DIR": str(tmp_path), "NBCHAT_QWEN_DTYPE": " Float32 "})
    assert (config.qwen_dtype, config.qwen_dtype_source) == ("float32", "NBCHAT_QWEN_DTYPE")


def test_the_site_file_sets_it_and_the_environment_wins(tmp_path: Path) -> None:
    env = site(tmp_path, "[nbchat]\nqwen_dtype = 'bfloat16'\n")
    config = load_config(env)
    assert config.qwen_dtype == "bfloat16"
    assert config.qwen_dtype_source == f"nbchat.qwen_dtype in {tmp_path / 'config.toml'}"
    assert load_config({**env, "NBCHAT_QWEN_DTYPE": "float16"}).qwen_dtype == "float16"


def test_a_bad_dtype_is_a_config_error_naming_where_it_was_set(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^NBCHAT_QWEN_DTYPE must be auto, bfloat16, float16 or float32, not 'int4'"
    ):
        load_config({"NBCHAT_DATA_DIR": str(tmp_path), "NBCHAT_QWEN_DTYPE": "int4"})
    with pytest.raises(ConfigError, match=r"nbchat\.qwen_dtype in .*config\.toml must be auto, bfloat16"):
        load_config(site(tmp_path, "[nbchat]\nqwen_dtype = 'half'\n"))
    with pytest.raises(ConfigError, match=r"nbchat\.qwen_dtype must be text in quotes .* not an integer"):
        load_config(site(tmp_path, "[nbchat]\nqwen_dtype = 16\n"))


def test_an_explicit_backend_dtype_beats_the_setting_which_is_read_at_load_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert requested_dtype(None) == ("auto", None)
    monkeypatch.setenv("NBCHAT_QWEN_DTYPE", "float16")
    assert requested_dtype(None) == ("float16", "NBCHAT_QWEN_DTYPE")
    assert requested_dtype("float32") == ("float32", "TransformersBackend(dtype='float32')")


# -- real loads of the tiny Qwen3 --------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "tiny", seed=0)


@pytest.fixture
def own(checkpoint: Path, tmp_path: Path) -> Iterator[str]:
    path = str(shutil.copytree(checkpoint, tmp_path / "own"))
    yield path
    unload(path)


@pytest.mark.slow
def test_the_setting_loads_the_weights_in_bfloat16_at_half_the_memory_of_float32(
    own: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBCHAT_QWEN_DTYPE", "bfloat16")
    backend = TransformersBackend()
    half = backend.load(own)
    assert half["dtype"] == "bfloat16"  # the weights' dtype, as the model process reports it
    assert half["dtype_reason"].startswith("bfloat16: set by NBCHAT_QWEN_DTYPE")
    reply = backend.stream(
        own, [Message("user", "Hello!")], GenerationParams(temperature=0.0, max_new_tokens=4)
    )
    list(reply)
    assert reply.stats is not None and reply.stats.completion_tokens >= 1  # it generates in bf16
    unload(own)
    full = TransformersBackend(dtype="float32").load(own)  # the explicit argument beats the variable
    assert full["dtype"] == "float32"
    assert full["dtype_reason"].startswith("float32: set by TransformersBackend(dtype='float32')")
    assert full["memory_bytes"] / half["memory_bytes"] == pytest.approx(2, rel=0.01)  # buffers stay fp32


@pytest.mark.slow
def test_auto_loads_what_this_cpu_computes_natively_and_health_says_it(own: str) -> None:
    info = TransformersBackend().load(own)
    native = cpu_bf16_feature(cpu_flags() or set())
    assert info["device"] == "cpu" and info["native_bf16"] == native
    expected = f"bfloat16: this CPU has {native}" if native else "float32: no native bf16 on this CPU"
    assert (info["dtype"], info["dtype_reason"]) == (expected.split(":")[0], expected)
    report = check_health()
    entry = next(e for e in report.local["loaded"] if e["model"] == f"transformers:{own}")
    assert entry["dtype"] == info["dtype"] and entry["dtype_reason"] == expected
    assert f"transformers:{own} on cpu ({expected}, " in str(report)
    assert report.local["precision"] == {"setting": "auto", "source": None, "cpu_bf16": native}


@pytest.mark.slow
def test_a_bad_setting_stops_the_load_with_the_config_error_before_any_process_starts(
    own: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBCHAT_QWEN_DTYPE", "int8")
    with pytest.raises(ConfigError, match="NBCHAT_QWEN_DTYPE must be auto, bfloat16, float16 or float32"):
        TransformersBackend().load(own)
    assert f"transformers:{own}" not in loaded()


def test_health_says_what_auto_would_pick_before_anything_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    native = cpu_bf16_feature(cpu_flags() or set())
    report = check_health()
    assert report.local["precision"] == {"setting": "auto", "source": None, "cpu_bf16": native}
    nothing_loaded = replace(report, local={**report.local, "loaded": []})  # other tests' models aside
    on_cpu = f"bfloat16 on this CPU ({native})" if native else "float32 on this CPU (no native bf16)"
    # Other tests may have registered models of their own: only the precision part is this test's.
    assert re.search(
        rf"not loaded \(loads on first use: transformers:Qwen/Qwen3-1\.7B[^)]*\); "
        rf"precision auto: {re.escape(on_cpu)}, ",
        str(nothing_loaded),
    ), str(nothing_loaded)
    monkeypatch.setenv("NBCHAT_QWEN_DTYPE", "float32")
    report = check_health()
    assert report.local["precision"] == {
        "setting": "float32",
        "source": "NBCHAT_QWEN_DTYPE",
        "cpu_bf16": native,
    }
    assert "precision float32, set by NBCHAT_QWEN_DTYPE" in str(
        replace(report, local={**report.local, "loaded": []})
    )
