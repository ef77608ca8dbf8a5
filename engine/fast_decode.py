"""Faster ways to run diffusers' HunyuanVideo VAE decode that give the same pixels.

diffusers decodes a window frame-wise: temporal tiles of 5 latent frames every 3, each through the whole
decoder, blended over 4 frames. The official demos decode that way, so the tiles stay; what can change is
how each tile's work reaches the GPU:

- `batched_temporal_decode`: the tiles are independent passes of the decoder, so tiles of the same length
  go through it together as one batch (fewer, larger kernels; the same blend after).
- `copy_padding`: the causal convolutions' replicate padding written as one copy of the tensor into a
  bigger one plus its edges, instead of torch's general replication-pad kernel.

Both are pure rearrangements of the same arithmetic; tests compare their pixels with diffusers' decode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _replicate_pad_by_copy(x: torch.Tensor, pad: tuple[int, ...]) -> torch.Tensor:
    """F.pad(x, pad, mode="replicate") for a 5-D tensor, built from copies."""
    left, right, top, bottom, front, back = pad
    n, c, t, h, w = x.shape
    out = x.new_empty((n, c, t + front + back, h + top + bottom, w + left + right))
    inner = out[:, :, front:front + t]
    inner[:, :, :, top:top + h, left:left + w].copy_(x)
    if left:
        inner[:, :, :, top:top + h, :left].copy_(x[:, :, :, :, :1].expand(-1, -1, -1, -1, left))
    if right:
        inner[:, :, :, top:top + h, left + w:].copy_(x[:, :, :, :, -1:].expand(-1, -1, -1, -1, right))
    if top:  # whole rows, corners included, from the first padded row
        inner[:, :, :, :top].copy_(inner[:, :, :, top:top + 1].expand(-1, -1, -1, top, -1))
    if bottom:
        inner[:, :, :, top + h:].copy_(inner[:, :, :, top + h - 1:top + h].expand(-1, -1, -1, bottom, -1))
    if front:
        out[:, :, :front].copy_(inner[:, :, :1].expand(-1, -1, front, -1, -1))
    if back:
        out[:, :, front + t:].copy_(inner[:, :, -1:].expand(-1, -1, back, -1, -1))
    return out


def _causal_conv_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if self.pad_mode == "replicate":
        return self.conv(_replicate_pad_by_copy(hidden_states, self.time_causal_padding))
    return self.conv(F.pad(hidden_states, self.time_causal_padding, mode=self.pad_mode))


def copy_padding(vae) -> int:
    """Every causal convolution of `vae` pads by copying; returns how many were changed."""
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d

    changed = 0
    for module in vae.modules():
        if isinstance(module, HunyuanVideoCausalConv3d):
            module.forward = _causal_conv_forward.__get__(module)
            changed += 1
    return changed


def temporal_tiles(vae, frames: int) -> list[slice]:
    """The latent frames of each temporal tile diffusers decodes a window of `frames` in."""
    length = vae.tile_sample_min_num_frames // vae.temporal_compression_ratio + 1
    stride = vae.tile_sample_stride_num_frames // vae.temporal_compression_ratio
    return [slice(start, min(start + length, frames)) for start in range(0, frames, stride)]


@torch.no_grad()
def batched_temporal_decode(vae, z: torch.Tensor, max_batch: int = 8) -> torch.Tensor:
    """diffusers' frame-wise decode of `z` (1, C, T, h, w), unscaled, with same-length tiles batched
    (at most `max_batch` at a time): (1, 3, 4T - 3, H, W). Untiled in space only."""
    if z.shape[0] != 1:
        raise ValueError("One video at a time.")
    tiles = temporal_tiles(vae, z.shape[2])
    by_length: dict[int, list[int]] = {}
    for index, frames in enumerate(tiles):
        by_length.setdefault(frames.stop - frames.start, []).append(index)
    decoded: list[torch.Tensor | None] = [None] * len(tiles)
    for indices in by_length.values():
        for first in range(0, len(indices), max_batch):
            group = indices[first:first + max_batch]
            batch = torch.cat([z[:, :, tiles[i]] for i in group])
            out = vae.decoder(vae.post_quant_conv(batch))
            for row, i in enumerate(group):
                decoded[i] = out[row:row + 1]
    return _blend_temporal_tiles(vae, decoded, z.shape[2])


def _blend_temporal_tiles(vae, decoded: list[torch.Tensor], frames: int) -> torch.Tensor:
    """diffusers' join of the decoded temporal tiles: drop each later tile's first frame, blend, keep."""
    stride = vae.tile_sample_stride_num_frames
    blend = vae.tile_sample_min_num_frames - stride
    kept = []
    for index, tile in enumerate(decoded):
        if index == 0:
            kept.append(tile[:, :, :stride + 1])
            continue
        tile = vae.blend_t(decoded[index - 1][:, :, 1:] if index > 1 else decoded[index - 1], tile[:, :, 1:], blend)
        kept.append(tile[:, :, :stride])
    return torch.cat(kept, dim=2)[:, :, :(frames - 1) * vae.temporal_compression_ratio + 1]
