"""engine/spatial_tiles.py: diffusers' decode in spatial tiles without the covered edge tiles keeps diffusers'
pixels but for the edge strips, which come from the covering tile's own decode, in fewer decoder calls; tiles
of one shape decoded as a batch give the same pixels; both compose with the fast decoder and the reuse of
temporal tiles."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import counting_decoder_calls

from engine.decoded_tiles import reuse_decoded_tiles
from engine.fast_decode import speed_up_decoder
from engine.spatial_tiles import blend, decode_in_spatial_tiles, tile_starts, tiled_decode


def _tiled(vae, tile: int, stride: int):
    vae = copy.deepcopy(vae)
    vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                      tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    return vae


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("extent", [64, 7, 200, 0])  # 200: clipped to the tiles' size
@pytest.mark.parametrize("dim,name", [(-2, "blend_v"), (-1, "blend_h"), (-3, "blend_t")])
def test_blend_is_diffusers_blend_bit_for_bit(lively_vae, dtype, extent, dim, name):
    generator = torch.Generator().manual_seed(extent)
    shape = [1, 3, 6, 40, 48]
    a = (torch.randn(shape, generator=generator) * 3).to(dtype)
    shape[dim] -= 4  # a thinner later tile, as at an edge
    b = torch.randn(shape, generator=generator).to(dtype)
    expected = getattr(lively_vae, name)(a.clone(), b.clone(), extent)
    got = b.clone()
    assert blend(a.clone(), got, extent, dim) is got  # in place, as diffusers'
    assert torch.equal(got, expected)


def test_tile_starts_stop_at_the_first_tile_reaching_the_edge():
    # 640x608 px in 256 px tiles every 192: 80 x 76 latents, tiles of 32 every 24
    assert tile_starts(80, 32, 24, skip_covered=False) == [0, 24, 48, 72]
    assert tile_starts(80, 32, 24, skip_covered=True) == [0, 24, 48]
    assert tile_starts(76, 32, 24, skip_covered=True) == [0, 24, 48]
    assert tile_starts(81, 32, 24, skip_covered=True) == [0, 24, 48, 72]  # 48 + 32 stops short of 81
    assert tile_starts(80, 48, 40, skip_covered=True) == tile_starts(80, 48, 40, skip_covered=False) == [0, 40]
    assert tile_starts(20, 32, 24, skip_covered=True) == [0]


@pytest.mark.parametrize("size", [(5, 7), (4, 4), (3, 6)])
def test_without_skipping_one_tile_at_a_time_is_diffusers_tiled_decode_bit_for_bit(lively_vae, size):
    vae = _tiled(lively_vae, 24, 16)  # 3 latent rows and columns every 2: edge tiles of 1 or 2
    z = torch.randn(1, 16, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    with torch.no_grad():
        expected = vae.tiled_decode(z).sample
        assert torch.equal(tiled_decode(vae, z, batch=1, skip_covered=False).sample, expected)
        assert torch.equal(tiled_decode(vae, z, return_dict=False, batch=1, skip_covered=False)[0], expected)


@pytest.mark.parametrize("size", [(5, 7), (6, 5)])
def test_skipping_covered_tiles_changes_only_the_edge_strips_to_the_covering_tiles_pixels(lively_vae, size):
    vae = _tiled(lively_vae, 24, 16)  # tiles of 3 latents every 2
    z = torch.randn(1, 16, 3, *size, generator=torch.Generator().manual_seed(11))
    calls = counting_decoder_calls(vae)
    with torch.no_grad():
        expected = vae.tiled_decode(z).sample
        diffusers_calls = len(calls)
        got = tiled_decode(vae, z).sample
        skipping_calls = len(calls) - diffusers_calls
        rows = tile_starts(size[0], 3, 2, skip_covered=True)
        columns = tile_starts(size[1], 3, 2, skip_covered=True)
        assert skipping_calls == len(rows) * len(columns) < diffusers_calls
        assert got.shape == expected.shape
        # up to the last kept tile's stride, diffusers' pixels bit for bit
        top, left = (rows[-1] + 2) * 8, (columns[-1] + 2) * 8
        assert torch.equal(got[..., :top, :left], expected[..., :top, :left])
        # beyond it, the covering tiles' own pixels: a strip diffusers blended with a thinner tile
        corner = vae.decoder(vae.post_quant_conv(z[..., rows[-1]:, columns[-1]:]))
        assert torch.equal(got[..., top:, left:], corner[..., 16:, 16:])
        strips_differ = not torch.equal(got[..., top:, :], expected[..., top:, :]) or \
            not torch.equal(got[..., :, left:], expected[..., :, left:])
    assert strips_differ == (len(rows) * len(columns) < diffusers_calls)


def test_skipping_covered_tiles_is_nearer_the_untiled_decode(lively_vae):
    """The edge strips decoded with a whole tile's context, not blended with a strip of their own."""
    vae = _tiled(lively_vae, 32, 24)  # tiles of 4 latents every 3: at 10 latents, a strip of 1
    z = torch.randn(1, 16, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        untiled = vae.decoder(vae.post_quant_conv(z))
        errors = {skip: (tiled_decode(vae, z, skip_covered=skip).sample - untiled).square().mean().item()
                  for skip in (False, True)}
    assert errors[True] < errors[False]


@pytest.mark.parametrize("skip_covered", [False, True])
@pytest.mark.parametrize("batch", [2, 3, 100])
def test_batches_of_tiles_give_the_same_pixels_in_fewer_decoder_calls(lively_vae, batch, skip_covered):
    vae = _tiled(lively_vae, 24, 16)
    z = torch.randn(1, 16, 3, 5, 7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = tiled_decode(vae, z, skip_covered=skip_covered).sample
        batches = counting_decoder_calls(vae)
        got = tiled_decode(vae, z, batch=batch, skip_covered=skip_covered).sample
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # diffusers: corners 0, 2, 4 down and 0, 2, 4, 6 across, tiles 3x3 (6 of them), 3x1 (2), 1x3 (3), 1x1 (1);
    # skipping: 0, 2 down and 0, 2, 4 across, all 3x3
    shapes = {False: (6, 2, 3, 1), True: (6,)}[skip_covered]
    assert sum(batches) == sum(shapes) and len(batches) == sum(-(-count // batch) for count in shapes)


def test_a_section_decoded_in_batched_tiles_by_the_fast_decoder_reusing_tiles(lively_vae):
    """The whole path a low-memory plan takes: temporal tiles, spatial tiles without the covered ones (here in
    batches), the fast decoder, the previous window's temporal tiles reused."""
    plain = _tiled(lively_vae, 24, 16)
    decode_in_spatial_tiles(plain)
    fast = _tiled(lively_vae, 24, 16)
    speed_up_decoder(fast)
    decode_in_spatial_tiles(fast, 4)
    tiles = reuse_decoded_tiles(fast)
    history = torch.randn(1, 16, 27, 4, 6, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for start in (9, 0):
            window = history[:, :, start:start + 18]
            torch.testing.assert_close(fast.decode(window).sample, plain.decode(window).sample,
                                       rtol=1e-4, atol=1e-4)
    assert (tiles.decoded, tiles.reused) == (6 + 4, 2)


def test_without_skipping_or_batches_diffusers_tiled_decode_stays_in_place(lively_vae):
    vae = _tiled(lively_vae, 16, 8)
    decode_in_spatial_tiles(vae, 1, skip_covered=False)
    assert "tiled_decode" not in vars(vae)
    decode_in_spatial_tiles(vae)
    assert "tiled_decode" in vars(vae)
