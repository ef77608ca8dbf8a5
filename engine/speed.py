"""The fast path for the transformer with unchanged bf16 math: regional torch.compile and the attention kernel.

- Regional compile: each of the 60 blocks' `forward` is compiled, not the whole model, so compiling
  costs two graphs (dual- and single-stream block), and the eager code around the blocks (packing,
  TeaCache, the low-VRAM streamer's hooks) stays as it is. Inductor fuses the norms, the modulation,
  RoPE, GELU and the gated residuals into a few kernels around cuBLAS and the attention kernel.
- Attention: PyTorch's SDPA choice, which on Hopper is already cuDNN's fused kernel (620 TFLOP/s at
  these lengths against FlashAttention-2's 370; the benchmark times each one). ENGINE_ATTENTION can
  force one kernel for the blocks.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

ATTENTION_BACKENDS = {
    "sdpa": None,  # PyTorch's own choice (FlashAttention-2 on most GPUs)
    "cudnn": "_native_cudnn",
    "flash": "_native_flash",
    "efficient": "_native_efficient",
}


def repeated_blocks(transformer: nn.Module) -> list[nn.Module]:
    return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]


def default_attention(device: torch.device) -> str:
    """PyTorch's own choice: on an H100 with torch 2.11 that already is cuDNN's kernel, and forcing it
    through diffusers' cuDNN backend only adds layout copies (measured 0.874 vs 0.899 s a step)."""
    return "sdpa"


def set_block_attention(transformer: nn.Module, name: str) -> None:
    """Route the 60 blocks' attention through one SDPA kernel (the token refiner keeps its masked default)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"Unknown attention kernel {name!r}; choose one of {', '.join(ATTENTION_BACKENDS)}.")
    backend = ATTENTION_BACKENDS[name]
    for block in repeated_blocks(transformer):
        block.attn.processor._attention_backend = None if backend is None else AttentionBackendName(backend)


def compile_blocks(transformer: nn.Module, mode: str | None = None, backend: str = "inductor") -> int:
    """Compile each block's forward in place (hooks stay eager, outside the graphs); returns the count."""
    import torch._dynamo

    # The 60 blocks share two graphs; text lengths differ per prompt, so allow room for a dynamic
    # recompile per block kind before Dynamo would give up and fall back to eager.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    torch._dynamo.config.accumulated_cache_size_limit = max(torch._dynamo.config.accumulated_cache_size_limit, 512)
    blocks = repeated_blocks(transformer)
    for block in blocks:
        if not getattr(block, "_framepack_compiled", False):
            block.forward = torch.compile(block.forward, mode=mode, backend=backend, fullgraph=False)
            block._framepack_compiled = True
    return len(blocks)


def uncompile_blocks(transformer: nn.Module) -> None:
    """Back to the plain eager forward (the benchmark times both in one process)."""
    for block in repeated_blocks(transformer):
        if getattr(block, "_framepack_compiled", False):
            del block.forward  # the instance attribute; the class method shows through again
            block._framepack_compiled = False
