"""bfloat16 weights in oneDNN's blocked layout, on a CPU that computes bf16 natively.

Decoding one token reads every weight once, so its speed is the speed of a one-row matrix
product. torch's default bf16 kernel for that reads about 20 GB/s on an AMX CPU where the
same weights prepacked for oneDNN (what ``torch.compile``'s CPU backend does) read about
24: decode measured 1.16× faster on a model of Qwen3-1.7B's width (bench/qwen_precision.py).
The decoder's linear layers are packed at load; the output layer shares its matrix with the
embedding (tied in the small Qwen3s) and is left alone, as packing it would cost a copy.

Imported only in the model process: it needs torch.
"""

from __future__ import annotations

import functools
import os
from typing import Any

ENV_PACK = "NBCHAT_QWEN_PACK_WEIGHTS"  # "0" turns packing off (to compare, or to rule it out)


def wanted(device: str, dtype_name: str, native_bf16: str | None) -> bool:
    """Pack when the weights are bf16 on a CPU with native bf16, unless ``NBCHAT_QWEN_PACK_WEIGHTS=0``."""
    if (os.environ.get(ENV_PACK) or "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return device == "cpu" and dtype_name == "bfloat16" and native_bf16 is not None


def pack_linears(model: Any) -> int:
    """Replace the decoder's ``nn.Linear`` layers by prepacked ones; how many (0: torch cannot here)."""
    import torch

    if not _works(torch):
        return 0
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        return 0
    packed = 0
    for module in list(layers.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear and child.weight.dtype == torch.bfloat16:
                setattr(module, name, _packed_linear(torch)(child))
                packed += 1
    return packed


def _works(torch: Any) -> bool:
    """Whether this torch has oneDNN's packed linear and it computes what ``F.linear`` does."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or mkldnn is None:
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(64, 128, generator=generator).to(torch.bfloat16)
        rows = torch.randn(3, 128, generator=generator).to(torch.bfloat16)
        with torch.inference_mode():
            packed = mkldnn._reorder_linear_weight(weight, 1)
            got = mkldnn._linear_pointwise(rows, packed, None, "none", [], "")
            expected = torch.nn.functional.linear(rows, weight)
        return bool(torch.allclose(got.float(), expected.float(), rtol=2e-2, atol=2e-2))
    except (RuntimeError, AttributeError, TypeError, NotImplementedError):
        return False


@functools.cache
def _packed_linear(torch: Any) -> Any:
    class PackedLinear(torch.nn.Module):
        """An ``nn.Linear`` whose weight is in oneDNN's layout (inference only)."""

        def __init__(self, linear: Any) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            with torch.no_grad():  # not inference_mode: a plain tensor, usable outside it too
                weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
            self.register_buffer("weight", weight, persistent=False)
            self.register_buffer("bias", linear.bias.detach() if linear.bias is not None else None)

        def forward(self, rows: Any) -> Any:
            return torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], "")

    return PackedLinear
