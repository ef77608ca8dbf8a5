"""diffusers' decode in spatial tiles without the edge tiles an earlier tile already covers, and optionally with
the tiles of one shape decoded together as a batch.

Why: diffusers starts a tile every stride up to the latent's edge, so where the tile before the last already
reaches the edge, the last one is a thin strip that only re-decodes what it covers (in 256 px tiles every 192,
a 640x608 section's temporal tile takes 16 decoder calls, 7 of them strips of 4 or 8 latent rows or columns,
each with 32-64 px of context). Skipping them, each row and column's last tile is kept whole: 9 calls, the
same tiles and blends as diffusers everywhere but the edge strips, whose pixels come from the tile that covers
them with its full context instead of a blend with the strip. On the H200 a call cost about 14 ms whatever its
size (a fit of the decodes in 256 and 384 px tiles to a time per call plus a time per latent pixel), so a strip
cost about half a full tile: mostly kernel launches, about 880 a call (benchmarks/decode_launches.py,
notes/issue21_speed.md).

The blends are diffusers' arithmetic in a few kernels each, where diffusers' loop launches four a blended row (in
its 256 px tiles at 640x608, 8448 rows a section's decode, about 370 launches a decoder call).

Tiles of one shape can also go through the decoder together (at most `batch` of them); a batch of b tiles
needs about b tiles' activations, so the plans decode one at a time until a GPU says batches gain and fit
(`benchmarks/vae_decode.py --tile-batches`).
"""

from __future__ import annotations

import functools

import torch


def tile_starts(length: int, tile: int, stride: int, skip_covered: bool) -> list[int]:
    """Where tiles start along one latent axis: diffusers' every `stride` up to `length`, or, skipping covered
    tiles, up to the first tile that reaches the edge."""
    if not skip_covered:
        return list(range(0, length, stride))
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(starts[-1] + stride)
    return starts


@functools.cache
def _ramps(extent: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights diffusers' blends give the earlier tile and the later one at each of `extent` steps: its
    Python floats 1 - y / extent and y / extent, as the fp32 its kernels compute with (made on the device: a copy
    from pageable memory would wait for the GPU's queue)."""
    later = torch.arange(extent, dtype=torch.float64, device=device) / extent
    return (1 - later).float(), later.float()


def blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """diffusers' blend_v (dim -2), blend_h (-1) or blend_t (-3), bit for bit for fp32, fp16 and bf16 tiles, in a
    few kernels where it takes four per row: b's first `extent` rows along `dim` become a ramp from a's last rows
    to b's own, in place."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent <= 0:
        return b
    shape = [1] * b.dim()
    shape[dim] = extent
    before, after = (ramp.view(shape) for ramp in _ramps(extent, b.device))
    head = b.narrow(dim, 0, extent)
    # each product rounded to b's dtype before the sum, as a half tensor times a Python float is
    head.copy_((a.narrow(dim, a.shape[dim] - extent, extent) * before).to(b.dtype) + (head * after).to(b.dtype))
    return b


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


def tiled_decode(vae, z: torch.Tensor, return_dict: bool = True, batch: int = 1, skip_covered: bool = True):
    """What `vae.tiled_decode(z)` returns (diffusers' HunyuanVideo VAE), without the covered edge tiles unless
    `skip_covered` is off, the tiles decoded `batch` of one shape at a time."""
    from diffusers.models.autoencoders.vae import DecoderOutput

    ratio = vae.spatial_compression_ratio
    tile = (vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio)
    stride = (vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio)
    extents = (vae.tile_sample_min_height - vae.tile_sample_stride_height,
               vae.tile_sample_min_width - vae.tile_sample_stride_width)
    starts = [tile_starts(z.shape[axis], tile[k], stride[k], skip_covered) for k, axis in enumerate((-2, -1))]
    grid = [[(i, j) for j in starts[1]] for i in starts[0]]
    decoded = _decode_in_batches(vae, z, [corner for row in grid for corner in row], tile, batch)
    rows = [[decoded[corner] for corner in row] for row in grid]
    # diffusers' blend, in its order: each tile takes the above and the left tiles' edges, already blended, in
    # place; each keeps a stride of pixels, the last of a row or column all of its own (the same where no tile
    # was skipped: diffusers' last tile is then no wider than a stride)
    out_rows = []
    for i, row in enumerate(rows):
        kept = []
        for j, pixels in enumerate(row):
            if i > 0:
                pixels = blend(rows[i - 1][j], pixels, extents[0], -2)
            if j > 0:
                pixels = blend(row[j - 1], pixels, extents[1], -1)
            height = None if i == len(rows) - 1 else vae.tile_sample_stride_height
            width = None if j == len(row) - 1 else vae.tile_sample_stride_width
            kept.append(pixels[..., :height, :width])
        out_rows.append(torch.cat(kept, dim=-1))
    sample = torch.cat(out_rows, dim=3)[..., :z.shape[-2] * ratio, :z.shape[-1] * ratio]
    return DecoderOutput(sample=sample) if return_dict else (sample,)


def decode_in_spatial_tiles(vae, batch: int = 1, skip_covered: bool = True) -> None:
    """Make the VAE's spatially tiled decode skip covered edge tiles and decode up to `batch` tiles of one
    shape at once (in place; before `engine/decoded_tiles.reuse_decoded_tiles`, which wraps it)."""
    if batch > 1 or skip_covered:
        vae.tiled_decode = lambda z, return_dict=True: tiled_decode(vae, z, return_dict, batch, skip_covered)
