"""What a finished video keeps so that the F1 sampler can continue it later: `continuation.pt` in its work folder.

F1 reads a fixed-size packed context (SPEC.md section 5): the last 1 + 2 + 16 latents in time order, the start
latent and the picture's SigLIP tokens. So a few MB carry a video of any length forward, and no frame is
VAE-encoded again. Besides those it keeps the noise generator (the same seed then continues the same noise
stream), the video's segment files in time order, and, where the video's last frames are one plain decode,
how many of the last latents that decode took (the overlap blend then matches a longer render exactly).

Which latents are the video's last depends on the variant:

- F1 renders and extensions generate in time order: the sampler's trimmed history is the video's end, with the
  zeros a short video's context still holds, exactly as a longer render would carry on from it.
- The original sampler generates the end first, so its history is the video's *beginning*; its last latents
  are rebuilt from the per-section `latents_NNNN.pt` files (time order: start, section N-1, ..., section 0),
  and its last frames are a blend of two decodes, so the continuation blends into the frames as written.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine import sections as sec

FILE_NAME = "continuation.pt"
VERSION = 1


@dataclass
class Continuation:
    history: torch.Tensor  # (1, 16, T, h, w) fp32: the last latents in time order, zero padded in front like F1's
    start_latent: torch.Tensor  # (1, 16, 1, h, w): the clean frame at index 0 of every F1 section
    image_tokens: torch.Tensor  # (1, 729, 1152) SigLIP tokens of the start picture
    seed: int | None  # the noise stream `generator_state` belongs to; None: there is none to continue
    generator_state: torch.Tensor | None
    segments: list[tuple[str, int]]  # (file name in the work folder, frames), in time order
    edge_count: int | None  # the last latents of `history` whose decode ends as the video does, or None
    width: int
    height: int
    window: int
    prompt: str

    @property
    def frames(self) -> int:
        return sum(frames for _, frames in self.segments)


def history_length(window: int) -> int:
    """How many latents F1 reads (19) or one decode window takes (2L + 1), whichever is more."""
    return max(sec.HISTORY_CONTEXT, 2 * window + 1)


def save(work_dir: Path, continuation: Continuation) -> Path:
    path = Path(work_dir) / FILE_NAME
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"version": VERSION, **asdict(continuation)}, tmp)
    os.replace(tmp, path)
    return path


def load(work_dir: Path) -> Continuation | None:
    """The continuation kept in `work_dir`, or None when there is none (or one of another version)."""
    path = Path(work_dir) / FILE_NAME
    if not path.is_file():
        return None
    data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, dict) or data.pop("version", None) != VERSION:
        return None
    data["segments"] = [(str(name), int(frames)) for name, frames in data["segments"]]
    return Continuation(**data)


def time_ordered_tail(variant: sec.Variant, history: torch.Tensor, section_latents: list[torch.Tensor],
                      start_latent: torch.Tensor, window: int) -> torch.Tensor:
    """The last `history_length` latents of a finished render in time order (zero padded in front).

    `history` is the sampler's history after the last section; `section_latents` each section's generated
    latents in generation order (only the original variant needs them).
    """
    keep = history_length(window)
    if variant is sec.Variant.F1:
        return history[:, :, -keep:].clone()
    ordered = torch.cat([start_latent.float(), *reversed([g.float() for g in section_latents])], dim=2)
    tail = ordered[:, :, -keep:]
    pad = torch.zeros((*tail.shape[:2], keep - tail.shape[2], *tail.shape[3:]), dtype=tail.dtype)
    return torch.cat([pad, tail], dim=2)


def f1_edge_count(sections: int, window: int) -> int:
    """How many latents an F1 render decoded last (engine/stitch.py chunk_latents): its final
    `OverlapStitcher.finish` edge is the end of that decode."""
    return window + 1 if sections == 1 else 2 * window
