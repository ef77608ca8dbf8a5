"""engine/batched_tiles.py: diffusers' decode in spatial tiles with the tiles of one shape decoded as a batch
gives diffusers' pixels, and composes with the fast decoder and the reuse of temporal tiles."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.batched_tiles import decode_tiles_in_batches, tiled_decode_in_batches
from engine.decoded_tiles import reuse_decoded_tiles
from engine.fast_decode import speed_up_decoder


def _tiled(vae, tile: int, stride: int):
    vae = copy.deepcopy(vae)
    vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                      tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    return vae


@pytest.mark.parametrize("size", [(5, 7), (4, 4), (3, 6)])
def test_one_tile_at_a_time_is_diffusers_tiled_decode_bit_for_bit(lively_vae, size):
    vae = _tiled(lively_vae, 24, 16)  # 3 latent rows and columns every 2: edge tiles of 1 or 2
    z = torch.randn(1, 16, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    with torch.no_grad():
        expected = vae.tiled_decode(z).sample
        assert torch.equal(tiled_decode_in_batches(vae, z, batch=1).sample, expected)
        assert torch.equal(tiled_decode_in_batches(vae, z, return_dict=False, batch=1)[0], expected)


@pytest.mark.parametrize("batch", [2, 3, 100])
def test_batches_of_tiles_give_diffusers_pixels_in_fewer_decoder_calls(lively_vae, batch):
    vae = _tiled(lively_vae, 24, 16)
    z = torch.randn(1, 16, 3, 5, 7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = vae.tiled_decode(z).sample
        batches = []
        forward = vae.decoder.forward
        vae.decoder.forward = lambda tiles: batches.append(tiles.shape[0]) or forward(tiles)
        got = tiled_decode_in_batches(vae, z, batch=batch).sample
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # corners 0, 2, 4 down and 0, 2, 4, 6 across: tiles 3x3 (6 of them), 3x1 (2), 1x3 (3), 1x1 (1)
    assert sum(batches) == 12 and len(batches) == sum(-(-count // batch) for count in (6, 2, 3, 1))


def test_a_section_decoded_in_batched_tiles_by_the_fast_decoder_reusing_tiles(lively_vae):
    """The whole path a low-memory plan takes: temporal tiles, spatial tiles in batches, the fast decoder, the
    previous window's temporal tiles reused."""
    plain = _tiled(lively_vae, 24, 16)
    fast = _tiled(lively_vae, 24, 16)
    speed_up_decoder(fast)
    decode_tiles_in_batches(fast, 4)
    tiles = reuse_decoded_tiles(fast)
    history = torch.randn(1, 16, 27, 4, 6, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for start in (9, 0):
            window = history[:, :, start:start + 18]
            torch.testing.assert_close(fast.decode(window).sample, plain.decode(window).sample,
                                       rtol=1e-4, atol=1e-4)
    assert (tiles.decoded, tiles.reused) == (6 + 4, 2)


def test_a_batch_of_one_leaves_diffusers_tiled_decode_in_place(lively_vae):
    vae = _tiled(lively_vae, 16, 8)
    decode_tiles_in_batches(vae, 1)
    assert "tiled_decode" not in vars(vae)
