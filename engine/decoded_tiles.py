"""Reuse the decoder's output for the temporal tiles a section's decode shares with the last one.

After every section the demos decode the newest 2 x window latent frames, which diffusers cuts into temporal
tiles of 5 latent frames every 3. With the default window of 9, the half shared with the previous section's
window starts at a multiple of 3 in both decodes, so two of the six tiles (10 of the 28 latent frames the
decoder sees) are the very same decoder input as in the previous decode. The decoder is a pure function of
its input, so its output for them is taken from the last decode: the same pixels, bit for bit. (GroupNorm's
statistics span a whole tile, so nothing smaller than a tile can be reused.)

Only the last decode call's tiles are kept: their pixels in pinned RAM when the decoder runs on a GPU
(copied beside the decode; 6 x 40 MB at 640x608), their inputs where they are (1 MB each on the GPU).
Lookups compare a fingerprint, then the whole input.

Decodes in spatial tiles (the low-memory plans) pass straight through: there the decoder runs once per
256 px tile, and in the H200's low plan the reuse gained nothing overall (a job's decodes 17.1-18.4 s with
it, 16.8-19.2 s without: the middle sections faster, the first and last slower; 2026-12-04_worker_jobs_low_*
in benchmarks/results).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.stitch import to_host


@dataclass
class _Decoded:
    key: tuple
    tile: torch.Tensor
    pixels: torch.Tensor


def _fingerprint(tile: torch.Tensor) -> tuple:
    sums = torch.stack([tile.sum(dtype=torch.float32), tile.float().square().sum()])
    return (tuple(tile.shape), tile.dtype, tile.device, *sums.tolist())


def _keep(pixels: torch.Tensor) -> torch.Tensor:
    """A copy the caller's in-place blending cannot touch: in pinned RAM, copied beside the GPU's work (read
    only by a later copy back on the same stream)."""
    return to_host(pixels, non_blocking=True) if pixels.device.type == "cuda" else pixels.clone()


class DecodedTiles:
    """Stands in for the decoder's forward: decodes a tile, or returns the last decode call's pixels for it."""

    def __init__(self, forward, spatially_tiled=lambda: False):
        self.forward = forward
        self.spatially_tiled = spatially_tiled
        self.previous: list[_Decoded] = []
        self.current: list[_Decoded] = []
        self.reused = 0
        self.decoded = 0

    def start_call(self) -> None:
        """A new decode call: the tiles of the one before stay available, older ones go."""
        self.previous, self.current = self.current, []

    def forget(self) -> None:
        self.previous, self.current = [], []

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        if self.spatially_tiled():
            return self.forward(tile)
        key = _fingerprint(tile)
        for earlier in self.previous:
            if earlier.key == key and torch.equal(earlier.tile, tile):
                self.reused += 1
                self.current.append(earlier)
                if earlier.pixels.device == tile.device:
                    return earlier.pixels.clone()
                return earlier.pixels.to(tile.device, non_blocking=True)
        pixels = self.forward(tile)
        self.decoded += 1
        self.current.append(_Decoded(key, tile, _keep(pixels)))
        return pixels


def reuse_decoded_tiles(vae) -> DecodedTiles:
    """Put a `DecodedTiles` in front of the VAE's decoder (in place, once; after any compile or rewrite of
    the decoder's forward) and start a new call at each `vae.decode`. Returns it."""
    decoder = vae.decoder
    existing = getattr(decoder, "_framepack_decoded_tiles", None)
    if existing is not None:
        return existing
    tiles = DecodedTiles(decoder.forward, spatially_tiled=lambda: vae.use_tiling)
    decoder.forward = tiles
    decode = vae.decode

    def decode_reusing_tiles(*args, **kwargs):
        tiles.start_call()
        return decode(*args, **kwargs)

    vae.decode = decode_reusing_tiles
    decoder._framepack_decoded_tiles = tiles
    return tiles
