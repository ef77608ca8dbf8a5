"""Directing the motion: timed prompts, an end frame and keyframes, mapped onto a job's sections.

Pure functions over text, seconds and section indices; no model. Times are in the video's own order
(0 s is the start picture); the sampler works in generation order, which for the original (inverted)
variant runs from the end of the video back to its start, so each mapping ends in `generation_index`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine import sections as sec
from storage.direction_rules import (  # the rules live in storage, so the chat checks them too
    ORIGINAL_ONLY,
    TimedPrompt,
    keyframe_time_sections,
    parse_timed_prompt,
    prompt_start_sections,
    section_seconds,
)
from storage.inputs import InputError

__all__ = ["ORIGINAL_ONLY", "BLEND_SECTIONS", "TimedPrompt", "SectionPrompt", "Guides", "parse_timed_prompt",
           "section_seconds", "generation_index", "section_prompts", "keyframe_sections", "keyframe_for"]

# Studio blends the text embeddings linearly over `blend_sections`, weight (k+1)/blend for the k-th
# section of the new prompt. Two gives one half-and-half section at each change: a short blend.
BLEND_SECTIONS = 2


@dataclass(frozen=True)
class SectionPrompt:
    """The prompt of one section: `text`, mixed with `previous` where `weight` < 1 (a change's blend)."""

    text: str
    previous: str | None = None
    weight: float = 1.0


@dataclass
class Guides:
    """What steers a job besides its start picture and prompt, ready for the encoders."""

    end: np.ndarray | None = None  # the end picture, cropped to the start's bucket
    keyframes: dict[int, np.ndarray] = field(default_factory=dict)  # generation index -> cropped picture
    prompts: list[SectionPrompt] | None = None  # generation order; None: the plain prompt throughout

    @property
    def empty(self) -> bool:
        return self.end is None and not self.keyframes and self.prompts is None


def generation_index(time_index: int, sections: int, variant: sec.Variant) -> int:
    return sections - 1 - time_index if variant is sec.Variant.ORIGINAL else time_index


def section_prompts(timed: list[TimedPrompt], sections: int, window: int,
                    variant: sec.Variant) -> list[SectionPrompt]:
    """Each section's prompt in generation order. A prompt starts at the section boundary nearest its
    time (Studio snaps the same way) and lasts until the next; the first also covers the time before it."""
    starts = prompt_start_sections(timed, sections, window)
    in_time = []
    for index in range(sections):
        current = max(i for i, start in enumerate(starts) if start <= index or i == 0)
        into = index - max(starts[current], 0)
        if current > 0 and into < BLEND_SECTIONS - 1:
            in_time.append(SectionPrompt(timed[current].text, timed[current - 1].text,
                                         (into + 1) / BLEND_SECTIONS))
        else:
            in_time.append(SectionPrompt(timed[current].text))
    return [in_time[generation_index(g, sections, variant)] for g in range(sections)]


def keyframe_sections(times: list[float], seconds: float, window: int, variant: sec.Variant) -> list[int]:
    """The generation index of the section covering each keyframe time, or an InputError."""
    if not times:
        return []
    if variant is not sec.Variant.ORIGINAL:
        raise InputError(ORIGINAL_ONLY.format(what="Keyframes"))
    sections = sec.section_count(seconds, window)
    covered = keyframe_time_sections(times, seconds, window)
    return [generation_index(covered_index, sections, variant) for covered_index in covered]


def keyframe_for(keyed: dict, index: int):
    """FramePack-eichi's rule: a section takes the keyframe of the nearest keyed section at or after it in
    generation order (so the later part of the video heads for the keyframe), else None (the start)."""
    later = [key for key in keyed if key >= index]
    return keyed[min(later)] if later else None
