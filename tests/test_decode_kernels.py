"""engine/decode_kernels.py: the Triton GroupNorm statistics and norm-SiLU-pad kernels give torch's values, and
the fast decoder with them gives diffusers' pixels. They run here through Triton's interpreter, on the CPU: the
same kernel code, each program run in numpy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import engine.fast_decode as fast_decode
from engine.fast_decode import speed_up_decoder

PADS = [(1, 1, 1, 1, 2, 0), (0, 0, 0, 0, 0, 0), (2, 1, 0, 3, 1, 1)]


@pytest.fixture(scope="module")
def kernels():
    """engine/decode_kernels.py, its kernels interpreted (tests/conftest.py sets TRITON_INTERPRET without a GPU)."""
    from triton.runtime.interpreter import InterpretedFunction

    from engine import decode_kernels

    assert isinstance(decode_kernels._group_partials, InterpretedFunction)
    return decode_kernels


@pytest.fixture()
def small_blocks(kernels, monkeypatch):
    """Blocks small enough that the test tensors take several programs and part-filled edges."""
    monkeypatch.setattr(kernels, "STATS_BLOCK", 64)
    monkeypatch.setattr(kernels, "STATS_STEPS", 3)
    monkeypatch.setattr(kernels, "PAD_ROWS", 4)
    monkeypatch.setattr(kernels, "PAD_COLUMNS", 8)
    return kernels


@pytest.mark.parametrize("mean,spread,dtype", [(0.0, 1.0, torch.float32), (60.0, 1.0, torch.float16),
                                               (3.0, 0.05, torch.float16), (-20.0, 4.0, torch.float32)])
@pytest.mark.parametrize("length", [1, 191, 192, 1000])  # one part, a full one, several with a part-filled last
def test_group_moments_are_the_rows_mean_and_variance(small_blocks, mean, spread, dtype, length):
    torch.manual_seed(length)
    rows = (torch.randn(6, length) * spread + mean).to(dtype)
    got_mean, got_var = small_blocks.group_moments(rows)
    exact = rows.double()
    torch.testing.assert_close(got_mean.double(), exact.mean(1), rtol=1e-6, atol=1e-6 * spread)
    torch.testing.assert_close(got_var.double(), exact.var(1, unbiased=False), rtol=1e-4, atol=1e-6 * spread ** 2)


@pytest.mark.parametrize("pad", PADS)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float16, 4e-3)])
def test_norm_silu_pad_is_torchs(small_blocks, pad, affine, dtype, tolerance):
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 8, eps=1e-6, affine=affine)
    if affine:
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x = (torch.randn(2, 8, 3, 5, 7) * 2 + 30).to(dtype)
    with torch.no_grad():
        expected = F.pad(F.silu(norm(x.float())), pad, mode="replicate")
        got = small_blocks.norm_silu_pad(x, norm.to(dtype), pad)
    assert got.dtype == dtype
    assert got.shape == expected.shape
    torch.testing.assert_close(got.float(), expected, rtol=tolerance, atol=tolerance)  # fp16: one rounding


@pytest.mark.parametrize("frames", [2, 9])
def test_the_fast_decoder_with_the_kernels_decodes_diffusers_pixels(small_blocks, lively_vae, monkeypatch, frames):
    used = []

    def interpreted_on_the_cpu(module, x):
        if not module._framepack_kernels:
            return None
        used.append(x.shape)
        return small_blocks

    monkeypatch.setattr(fast_decode, "kernels_for", interpreted_on_the_cpu)
    fast = copy.deepcopy(lively_vae)
    assert speed_up_decoder(fast) > 0
    z = torch.randn(1, lively_vae.config.latent_channels, frames, 4, 6, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        expected = lively_vae.decode(z).sample
        got = fast.decode(z).sample
    assert used  # every resnet and the output norm took the kernels
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-5)


def test_kernels_run_only_where_asked_and_on_cuda(lively_vae):
    with_kernels, without = copy.deepcopy(lively_vae), copy.deepcopy(lively_vae)
    speed_up_decoder(with_kernels)
    speed_up_decoder(without, kernels=False)
    resnet = next(m for m in with_kernels.decoder.modules() if hasattr(m, "_framepack_kernels"))
    assert fast_decode.kernels_for(resnet, torch.zeros(1)) is None  # a CPU tensor: torch's kernels
    assert not any(getattr(m, "_framepack_kernels", False) for m in without.decoder.modules())
    assert with_kernels.decoder._framepack_kernels
