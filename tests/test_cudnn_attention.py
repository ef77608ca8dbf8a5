"""The cuDNN frontend attention path on the CPU: the clear refusal without a GPU, the routing of the blocks'
attention calls, and the per-tensor FP8 quantization. The kernels themselves run on the GPU machine
(benchmarks/attention_kernels.py and speed_modes.py's fast_fe and fp8_attention stages)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers import transformer_hunyuan_video as blocks_module
from engine_inputs import tiny_transformer

from engine.cudnn_attention import E4M3_MAX, block_attention, dequantize, quantize_fp8
from engine.speed import (
    FrontendKernel,
    _route_frontend_kernels,
    default_attention,
    probe,
    repeated_blocks,
    set_block_attention,
)


@pytest.mark.parametrize("name", ["cudnn-fe", "cudnn-fp8"])
def test_frontend_kernels_are_refused_clearly_without_a_gpu_and_change_nothing(name):
    model = tiny_transformer(dual=1, single=1)
    with pytest.raises(ValueError, match=f"ENGINE_ATTENTION={name}: it goes through cuDNN's frontend.*NVIDIA GPU"):
        set_block_attention(model, name)
    assert all(b.attn.processor._attention_backend is None for b in repeated_blocks(model))


def test_an_unknown_kernel_names_the_frontend_ones_too():
    with pytest.raises(ValueError, match="cudnn-fe, cudnn-fp8, fa3"):
        set_block_attention(tiny_transformer(dual=1, single=1), "sage")


def test_auto_keeps_pytorch_sdpa_off_hopper():
    assert default_attention(torch.device("cpu")) == "sdpa"
    assert default_attention(torch.device("cpu"), fp8=True) == "sdpa"


def _qkv(tokens: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, tokens, 2, 16, generator=g) for _ in range(3)]


def test_routing_sends_frontend_backends_to_cudnn_and_leaves_every_other_call_as_it_was():
    q, k, v = _qkv()
    before = blocks_module.dispatch_attention_fn(q, k, v, attn_mask=None, backend=None)
    _route_frontend_kernels()
    routed = blocks_module.dispatch_attention_fn
    _route_frontend_kernels()
    assert blocks_module.dispatch_attention_fn is routed  # wrapped once, however often a model is set up

    assert torch.equal(routed(q, k, v, attn_mask=None, backend=None), before)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):  # it reached engine/cudnn_attention.py
        routed(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=None, backend=FrontendKernel("cudnn", fp8=True))

    # A masked call (a batch of several prompts) has no frontend path: PyTorch's SDPA serves it, mask and all.
    mask = torch.ones(1, 1, 1, 40, dtype=torch.bool)
    mask[..., 30:] = False
    got = routed(q, k, v, attn_mask=mask, backend=FrontendKernel("cudnn"))
    assert torch.equal(got, routed(q, k, v, attn_mask=mask, backend=None))
    assert not torch.equal(got, before)  # the mask was applied


def test_flash_attention_3_is_refused_clearly_without_a_hopper_gpu_and_changes_nothing():
    model = tiny_transformer(dual=1, single=1)
    refusal = "ENGINE_ATTENTION=fa3: FlashAttention-3 is unavailable: it needs an NVIDIA GPU"
    with pytest.raises(ValueError, match=refusal):
        set_block_attention(model, "fa3")
    assert all(b.attn.processor._attention_backend is None for b in repeated_blocks(model))


def test_routing_sends_fa3_to_flash_attention_3():
    q, k, v = (t.bfloat16() for t in _qkv())
    _route_frontend_kernels()
    with pytest.raises(RuntimeError, match="FlashAttention-3 takes CUDA bf16"):  # it reached the FA3 op
        blocks_module.dispatch_attention_fn(q, k, v, attn_mask=None, backend=FrontendKernel("fa3"))


@pytest.mark.parametrize(("kernel", "reason"), [
    (FrontendKernel("fa3"), "FlashAttention-3 takes CUDA bf16"),
    (FrontendKernel("cudnn", fp8=True), "cuDNN attention needs a CUDA GPU"),
])
def test_the_probe_reports_why_a_kernel_cannot_serve_the_blocks(kernel, reason):
    problem = probe(kernel, torch.device("cpu"))
    assert problem.startswith("a test call failed (RuntimeError: ") and reason in problem


def test_block_attention_refuses_cpu_tensors_clearly():
    q, k, v = (t.bfloat16() for t in _qkv())
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        block_attention(q, k, v, fp8=False)


def test_fp8_quantization_puts_the_largest_magnitude_on_448_and_round_trips_within_e4m3():
    x = torch.randn(1, 257, 3, 16, generator=torch.Generator().manual_seed(3)).bfloat16() * 7
    x8, descale = quantize_fp8(x)
    assert x8.dtype == torch.float8_e4m3fn and descale.shape == (1, 1, 1, 1)
    assert float(x8.float().abs().max()) == E4M3_MAX
    back = dequantize(x8, descale)
    assert back.dtype == torch.bfloat16
    big = x.float().abs() > float(descale) * 2**-6 * 448  # e4m3 normals: 3 mantissa bits, half-ulp 1/16
    rel = ((back.float() - x.float()).abs() / x.float().abs())[big]
    assert float(rel.max()) <= 1 / 16 + 1e-3
    assert float((back.float() - x.float()).norm() / x.float().norm()) < 0.04

    zeros, zero_descale = quantize_fp8(torch.zeros(1, 4, 1, 16, dtype=torch.bfloat16))
    assert torch.isfinite(zero_descale).all() and not zeros.float().any()
