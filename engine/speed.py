"""The fast path for the transformer with unchanged bf16 math: regional torch.compile and the attention kernel.

- Regional compile: each of the 60 blocks' `forward` is compiled, not the whole model, so compiling
  costs two graphs (dual- and single-stream block), and the eager code around the blocks (packing,
  TeaCache, the low-VRAM streamer's hooks) stays as it is. Inductor fuses the norms, the modulation,
  RoPE, GELU and the gated residuals into a few kernels around cuBLAS and the attention kernel.
- Attention: on Hopper, FlashAttention-3 where a build is installed (engine/flash3_attention.py; 5.3 ms a
  call at these lengths against cuDNN's 6.4 and FlashAttention-2's 11.1 on an H200), else PyTorch's SDPA
  choice, which on Hopper is cuDNN's fused kernel. ENGINE_ATTENTION can force one kernel for the blocks, or
  go through the cuDNN frontend package (`nvidia-cudnn-frontend`, optional): "cudnn-fe" pads the tokens to
  cuDNN's tile and masks the padding (same math; measured 1% faster a step, within noise), "cudnn-fp8" also
  runs attention in FP8 (1.5x the bf16 kernel, a few percent off bf16 per call).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

ATTENTION_BACKENDS = {
    "sdpa": None,  # PyTorch's own choice (FlashAttention-2 on most GPUs)
    "cudnn": "_native_cudnn",
    "flash": "_native_flash",
    "efficient": "_native_efficient",
}


@dataclass(frozen=True)
class FrontendKernel:
    """Put in a processor's `_attention_backend`: its attention goes to a kernel outside diffusers' dispatch,
    the cuDNN frontend (engine/cudnn_attention.py) or FlashAttention-3 (engine/flash3_attention.py)."""

    library: str  # "cudnn" | "fa3"
    fp8: bool = False


FRONTEND_KERNELS = {
    "cudnn-fe": FrontendKernel("cudnn"),
    "cudnn-fp8": FrontendKernel("cudnn", fp8=True),
    "fa3": FrontendKernel("fa3"),
}


def _frontend_attention(kernel: FrontendKernel, query, key, value):
    if kernel.library == "fa3":
        from engine.flash3_attention import flash3_attention

        return flash3_attention(query, key, value)
    from engine.cudnn_attention import block_attention

    return block_attention(query, key, value, fp8=kernel.fp8)


def _route_frontend_kernels() -> None:
    """Wrap the HunyuanVideo processors' attention call once: FrontendKernel backends go to their kernel,
    every other call (and any call with a mask, which only batches of several prompts have) as before."""
    from diffusers.models.transformers import transformer_hunyuan_video as blocks_module

    original = blocks_module.dispatch_attention_fn
    if getattr(original, "_framepack_routes", False):
        return

    def dispatch(query, key, value, attn_mask=None, *args, backend=None, **kwargs):
        if isinstance(backend, FrontendKernel):
            if attn_mask is None:
                return _frontend_attention(backend, query, key, value)
            backend = None
        return original(query, key, value, attn_mask, *args, backend=backend, **kwargs)

    dispatch._framepack_routes = True
    blocks_module.dispatch_attention_fn = dispatch


def frontend_available() -> str | None:
    """None when the cuDNN frontend can run here, else why not."""
    if not torch.cuda.is_available():
        return "it needs an NVIDIA GPU"
    try:
        import cudnn  # noqa: F401
    except Exception as error:
        return f"the package nvidia-cudnn-frontend does not load ({type(error).__name__}: {error})"
    return None


def kernel_problem(kernel: FrontendKernel) -> str | None:
    """None when `kernel` can run here, else why not (in words for the refusal)."""
    if kernel.library == "fa3":
        from engine.flash3_attention import load

        problem = load()
        return None if problem is None else f"FlashAttention-3 is unavailable: {problem}"
    problem = frontend_available()
    return None if problem is None else f"it goes through cuDNN's frontend, but {problem}"


def repeated_blocks(transformer: nn.Module) -> list[nn.Module]:
    return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]


def probe(kernel: FrontendKernel, device: torch.device) -> str | None:
    """None when `kernel` runs a small call on `device` and agrees with PyTorch's attention, else why not.

    The auto choice probes before it commits, so a build that imports but fails at run time (no kernel for
    this GPU, a CUDA runtime mismatch) leaves the worker on PyTorch's attention instead of failing every job."""
    g = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(1, 300, 2, 128, generator=g, device=device, dtype=torch.bfloat16) for _ in range(3))
    try:
        got = _frontend_attention(kernel, q, k, v).float()
    except Exception as error:
        return f"a test call failed ({type(error).__name__}: {error})"
    want = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
    error = float((got - want.transpose(1, 2).float()).norm() / want.float().norm())
    # bf16 rounding gives about 0.3%; per-tensor e4m3 about 6% (measured at 18,253 tokens, and simulated on the
    # CPU at this size). A broken kernel is off by tens of percent.
    limit = 0.15 if kernel.fp8 else 0.02
    return None if error <= limit else f"a test call was {error:.1%} off PyTorch's attention"


def default_attention(device: torch.device, fp8: bool = False) -> str:
    """The fastest kernel that loads and passes its probe here; PyTorch's SDPA when none does.

    Measured on an H200, per step (benchmarks/README.md): bf16 0.802 s with FlashAttention-3 against 0.870 s
    with PyTorch's own choice (cuDNN's kernel); FP8 linears 0.598 s with FP8 attention through the cuDNN
    frontend, whose output stays within 1.9% of bf16. Off Hopper: PyTorch's choice."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return "sdpa"
    for name in (["cudnn-fp8"] if fp8 else []) + ["fa3"]:
        kernel = FRONTEND_KERNELS[name]
        problem = kernel_problem(kernel) or probe(kernel, device)
        if problem is None:
            return name
        log.info("attention: %s not used: %s", name, problem)
    return "sdpa"


def block_attention_backend(transformer: nn.Module):
    """What the blocks' attention runs now (set by set_block_attention): None, a diffusers backend or a
    FrontendKernel."""
    return transformer.transformer_blocks[0].attn.processor._attention_backend


def set_block_attention(transformer: nn.Module, name: str) -> None:
    """Route the 60 blocks' attention through one SDPA kernel (the token refiner keeps its masked default)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    if name in FRONTEND_KERNELS:
        problem = kernel_problem(FRONTEND_KERNELS[name])
        if problem:
            raise ValueError(f"ENGINE_ATTENTION={name}: {problem}.")
        _route_frontend_kernels()
        for block in repeated_blocks(transformer):
            block.attn.processor._attention_backend = FRONTEND_KERNELS[name]
        return
    if name not in ATTENTION_BACKENDS:
        choices = ", ".join([*ATTENTION_BACKENDS, *FRONTEND_KERNELS])
        raise ValueError(f"Unknown attention kernel {name!r}; choose one of {choices}.")
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


def compile_vae_decoder(vae: nn.Module, backend: str = "inductor") -> bool:
    """Compile the VAE's decoder in place (same math, fused): on an H200 a section's decode at 640x608 took
    2.05 s compiled against 3.58 s eager (issue 21's measurement). Its shapes change with the window and the
    tiles, so Dynamo soon marks them dynamic instead of compiling each. Returns False when already done."""
    import torch._dynamo

    decoder = vae.decoder
    if getattr(decoder, "_framepack_compiled", False):
        return False
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    decoder.forward = torch.compile(decoder.forward, backend=backend, fullgraph=False)
    decoder._framepack_compiled = True
    return True


def uncompile_blocks(transformer: nn.Module) -> None:
    """Back to the plain eager forward (the benchmark times both in one process)."""
    for block in repeated_blocks(transformer):
        if getattr(block, "_framepack_compiled", False):
            del block.forward  # the instance attribute; the class method shows through again
            block._framepack_compiled = False
