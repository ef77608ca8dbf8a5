"""FlashAttention-3, Hopper's own bf16 attention kernel, for the blocks where a build of it is installed.

FA3 has no package of its own on PyPI. Its op, `torch.ops.flash_attn_3.fwd`, comes from either of two builds:
- a build of the flash-attention repository's `hopper/` folder (module `flash_attn_3._C`);
- the copy that xformers 0.0.32 to 0.0.34 ship for Hopper (module `xformers.flash_attn_3._C`).
Both register the same op through PyTorch's stable C ABI, so one build serves several torch versions.

The math is the blocks' bf16 attention unchanged: softmax(q kᵀ / sqrt(d)) v, with fp32 accumulation.
"""

from __future__ import annotations

import ctypes
import importlib
from pathlib import Path

import torch

SOURCES = ("flash_attn_3._C", "xformers.flash_attn_3._C")


def _registered() -> bool:
    try:
        torch.ops.flash_attn_3.fwd  # noqa: B018 - looking the op up is the check
    except (AttributeError, RuntimeError):
        return False
    return True


def _preload_cuda_12_runtime() -> bool:
    """xformers' copy links against libcudart.so.12, which a CUDA 13 PyTorch does not bring: load the one from
    `pip install nvidia-cuda-runtime-cu12`, so the dynamic loader finds it by name. True if it was found."""
    try:
        import nvidia.cuda_runtime
    except ImportError:
        return False
    for folder in nvidia.cuda_runtime.__path__:
        library = Path(folder) / "lib" / "libcudart.so.12"
        if library.is_file():
            ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
            return True
    return False


def _import(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as error:  # a missing libcudart.so.12 surfaces as ImportError from the extension
        if "libcudart.so.12" not in str(error) or not _preload_cuda_12_runtime():
            raise
        importlib.import_module(module)


def load() -> str | None:
    """None once FA3's op is registered in this process (importing a build if needed), else why not."""
    if not torch.cuda.is_available():
        return "it needs an NVIDIA GPU"
    if torch.cuda.get_device_capability()[0] != 9:
        return "it runs on Hopper GPUs (compute capability 9.0) only"
    if _registered():
        return None
    reasons = []
    for module in SOURCES:
        try:
            _import(module)
        except Exception as error:  # ImportError, or OSError from a broken build
            reasons.append(f"{module}: {type(error).__name__}: {error}")
            continue
        if _registered():
            return None
        reasons.append(f"{module} loaded without registering flash_attn_3::fwd")
    return "no FlashAttention-3 build loads (" + "; ".join(reasons) + ")"


# A custom op, so that torch.compile keeps each block in one graph around the kernel (the build registers
# no shape function of its own for the compiler).
@torch.library.custom_op("framepack::flash3", mutates_args=())
def flash3_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(head_dim)) v for (batch, tokens, heads, head_dim) bf16 CUDA tensors, no mask."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not t.is_cuda or t.dtype != torch.bfloat16 or t.dim() != 4:
            raise RuntimeError(f"FlashAttention-3 takes CUDA bf16 (batch, tokens, heads, head_dim) tensors; "
                               f"{name} is {t.dtype} {tuple(t.shape)} on {t.device}")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return torch.ops.flash_attn_3.fwd(q, k, v, softmax_scale=q.shape[-1] ** -0.5, is_causal=False)[0]


@flash3_attention.register_fake
def _(q, k, v):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)
