"""Section arithmetic and the packed-context layouts of both samplers (SPEC.md sections 3 to 5).

Pure functions over integers and index tensors: no model, no device.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

FPS = 30
CONTEXT_4X = 16
CONTEXT_2X = 2
CONTEXT_1X = 1
HISTORY_CONTEXT = CONTEXT_4X + CONTEXT_2X + CONTEXT_1X  # 19 latent frames of packed history


class Variant(str, Enum):
    ORIGINAL = "original"  # inverted anti-drifting: generated from the end of the video back to the start
    F1 = "f1"  # forward: generated in time order

    @classmethod
    def parse(cls, value: str | Variant) -> Variant:
        try:
            return cls(str(value.value if isinstance(value, Variant) else value).lower())
        except ValueError:
            names = ", ".join(v.value for v in cls)
            raise ValueError(f"Unknown variant {value!r}: choose one of {names}.") from None


def section_count(seconds: float, window: int = 9) -> int:
    """N = max(round(seconds*30/(4L)), 1), with Python's round (half to even)."""
    return max(round(seconds * FPS / (window * 4)), 1)


def frames_per_call(window: int = 9) -> int:
    return window * 4 - 3


def total_frames(sections: int, window: int = 9) -> int:
    """Both variants end with N*L+1 latents, which the causal VAE turns into 4NL+1 frames."""
    return 4 * sections * window + 1


def overlap_frames(window: int = 9) -> int:
    return window * 4 - 3


def inverted_paddings(sections: int) -> list[int]:
    """The padding (in windows) per section, in generation order; 0 marks the last section."""
    if sections <= 4:
        return list(range(sections - 1, -1, -1))
    return [3] + [2] * (sections - 3) + [1, 0]


def frames_after_each_section(variant: Variant, sections: int, window: int = 9) -> list[int]:
    """Decoded video length after each section, as the official demos report it."""
    lengths = []
    frames = 0
    for index in range(sections):
        first, last = index == 0, index == sections - 1
        if variant is Variant.F1:
            frames = 4 * (window + 1) - 3 if first else frames + 4 * window
        else:
            latents = window + (1 if last else 0)
            frames = 4 * latents - 3 if first else frames + 4 * latents
        lengths.append(frames)
    return lengths


@dataclass(frozen=True)
class SectionLayout:
    """Where one section's tokens sit on the time axis, and which history frames feed each input.

    Index tensors are 1-D, as diffusers' FramePack transformer wants them. History slices are
    (start, stop) ranges into the history tensor of that variant (see `history_inputs`).
    """

    noisy: torch.Tensor
    clean: torch.Tensor
    history_2x: torch.Tensor
    history_4x: torch.Tensor
    is_last: bool


def inverted_layout(padding: int, window: int = 9) -> SectionLayout:
    pad = padding * window
    splits = [1, pad, window, 1, CONTEXT_2X, CONTEXT_4X]
    pre, _blank, noisy, post, x2, x4 = torch.arange(sum(splits)).split(splits)
    return SectionLayout(
        noisy=noisy, clean=torch.cat([pre, post]), history_2x=x2, history_4x=x4, is_last=padding == 0
    )


def f1_layout(window: int = 9) -> SectionLayout:
    splits = [1, CONTEXT_4X, CONTEXT_2X, CONTEXT_1X, window]
    start, x4, x2, x1, noisy = torch.arange(sum(splits)).split(splits)
    return SectionLayout(noisy=noisy, clean=torch.cat([start, x1]), history_2x=x2, history_4x=x4, is_last=False)


def section_layouts(variant: Variant, sections: int, window: int = 9) -> list[SectionLayout]:
    """The layout of every section in generation order."""
    if variant is Variant.F1:
        layout = f1_layout(window)
        return [
            SectionLayout(layout.noisy, layout.clean, layout.history_2x, layout.history_4x, i == sections - 1)
            for i in range(sections)
        ]
    return [inverted_layout(p, window) for p in inverted_paddings(sections)]


def initial_history(variant: Variant, start_latent: torch.Tensor) -> torch.Tensor:
    """History before the first section: 19 zero frames (F1 appends the start latent after them)."""
    _, channels, _, height, width = start_latent.shape
    zeros = torch.zeros((1, channels, HISTORY_CONTEXT, height, width), dtype=torch.float32)
    if variant is Variant.F1:
        return torch.cat([zeros, start_latent.float().cpu()], dim=2)
    return zeros


def history_inputs(
    variant: Variant, history: torch.Tensor, start_latent: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean, 2x, 4x) context latents for the next section, cut from the history."""
    start = start_latent.to(history)
    if variant is Variant.F1:
        x4, x2, x1 = history[:, :, -HISTORY_CONTEXT:].split([CONTEXT_4X, CONTEXT_2X, CONTEXT_1X], dim=2)
        return torch.cat([start, x1], dim=2), x2, x4
    post, x2, x4 = history[:, :, :HISTORY_CONTEXT].split([CONTEXT_1X, CONTEXT_2X, CONTEXT_4X], dim=2)
    return torch.cat([start, post], dim=2), x2, x4


def extend_history(
    variant: Variant, history: torch.Tensor, generated: torch.Tensor, start_latent: torch.Tensor, is_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add a section's latents to the history; returns (history, the latents added)."""
    generated = generated.to(history)
    if variant is Variant.F1:
        return torch.cat([history, generated], dim=2), generated
    if is_last:
        generated = torch.cat([start_latent.to(history), generated], dim=2)
    return torch.cat([generated, history], dim=2), generated


def trim_history(variant: Variant, history: torch.Tensor, keep: int) -> torch.Tensor:
    """Drop history that no later section or decode can reach, so memory stays flat with length."""
    if history.shape[2] <= keep:
        return history
    return history[:, :, -keep:] if variant is Variant.F1 else history[:, :, :keep]
