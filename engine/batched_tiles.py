"""diffusers' decode in spatial tiles, with the tiles of one shape decoded together as a batch.

Why: in 256 px tiles every 192, diffusers decodes a 640x608 section's temporal tile in 16 decoder calls, one
per tile, 7 of them thin edge tiles (4 or 8 latent rows or columns). Tiles of one shape go through the decoder
together (at most `batch` of them): the same tiles and the same blend, so the pixels are diffusers' up to the
convolutions' rounding in a batch. A batch of b tiles needs about b tiles' activations.

Not on the job path until measured: whether batches speed up the low plans' 256 px decode on a GPU, and for
how much memory, is what `benchmarks/vae_decode.py --tile-batches` times (notes/issue21_speed.md)."""

from __future__ import annotations

import torch


def _corners(z: torch.Tensor, tile: tuple[int, int], stride: tuple[int, int]) -> list[list[tuple[int, int]]]:
    """The top-left latent corner of each tile, row by row, as diffusers' tiled_decode walks them."""
    height, width = z.shape[-2:]
    return [[(i, j) for j in range(0, width, stride[1])] for i in range(0, height, stride[0])]


def _decode_in_batches(vae, z: torch.Tensor, corners: list[tuple[int, int]], tile: tuple[int, int],
                       batch: int) -> dict[tuple[int, int], torch.Tensor]:
    """Each corner's decoded tile, tiles of one shape decoded `batch` at a time."""
    by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for i, j in corners:
        by_shape.setdefault(tuple(z[..., i:i + tile[0], j:j + tile[1]].shape), []).append((i, j))
    decoded = {}
    for group in by_shape.values():
        for start in range(0, len(group), batch):
            part = group[start:start + batch]
            latents = torch.cat([z[..., i:i + tile[0], j:j + tile[1]] for i, j in part])
            pixels = vae.decoder(vae.post_quant_conv(latents))
            decoded.update(zip(part, pixels.split(z.shape[0]), strict=True))
    return decoded


def tiled_decode_in_batches(vae, z: torch.Tensor, return_dict: bool = True, batch: int = 1):
    """What `vae.tiled_decode(z)` returns (diffusers' HunyuanVideo VAE), the tiles decoded in batches."""
    from diffusers.models.autoencoders.vae import DecoderOutput

    ratio = vae.spatial_compression_ratio
    tile = (vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio)
    stride = (vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio)
    blend = (vae.tile_sample_min_height - vae.tile_sample_stride_height,
             vae.tile_sample_min_width - vae.tile_sample_stride_width)
    grid = _corners(z, tile, stride)
    decoded = _decode_in_batches(vae, z, [corner for row in grid for corner in row], tile, batch)
    rows = [[decoded[corner] for corner in row] for row in grid]
    # diffusers' blend, in its order: each tile takes the above and the left tiles' edges, already blended, in place
    out_rows = []
    for i, row in enumerate(rows):
        kept = []
        for j, pixels in enumerate(row):
            if i > 0:
                pixels = vae.blend_v(rows[i - 1][j], pixels, blend[0])
            if j > 0:
                pixels = vae.blend_h(row[j - 1], pixels, blend[1])
            kept.append(pixels[..., :vae.tile_sample_stride_height, :vae.tile_sample_stride_width])
        out_rows.append(torch.cat(kept, dim=-1))
    sample = torch.cat(out_rows, dim=3)[..., :z.shape[-2] * ratio, :z.shape[-1] * ratio]
    return DecoderOutput(sample=sample) if return_dict else (sample,)


def decode_tiles_in_batches(vae, batch: int) -> None:
    """Make the VAE's spatially tiled decode decode up to `batch` tiles of one shape at once (in place)."""
    if batch > 1:
        vae.tiled_decode = lambda z, return_dict=True: tiled_decode_in_batches(vae, z, return_dict, batch)
