"""VAE decoding per section and the overlap blend that joins the decoded chunks (SPEC.md section 7).

The official demos keep the whole decoded video in RAM and re-join it after every section. Here each
chunk is blended with its neighbour's edge as soon as it is decoded, and the finished frames are
handed on at once, so memory holds one chunk and one edge whatever the video's length. The frames
are the same as the demos' `soft_append` chain, in fp16 on the CPU.
"""

from __future__ import annotations

import torch

from engine.sections import Variant


@torch.no_grad()
def vae_decode(latents: torch.Tensor, vae) -> torch.Tensor:
    """(1, 16, T, h, w) latents -> (3, 4T-3, H, W) fp16 pixels on the CPU, about [-1, 1]."""
    z = latents.float() / vae.config.scaling_factor
    pixels = vae.decode(z.to(device=vae.device, dtype=vae.dtype)).sample
    return to_host(pixels[0].to(torch.float16))


def to_host(tensor: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    """A GPU tensor copied to the CPU through page-locked memory: a section's pixels (160 MB at 640x608)
    took 108 ms into pageable memory on an H200, the GPU idle meanwhile. torch caches the pinned blocks.
    `non_blocking`: the copy is queued behind the GPU's work, and whatever reads it must wait for that."""
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=non_blocking)


def chunk_latents(
    variant: Variant, history: torch.Tensor, section: int, sections: int, window: int
) -> torch.Tensor:
    """The latents the demos decode after section `section` (0-based, generation order)."""
    if variant is Variant.F1:
        count = window + 1 if section == 0 else 2 * window
        return history[:, :, -count:]
    # The last section carries the start latent in front of its window.
    count = (window if section == 0 else 2 * window) + (1 if section == sections - 1 else 0)
    return history[:, :, :count]


def _blend(earlier_edge: torch.Tensor, later_edge: torch.Tensor) -> torch.Tensor:
    overlap = earlier_edge.shape[1]
    w = torch.linspace(1, 0, overlap, dtype=earlier_edge.dtype).view(1, -1, 1, 1)
    return w * earlier_edge + (1 - w) * later_edge


class OverlapStitcher:
    """Joins chunks that overlap by `overlap` frames, fed in generation order.

    `reverse=True` is for the inverted sampler, whose chunks arrive latest-in-time first. `add` and
    `finish` return a block of finished frames (in time order within the block) and its time rank;
    sorting blocks by rank gives the whole video.
    """

    def __init__(self, overlap: int, reverse: bool, sections: int):
        self.overlap = overlap
        self.reverse = reverse
        self.sections = sections
        self.added = 0
        self.edge: torch.Tensor | None = None

    def _rank(self) -> int:
        return self.sections - self.added if self.reverse else self.added

    def restore(self, previous_chunk: torch.Tensor, added: int) -> None:
        """Resume after `added` chunks, from a fresh decode of the last one."""
        k = self.overlap
        self.edge = previous_chunk[:, :k] if self.reverse else previous_chunk[:, -k:]
        self.added = added

    def add(self, chunk: torch.Tensor) -> tuple[int, torch.Tensor]:
        k = self.overlap
        if chunk.shape[1] < k:
            raise ValueError(f"A chunk of {chunk.shape[1]} frames cannot overlap by {k}.")
        rank = self._rank()
        if self.reverse:
            if self.edge is None:
                block = chunk[:, k:]
            else:
                block = torch.cat([chunk[:, k:-k], _blend(chunk[:, -k:], self.edge)], dim=1)
            self.edge = chunk[:, :k]
        else:
            if self.edge is None:
                block = chunk[:, :-k]
            else:
                block = torch.cat([_blend(self.edge, chunk[:, :k]), chunk[:, k:-k]], dim=1)
            self.edge = chunk[:, -k:]
        self.added += 1
        return rank, block

    def finish(self) -> tuple[int, torch.Tensor]:
        if self.edge is None:
            raise RuntimeError("Nothing was added.")
        return self._rank(), self.edge
