"""engine/decoded_tiles.py: a section's decode reuses the temporal tiles it shares with the last decode, and
its pixels stay those of a decode from scratch, bit for bit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import make_picture
from helpers import video_frames

from engine.decoded_tiles import DecodedTiles, reuse_decoded_tiles
from engine.engine_options import EngineOptions
from engine.models import load_models
from engine.render import RenderRequest, render
from engine.sections import section_count


@pytest.fixture(scope="module")
def history():
    return torch.randn(1, 16, 40, 4, 6, generator=torch.Generator().manual_seed(5))


def _decode(vae, window):
    with torch.no_grad():
        return vae.decode(window).sample


def test_windows_that_move_by_a_window_reuse_the_shared_tiles(lively_vae, history):
    """The inverted sampler's windows: 18 frames, each new one 9 frames earlier in the history (diffusers'
    tiles: 5 latent frames every 3, so 6 tiles a window)."""
    reusing = copy.deepcopy(lively_vae)
    tiles = reuse_decoded_tiles(reusing)
    assert reuse_decoded_tiles(reusing) is tiles  # once
    for start, reused in ((18, 0), (9, 2), (0, 4)):
        window = history[:, :, start:start + 18]
        assert torch.equal(_decode(reusing, window), _decode(lively_vae, window))
        assert tiles.reused == reused
    assert tiles.decoded == 6 + 4 + 4


def test_a_window_decoded_again_is_all_reused_and_unharmed_by_diffusers_in_place_blending(lively_vae, history):
    reusing = copy.deepcopy(lively_vae)
    tiles = reuse_decoded_tiles(reusing)
    window = history[:, :, :18]
    first = _decode(reusing, window)
    for _ in range(2):  # diffusers blends each tile into the next in place: a shared tensor would drift
        assert torch.equal(_decode(reusing, window), first)
    assert (tiles.decoded, tiles.reused) == (6, 12)


def test_only_the_last_call_is_remembered_and_a_shifted_window_reuses_nothing(lively_vae, history):
    reusing = copy.deepcopy(lively_vae)
    tiles = reuse_decoded_tiles(reusing)
    _decode(reusing, history[:, :, 9:27])
    _decode(reusing, history[:, :, 1:19])  # 8 frames on: no tile starts where one did
    assert tiles.reused == 0
    window = history[:, :, 9:27]
    assert torch.equal(_decode(reusing, window), _decode(lively_vae, window))
    assert tiles.reused == 0  # the first call's tiles went with the second call
    tiles.forget()
    _decode(reusing, window)
    assert tiles.reused == 0


@pytest.mark.parametrize(("variant", "spatial_tiles"), [("original", False), ("f1", False), ("original", True)])
def test_a_render_reuses_tiles_and_its_video_is_the_one_decoded_from_scratch(
        tiny_models_dir, tmp_path, monkeypatch, variant, spatial_tiles):
    models = load_models(variant, "cpu", tiny_models_dir, options=EngineOptions(memory_mode="high"))
    tiles = models.encoders.vae.decoder._framepack_decoded_tiles
    if spatial_tiles:  # as a low plan's 256 px tiles would cut a larger picture: 4 tiles a temporal tile
        models.encoders.vae.enable_tiling(tile_sample_min_height=48, tile_sample_min_width=48,
                                          tile_sample_stride_height=32, tile_sample_stride_width=32)
    request = RenderRequest(prompt="a cat dances", steps=2, resolution=64, variant=variant, seconds=4.8, seed=2)
    assert section_count(request.seconds, request.window) >= 4
    reusing = render(models, make_picture(), request, tmp_path / "reusing", tmp_path / "reusing.mp4")
    assert tiles.reused >= 2
    assert {decoded.key[0] for decoded in tiles.current} == {"spatial tiles" if spatial_tiles else "decoder"}
    reused = tiles.reused
    monkeypatch.setattr(DecodedTiles, "start_call", DecodedTiles.forget)  # every decode from scratch
    scratch = render(models, make_picture(), request, tmp_path / "scratch", tmp_path / "scratch.mp4")
    assert tiles.reused == reused
    assert np.array_equal(video_frames(reusing.video), video_frames(scratch.video))


def test_a_decode_in_spatial_tiles_reuses_whole_temporal_tiles(lively_vae, history):
    """Each temporal tile is looked up once, not each of its spatial tiles; the pixels are diffusers' own."""
    reusing, plain = copy.deepcopy(lively_vae), copy.deepcopy(lively_vae)
    for vae in (reusing, plain):
        vae.enable_tiling(tile_sample_min_height=24, tile_sample_min_width=24,
                          tile_sample_stride_height=16, tile_sample_stride_width=16)
    tiles = reuse_decoded_tiles(reusing)
    spatial_calls = []
    forward = reusing.decoder.forward
    reusing.decoder.forward = lambda tile: spatial_calls.append(tile.shape) or forward(tile)
    for start, reused in ((18, 0), (9, 2), (0, 4)):
        window = history[:, :, start:start + 18]
        assert torch.equal(_decode(reusing, window), _decode(plain, window))
        assert tiles.reused == reused
    assert tiles.decoded == 6 + 4 + 4
    assert len(spatial_calls) == (6 + 4 + 4) * 2 * 3  # a 4x6 latent in tiles of 3 every 2: 2 x 3 of them
    assert {kind for kind, *_ in (decoded.key for decoded in tiles.current)} == {"spatial tiles"}
    reusing.disable_tiling()
    first = _decode(reusing, history[:, :, :18])
    assert torch.equal(_decode(reusing, history[:, :, :18]), first)
    assert tiles.reused == 4 + 6  # untiled: whole temporal tiles through the decoder, a kind of their own


def test_latents_changed_in_place_after_a_decode_are_not_taken_for_the_ones_decoded(lively_vae):
    reusing, plain = copy.deepcopy(lively_vae), copy.deepcopy(lively_vae)
    for vae in (reusing, plain):
        vae.enable_tiling(tile_sample_min_height=24, tile_sample_min_width=24,
                          tile_sample_stride_height=16, tile_sample_stride_width=16)
    tiles = reuse_decoded_tiles(reusing)
    # whole numbers: their sums are exact in any order, so flipped latents have the same fingerprint
    latents = torch.randint(-3, 4, (1, 16, 18, 4, 6), generator=torch.Generator().manual_seed(1)).float()
    _decode(reusing, latents)
    latents.copy_(latents.flip(-1))  # the caller's tensor, reused for other latents
    assert torch.equal(_decode(reusing, latents), _decode(plain, latents))
    assert tiles.reused == 0
