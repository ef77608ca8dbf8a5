"""engine/decode_kernels.py: the Triton GroupNorm statistics and norm-SiLU-pad kernels give torch's values, and
the fast decoder with them gives diffusers' pixels. They run here through Triton's interpreter, on the CPU: the
same kernel code, each program run in numpy."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn.functional as F

import engine.fast_decode as fast_decode
from engine.fast_decode import speed_up_decoder, upsample_nearest

PADS = [(1, 1, 1, 1, 2, 0), (0, 0, 0, 0, 0, 0), (2, 1, 0, 3, 1, 1)]


@pytest.fixture(scope="module")
def kernels():
    """engine/decode_kernels.py, its kernels interpreted (tests/conftest.py sets TRITON_INTERPRET without a GPU)."""
    if sys.platform != "linux":  # Triton's wheels are Linux's; the dev extra installs it there
        pytest.importorskip("triton")
    from triton.runtime.interpreter import InterpretedFunction

    from engine import decode_kernels

    assert isinstance(decode_kernels._plane_partials, InterpretedFunction)
    return decode_kernels


def with_blocks(kernels, monkeypatch, **sizes):
    for name, value in sizes.items():
        monkeypatch.setattr(kernels, name, value)
    return kernels


@pytest.fixture()
def small_blocks(kernels, monkeypatch):
    """Blocks small enough that the test tensors take several programs and part-filled edges."""
    return with_blocks(kernels, monkeypatch, STATS_BLOCK=64, STATS_STEPS=3, PAD_ELEMENTS=32, PAD_MAX_COLUMNS=4,
                       ADD_BLOCK=16)


@pytest.fixture()
def large_blocks(kernels, monkeypatch):
    """Blocks that take a tiny decoder's tensors in few programs: the interpreter runs each one in Python."""
    return with_blocks(kernels, monkeypatch, STATS_BLOCK=4096, STATS_STEPS=1, PAD_ELEMENTS=4096, ADD_BLOCK=4096)


def per_channel(bias: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return bias.view(1, -1, *[1] * (like.dim() - 2))


@pytest.mark.parametrize("mean,spread,dtype", [(0.0, 1.0, torch.float32), (60.0, 1.0, torch.float16),
                                               (3.0, 0.05, torch.float16), (-20.0, 4.0, torch.float32)])
@pytest.mark.parametrize("plane", [1, 191, 192, 1000])  # one part, a full one, several with a part-filled last
@pytest.mark.parametrize("with_bias", [False, True])
def test_group_moments_are_each_groups_mean_and_inverse_deviation(small_blocks, mean, spread, dtype, plane,
                                                                   with_bias):
    torch.manual_seed(plane)
    x = (torch.randn(2, 6, plane) * spread + mean).to(dtype)
    bias = torch.randn(6) * 3 if with_bias else None
    got_mean, got_rstd = small_blocks.group_moments(x, 3, 1e-6, bias)
    exact = x.double() + (per_channel(bias.double(), x) if with_bias else 0)
    exact = exact.reshape(6, -1)  # (sample, group) rows of 2 channels' planes
    torch.testing.assert_close(got_mean.double(), exact.mean(1), rtol=1e-6, atol=1e-6 * spread)
    got_var = got_rstd.double() ** -2 - 1e-6
    torch.testing.assert_close(got_var, exact.var(1, unbiased=False), rtol=1e-4, atol=1e-6 * spread ** 2)


def test_a_groups_partials_are_merged_in_several_steps(small_blocks, monkeypatch):
    """More partial statistics in a group than one merge step takes: 4 channels of 5 parts against 8 lanes."""
    monkeypatch.setattr(small_blocks, "MERGE_BLOCK", 8)
    x = torch.randn(1, 8, 900) * 3 + 5
    got_mean, got_rstd = small_blocks.group_moments(x, 2, 1e-6)
    exact = x.double().reshape(2, -1)
    torch.testing.assert_close(got_mean.double(), exact.mean(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_rstd.double(), (exact.var(1, unbiased=False) + 1e-6).rsqrt(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("pad", PADS)
@pytest.mark.parametrize("affine,with_bias", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float16, 4e-3)])
def test_norm_silu_pad_is_torchs(small_blocks, pad, affine, with_bias, dtype, tolerance):
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 8, eps=1e-6, affine=affine)
    if affine:
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x = (torch.randn(2, 8, 3, 5, 7) * 2 + 30).to(dtype)
    bias = torch.randn(8).to(dtype) if with_bias else None
    with torch.no_grad():
        expected = F.pad(F.silu(norm(x.float() + (per_channel(bias.float(), x) if with_bias else 0))), pad,
                         mode="replicate")
        got = small_blocks.norm_silu_pad(x, norm.to(dtype), pad, in_bias=bias)
    assert got.dtype == dtype
    assert got.shape == expected.shape
    torch.testing.assert_close(got.float(), expected, rtol=tolerance, atol=tolerance)  # fp16: one rounding


@pytest.mark.parametrize("pad", PADS)
@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (2, 1, 1), (1, 1, 1)])
def test_upsample_pad_is_diffusers_upsampling_then_torchs_padding(small_blocks, pad, factors):
    x = torch.randn(2, 3, 3, 5, 7).half()
    expected = F.pad(upsample_nearest(x.float(), factors), pad, mode="replicate").half()
    assert torch.equal(small_blocks.upsample_pad(x, factors, pad), expected)


@pytest.mark.parametrize("with_bias,with_residual", [(True, True), (False, True), (True, False)])
def test_add_bias_residual_adds_in_place(small_blocks, with_bias, with_residual):
    h, residual, bias = torch.randn(2, 4, 3, 5, 7), torch.randn(2, 4, 3, 5, 7), torch.randn(4)
    expected = h + (per_channel(bias, h) if with_bias else 0) + (residual if with_residual else 0)
    out = small_blocks.add_bias_residual_(h, bias if with_bias else None, residual if with_residual else None)
    assert out is h
    torch.testing.assert_close(h, expected, rtol=1e-6, atol=1e-6)


def test_the_kernels_take_strided_tensors_too(small_blocks):
    x = torch.randn(2, 4, 3, 7, 5).transpose(3, 4)  # (2, 4, 3, 5, 7), not contiguous
    norm = torch.nn.GroupNorm(2, 4, eps=1e-6)
    with torch.no_grad():
        expected = F.pad(F.silu(norm(x)), PADS[0], mode="replicate")
        torch.testing.assert_close(small_blocks.norm_silu_pad(x, norm, PADS[0]), expected, rtol=1e-5, atol=1e-5)
    h, residual = torch.randn(2, 4, 3, 7, 5).transpose(3, 4), torch.randn(2, 4, 3, 5, 7)
    torch.testing.assert_close(small_blocks.add_bias_residual_(h, None, residual), h + residual)


def test_the_fast_decoder_with_the_kernels_decodes_diffusers_pixels(large_blocks, lively_vae, monkeypatch):
    used = []

    def interpreted_on_the_cpu(module, x):
        if not module._framepack_kernels:
            return None
        used.append(type(module).__name__)
        return large_blocks

    monkeypatch.setattr(fast_decode, "kernels_for", interpreted_on_the_cpu)
    fast = copy.deepcopy(lively_vae)
    assert speed_up_decoder(fast) > 0
    z = torch.randn(1, lively_vae.config.latent_channels, 2, 4, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = lively_vae.decode(z).sample
        got = fast.decode(z).sample
    # every resnet, upsampler and the output norm took the kernels
    assert {"HunyuanVideoResnetBlockCausal3D", "HunyuanVideoUpsampleCausal3D", "HunyuanVideoDecoder3D"} <= set(used)
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-5)


def test_kernels_run_only_where_asked_and_on_cuda(lively_vae):
    with_kernels, without = copy.deepcopy(lively_vae), copy.deepcopy(lively_vae)
    speed_up_decoder(with_kernels)
    speed_up_decoder(without, kernels=False)
    resnet = next(m for m in with_kernels.decoder.modules() if hasattr(m, "_framepack_kernels"))
    assert fast_decode.kernels_for(resnet, torch.zeros(1)) is None  # a CPU tensor: torch's kernels
    assert not any(getattr(m, "_framepack_kernels", False) for m in without.decoder.modules())
    assert with_kernels.decoder._framepack_kernels


def test_the_self_check_passes_and_catches_a_wrong_kernel(kernels, monkeypatch):
    assert fast_decode.kernels_agree_with_torch(kernels, torch.device("cpu"))
    monkeypatch.setattr(kernels, "upsample_pad", lambda x, factors, pad: F.pad(x, pad))  # zeros at the edges
    assert not fast_decode.kernels_agree_with_torch(kernels, torch.device("cpu"))


@pytest.mark.parametrize("failure", ["raises", "differs"])
def test_kernels_that_do_not_work_on_a_gpu_leave_it_to_torch(monkeypatch, caplog, failure):
    def self_check(kernels, device):
        if failure == "raises":
            raise RuntimeError("PTX for sm_61 is not supported")
        return False

    monkeypatch.setattr(fast_decode, "kernels_agree_with_torch", self_check)
    fast_decode.kernels_work_on.cache_clear()
    try:
        assert not fast_decode.kernels_work_on(torch.device("cuda", 3))
    finally:
        fast_decode.kernels_work_on.cache_clear()
    expected = "sm_61" if failure == "raises" else "differ from torch's"
    assert any("cuda:3" in r.getMessage() and expected in r.getMessage() for r in caplog.records)
