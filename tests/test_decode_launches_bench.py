"""benchmarks/decode_launches.py's counts on the tiny VAE, so the CPU benchmark cannot rot unseen: the decoder
calls of a 640x608 temporal tile in 256 px tiles, diffusers' against engine/spatial_tiles.py's, and a decoder call's
launches with and without the Triton kernels."""

from __future__ import annotations

import pytest

from benchmarks.decode_launches import decoder_call, section


def test_a_temporal_tile_in_256_px_tiles_takes_fewer_decoder_calls_and_launches(lively_vae):
    # 4 latent frames: one temporal tile (a section's 18 are 6 of them, each tiled alike)
    diffusers = section(lively_vae, ours=False, frames=4, latent_size=(76, 80))
    ours = section(lively_vae, ours=True, frames=4, latent_size=(76, 80))
    assert (diffusers["decoder_calls"], ours["decoder_calls"]) == (16, 9)
    assert ours["launches"] < diffusers["launches"] / 2


def test_a_decoder_call_counts_torch_ops_and_triton_launches_apart(lively_vae):
    pytest.importorskip("triton")
    with_kernels, without = decoder_call(lively_vae, kernels=True), decoder_call(lively_vae, kernels=False)
    assert with_kernels["by_kernel"]["_merge_group"] == with_kernels["by_kernel"]["_plane_partials"] > 0
    assert without["triton_launches"] == 0
    assert with_kernels["by_op"]["convolution"] == without["by_op"]["convolution"] > 0
    assert with_kernels["torch_ops"] < without["torch_ops"]
