"""Directing the motion: timed prompts, an end frame and keyframes, mapped onto a job's sections.

Pure functions over text, seconds and section indices; no model. Times are in the video's own order
(0 s is the start picture); the sampler works in generation order, which for the original (inverted)
variant runs from the end of the video back to its start, so each mapping ends in `generation_index`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from engine import sections as sec
from storage.inputs import InputError

# FramePack-Studio's syntax: `[3s: text]`, or `[2s-4s: text]` with an end.
_TIMED = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*s\s*(?:-\s*(\d+(?:\.\d+)?)\s*s\s*)?:([^\]]*)\]")
# Studio blends the text embeddings linearly over `blend_sections`, weight (k+1)/blend for the k-th
# section of the new prompt. Two gives one half-and-half section at each change: a short blend.
BLEND_SECTIONS = 2
ORIGINAL_ONLY = ("{what} needs the original variant: F1 generates forward from the start picture, and its "
                 "context has no place for a picture that comes later in the video.")


@dataclass(frozen=True)
class TimedPrompt:
    start: float  # seconds
    end: float | None  # seconds; None: until the next prompt or the end of the video
    text: str


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


def section_seconds(window: int) -> float:
    """Each section adds 4*window frames (Studio divides by 4*window-3, which drifts 0.1 s a section)."""
    return 4 * window / sec.FPS


def generation_index(time_index: int, sections: int, variant: sec.Variant) -> int:
    return sections - 1 - time_index if variant is sec.Variant.ORIGINAL else time_index


def parse_timed_prompt(prompt: str, seconds: float) -> list[TimedPrompt] | None:
    """The prompt's `[Ns: text]` parts in time order, or None for a plain prompt (no such part)."""
    matches = list(_TIMED.finditer(prompt))
    if not matches:
        return None
    outside = _TIMED.sub("", prompt).strip()
    if outside:
        raise InputError(f"With timed prompts, put all the text inside [time: text] brackets; this is outside "
                         f"them: {outside[:60]!r}.")
    timed = [TimedPrompt(float(m[1]), float(m[2]) if m[2] else None, m[3].strip()) for m in matches]
    for part in timed:
        if not part.text:
            raise InputError(f"The prompt at {part.start:g}s is empty.")
        if part.start >= seconds:
            raise InputError(f"The prompt at {part.start:g}s starts after the video ends ({seconds:g} s).")
        if part.end is not None and not part.start < part.end <= seconds:
            raise InputError(f"The prompt [{part.start:g}s-{part.end:g}s] must end after it starts and by the "
                             f"end of the video ({seconds:g} s).")
    for before, after in zip(timed, timed[1:], strict=False):
        if after.start <= before.start:
            raise InputError(f"Timed prompts must be in time order: {after.start:g}s comes after "
                             f"{before.start:g}s.")
        if before.end is not None and before.end > after.start:
            raise InputError(f"The prompts at {before.start:g}s and {after.start:g}s overlap.")
    return timed


def section_prompts(timed: list[TimedPrompt], sections: int, window: int,
                    variant: sec.Variant) -> list[SectionPrompt]:
    """Each section's prompt in generation order. A prompt starts at the section boundary nearest its
    time (Studio snaps the same way) and lasts until the next; the first also covers the time before it."""
    length = section_seconds(window)
    starts = [round(part.start / length) for part in timed]
    for part, start, before in zip(timed[1:], starts[1:], starts, strict=False):
        if start >= sections:
            raise InputError(f"The prompt at {part.start:g}s is too close to the end: the last section starts "
                             f"at {(sections - 1) * length:g}s.")
        if start <= before:
            raise InputError(f"The prompt at {part.start:g}s is too close to the one before it: each needs a "
                             f"section of its own ({length:g} s).")
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
    covered = {}
    for time in times:
        if not 0 < time < seconds:
            raise InputError(f"A keyframe at {time:g}s is outside the video: keyframes go between 0 and "
                             f"{seconds:g} s (0 s is the start picture).")
        index = min(int(time / section_seconds(window)), sections - 1)
        if index in covered:
            raise InputError(f"The keyframes at {covered[index]:g}s and {time:g}s fall in the same section "
                             f"({section_seconds(window):g} s long); one keyframe per section.")
        covered[index] = time
    return [generation_index(covered_index, sections, variant) for covered_index in covered]


def keyframe_for(keyed: dict, index: int):
    """FramePack-eichi's rule: a section takes the keyframe of the nearest keyed section at or after it in
    generation order (so the later part of the video heads for the keyframe), else None (the start)."""
    later = [key for key in keyed if key >= index]
    return keyed[min(later)] if later else None
