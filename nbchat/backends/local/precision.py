"""Which floating-point precision a local model is loaded in, and the reason, in words.

Decoding on a CPU is bound by memory bandwidth, so bfloat16 (half the bytes of
float32) is faster wherever the processor computes it natively: x86's
AVX512-BF16 or AMX-BF16 (Intel since Cooper Lake / Sapphire Rapids, AMD since
Zen 4). Elsewhere bf16 is emulated and slower than float32, so ``auto`` keeps
float32 there; on a GPU half precision is the norm. The decision and the words
are pure functions of what the model process detected (``choose``, which needs
torch, runs there); the kernel adds where an explicit choice came from.
Importing this imports no torch.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

DTYPES = ("bfloat16", "float16", "float32")
CHOICES = ("auto", *DTYPES)
ENV_DTYPE = "NBCHAT_QWEN_DTYPE"

#: /proc/cpuinfo flags that mean native bfloat16 arithmetic, strongest first, with their names.
_CPU_BF16_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))


def cpu_bf16_feature(flags: Collection[str]) -> str | None:
    """The CPU feature that computes bfloat16 natively (``"AMX-BF16"``, ``"AVX512-BF16"``), or None."""
    return next((name for flag, name in _CPU_BF16_FLAGS if flag in flags), None)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The processor's feature flags as Linux lists them; None where there is no such file."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 says flags, ARM says Features
            return frozenset(value.split())
    return frozenset()


def decide(device: str, requested: str, native_bf16: str | None) -> str:
    """The dtype to load in: ``requested`` unless it is ``auto``, which picks by the hardware.

    ``native_bf16`` names what computes bf16 natively (a CPU feature, or the GPU), None if nothing.
    """
    if requested != "auto":
        return requested
    if device == "cpu":
        return "bfloat16" if native_bf16 else "float32"
    if device == "mps":
        return "float16"
    return "bfloat16" if native_bf16 else "float16"


def reason(dtype: str, device: str, native_bf16: str | None, origin: str | None) -> str:
    """Why the model is in ``dtype``, in one line, starting with the dtype.

    ``origin`` is the setting that asked for it (``NBCHAT_QWEN_DTYPE``, the site file's key,
    ``TransformersBackend(dtype=...)``); None means ``auto`` decided.
    """
    if origin is not None:
        text = f"{dtype}: set by {origin}"
        if device == "cpu" and dtype == "bfloat16" and not native_bf16:
            text += " (this CPU has no native bf16, so it runs slower than float32)"
        elif device == "cpu" and dtype == "float32" and native_bf16:
            text += f" (this CPU has {native_bf16}: bfloat16 would be faster)"
        return text
    if device == "cpu":
        has = f"this CPU has {native_bf16}" if native_bf16 else "no native bf16 on this CPU"
        return f"{dtype}: {has}"
    if device == "mps":
        return f"{dtype}: half precision on the Apple GPU"
    support = "supports bf16" if native_bf16 else "has no bf16"
    return f"{dtype}: half precision on the GPU, which {support}"


def check_choice(value: str, name: str) -> str:
    """``value`` as one of ``CHOICES`` (any case, spaces trimmed), else a ValueError naming ``name``."""
    text = value.strip().lower()
    if text in CHOICES:
        return text
    hint = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    suggestion = f" (did you mean {hint[text]!r}?)" if text in hint else ""
    raise ValueError(f"{name} must be auto, bfloat16, float16 or float32, not {value!r}{suggestion}.")


def choose(torch: Any, requested: str) -> tuple[str, str, str | None]:
    """In the model process: the device, the dtype to load in, and what computes bf16 natively.

    cuda, then mps, then the CPU. The CPU's flags come from ``/proc/cpuinfo``; where there is
    none (macOS, Windows), from torch's own CPU feature check.
    """
    if torch.cuda.is_available():
        native = "the GPU" if torch.cuda.is_bf16_supported() else None
        return "cuda", decide("cuda", requested, native), native
    if torch.backends.mps.is_available():
        return "mps", decide("mps", requested, None), None
    flags = cpu_flags()
    native = cpu_bf16_feature(flags) if flags is not None else _torch_cpu_bf16(torch)
    return "cpu", decide("cpu", requested, native), native


def _torch_cpu_bf16(torch: Any) -> str | None:
    """torch's own AVX512-BF16 probe (a private helper: absent or failing counts as no)."""
    probe = getattr(getattr(torch, "cpu", None), "_is_avx512_bf16_supported", None)
    try:
        return "AVX512-BF16" if probe is not None and probe() else None
    except Exception:  # a failing probe is a "no", never a failed load
        return None
