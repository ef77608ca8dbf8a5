"""engine/fast_decode.py: the regrouped decoder gives diffusers' pixels up to rounding, and is used where the
options say so."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_picture
from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoDecoder3D

import engine.fast_decode as fast_decode
from engine.engine_options import EngineOptions
from engine.fast_decode import group_norm, replicate_pad, speed_up_decoder, upsample_nearest
from engine.models import load_models
from engine.render import RenderRequest, render
from engine.stitch import vae_decode
from engine.video import frames_to_uint8

PADS = [(1, 1, 1, 1, 2, 0), (0, 0, 0, 0, 0, 0), (1, 1, 1, 1, 0, 0), (0, 0, 0, 0, 2, 0), (2, 1, 0, 3, 1, 1)]


@pytest.mark.parametrize("pad", PADS)
def test_replicate_padding_by_copies_is_torchs(pad):
    x = torch.randn(2, 3, 4, 5, 6)
    assert torch.equal(replicate_pad(x, pad), F.pad(x, pad, mode="replicate"))
    silu_padded = replicate_pad(x, pad, fill=lambda source, out: torch.ops.aten.silu.out(source, out=out))
    torch.testing.assert_close(silu_padded, F.silu(F.pad(x, pad, mode="replicate")), rtol=0, atol=1e-6)


@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (2, 1, 1)])
def test_nearest_upsampling_is_diffusers(factors):
    x = torch.randn(1, 3, 4, 5, 6)
    first = F.interpolate(x[:, :, :1].squeeze(2), scale_factor=factors[1:], mode="nearest").unsqueeze(2)
    rest = F.interpolate(x[:, :, 1:].contiguous(), scale_factor=factors, mode="nearest")
    assert torch.equal(upsample_nearest(x, factors), torch.cat([first, rest], 2))


@pytest.mark.parametrize("mean,spread,dtype,tolerance", [
    (0.0, 1.0, torch.float32, 1e-5), (30.0, 0.1, torch.float32, 1e-4),
    (0.0, 1.0, torch.float16, 2e-3), (3.0, 0.05, torch.float16, 2e-3), (100.0, 1.0, torch.float16, 2e-3),
])
@pytest.mark.parametrize("chunk", [fast_decode.CHUNK, 1000])
def test_group_norm_matches_torchs_far_from_zero_too(monkeypatch, mean, spread, dtype, tolerance, chunk):
    """Values 60 standard deviations from zero: E[x^2] - E[x]^2 got 0.09 wrong here."""
    monkeypatch.setattr(fast_decode, "CHUNK", chunk)
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 8, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = (torch.randn(2, 8, 5, 24, 24) * spread + mean).to(dtype)
    with torch.no_grad():
        expected = norm(x.float())
        got = group_norm(x, norm.to(dtype)).float()
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)  # fp16: its own rounding


@pytest.mark.parametrize("frames", [1, 2, 9, 18, 19])
def test_the_fast_decoder_decodes_diffusers_pixels(lively_vae, frames):
    fast = copy.deepcopy(lively_vae)
    assert speed_up_decoder(fast) > 0
    assert speed_up_decoder(fast) == 0  # once
    assert fast.encoder.forward == lively_vae.encoder.forward.__func__.__get__(fast.encoder)  # the encoder stays
    z = torch.randn(1, lively_vae.config.latent_channels, frames, 4, 6, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        expected = lively_vae.decode(z).sample
        got = fast.decode(z).sample
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-5)


def test_an_unknown_decoder_is_left_alone(lively_vae):
    odd = copy.deepcopy(lively_vae)
    odd.decoder.conv_act = torch.nn.GELU()
    assert speed_up_decoder(odd) == 0
    assert odd.decoder.forward.__func__ is HunyuanVideoDecoder3D.forward


def test_the_option_picks_the_decoder_and_a_renders_frames_stay(original_models, tiny_models_dir, tmp_path):
    """The frames as they go to the encoder: at most one level apart, in a handful of values. (The MP4s
    differ more: one level is enough to change the H.264 encoder's choices.)"""
    request = RenderRequest(prompt="a cat dances", seconds=2.4, steps=2, resolution=64, variant="original")
    render(original_models, make_picture(), request, tmp_path / "stock", tmp_path / "stock.mp4")
    history = torch.load(tmp_path / "stock" / "checkpoint.pt", weights_only=False)["history"]
    fast_models = load_models("original", "cpu", tiny_models_dir, options=EngineOptions(memory_mode="high"))
    plain_models = load_models("original", "cpu", tiny_models_dir,
                               options=EngineOptions(memory_mode="high", fast_decode=False))
    assert fast_models.encoders.vae.decoder._framepack_fast
    assert not getattr(plain_models.encoders.vae.decoder, "_framepack_fast", False)
    for frames in (9, 18, 19):  # the windows this render decoded
        window = history[:, :, :frames]
        expected = frames_to_uint8(vae_decode(window, original_models.encoders.vae)).astype(int)
        got = frames_to_uint8(vae_decode(window, fast_models.encoders.vae)).astype(int)
        assert np.abs(got - expected).max() <= 1
        assert (got != expected).mean() < 1e-3
