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

Where the VAE decodes in spatial tiles (the low-memory plans), diffusers cuts each temporal tile into them
(16 of 256 px at 640x608); the reuse is then of a whole temporal tile's blended pixels, looked up once per
temporal tile. (Looked up per spatial tile, in 2026-12-04_worker_jobs_low_reuse_h200.jsonl, it gained nothing
overall: 27-63 fingerprint syncs a decode.)
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
    """Decodes a temporal tile, through the decoder or through diffusers' decode in spatial tiles, or returns
    the last decode call's pixels for it."""

    def __init__(self):
        self.previous: list[_Decoded] = []
        self.current: list[_Decoded] = []
        self.reused = 0
        self.decoded = 0
        self.in_spatial_tiles = False  # the decoder is being called by tiled_decode: its tiles pass through

    def start_call(self) -> None:
        """A new decode call: the tiles of the one before stay available, older ones go."""
        self.previous, self.current = self.current, []

    def forget(self) -> None:
        self.previous, self.current = [], []

    def decode(self, tile: torch.Tensor, forward, kind: str) -> torch.Tensor:
        key = (kind, *_fingerprint(tile))
        for earlier in self.previous:
            if earlier.key == key and torch.equal(earlier.tile, tile):
                self.reused += 1
                self.current.append(earlier)
                if earlier.pixels.device == tile.device:
                    return earlier.pixels.clone()
                return earlier.pixels.to(tile.device, non_blocking=True)
        pixels = forward(tile)
        self.decoded += 1
        # a copy of the input: a spatially tiled decode's is a view of its caller's latents (1 MB at 640x608)
        self.current.append(_Decoded(key, tile.clone(), _keep(pixels)))
        return pixels


def reuse_decoded_tiles(vae) -> DecodedTiles:
    """Put a `DecodedTiles` in front of the VAE's decoder and its spatially tiled decode (in place, once;
    after any compile or rewrite of either) and start a new call at each `vae.decode`. Returns it."""
    from diffusers.models.autoencoders.vae import DecoderOutput

    decoder = vae.decoder
    existing = getattr(decoder, "_framepack_decoded_tiles", None)
    if existing is not None:
        return existing
    tiles = DecodedTiles()
    forward, tiled_decode, decode = decoder.forward, vae.tiled_decode, vae.decode

    def decoder_forward(tile):
        return forward(tile) if tiles.in_spatial_tiles else tiles.decode(tile, forward, "decoder")

    def in_spatial_tiles(z):
        tiles.in_spatial_tiles = True
        try:
            return tiled_decode(z, return_dict=True).sample
        finally:
            tiles.in_spatial_tiles = False

    def tiled_decode_reusing(z, return_dict=True):
        sample = tiles.decode(z, in_spatial_tiles, "spatial tiles")
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def decode_reusing_tiles(*args, **kwargs):
        tiles.start_call()
        return decode(*args, **kwargs)

    decoder.forward, vae.tiled_decode, vae.decode = decoder_forward, tiled_decode_reusing, decode_reusing_tiles
    decoder._framepack_decoded_tiles = tiles
    return tiles
