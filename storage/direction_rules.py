"""The rules of directing a job (timed prompts, keyframe times, what needs which variant), as plain
arithmetic on text and seconds: the chat frontends refuse a bad request with them before anything is
stored, and the engine maps the same rules onto its sections (engine/direction.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from storage.inputs import InputError, has_control_characters
from storage.jobs import GuidePictures, JobParams
from storage.limits import Limits

FPS = 30
# FramePack-Studio's syntax: `[3s: text]`, or `[2s-4s: text]` with an end.
_TIMED = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*s\s*(?:-\s*(\d+(?:\.\d+)?)\s*s\s*)?:([^\]]*)\]")
ORIGINAL_ONLY = ("{what} needs the original variant: F1 generates forward from the start picture, and its "
                 "context has no place for a picture that comes later in the video.")


@dataclass(frozen=True)
class TimedPrompt:
    start: float  # seconds
    end: float | None  # seconds; None: until the next prompt or the end of the video
    text: str


def section_seconds(window: int = 9) -> float:
    """Each section adds 4*window frames (Studio divides by 4*window-3, which drifts 0.1 s a section)."""
    return 4 * window / FPS


def section_count(seconds: float, window: int = 9) -> int:
    return max(round(seconds * FPS / (window * 4)), 1)


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


def prompt_start_sections(timed: list[TimedPrompt], sections: int, window: int = 9) -> list[int]:
    """The section (in time order) where each timed prompt starts: the boundary nearest its time, as Studio
    snaps; an InputError when two land on one section or one starts in no section."""
    length = section_seconds(window)
    starts = [round(part.start / length) for part in timed]
    for part, start, before in zip(timed[1:], starts[1:], starts, strict=False):
        if start >= sections:
            raise InputError(f"The prompt at {part.start:g}s is too close to the end: the last section starts "
                             f"at {(sections - 1) * length:g}s.")
        if start <= before:
            raise InputError(f"The prompt at {part.start:g}s is too close to the one before it: each needs a "
                             f"section of its own ({length:g} s).")
    return starts


def keyframe_time_sections(times: list[float], seconds: float, window: int = 9) -> dict[int, float]:
    """The section (in time order) covering each keyframe time, mapped to that time; an InputError for a
    time outside the video or two keyframes in one section."""
    sections = section_count(seconds, window)
    covered: dict[int, float] = {}
    for time in times:
        if not 0 < time < seconds:
            raise InputError(f"A keyframe at {time:g}s is outside the video: keyframes go between 0 and "
                             f"{seconds:g} s (0 s is the start picture).")
        index = min(int(time / section_seconds(window)), sections - 1)
        if index in covered:
            raise InputError(f"The keyframes at {covered[index]:g}s and {time:g}s fall in the same section "
                             f"({section_seconds(window):g} s long); one keyframe per section.")
        covered[index] = time
    return covered


MAX_CFG = 32.0  # the official demo's slider; engine/render.py refuses above it too


def check_direction(prompt: str, params: JobParams, guides: GuidePictures, limits: Limits,
                    max_prompt_chars: int) -> None:
    """An InputError for a request whose direction (end picture, keyframes, timed prompts, CFG, loop) is
    switched off here, out of range, or impossible; nothing else is checked."""
    _check_switched_on(prompt, params, guides, limits)
    if not 1.0 <= params.cfg <= MAX_CFG:
        raise InputError(f"CFG must be between 1 (off) and {MAX_CFG:g}, not {params.cfg:g}.")
    if not 0.0 <= params.cfg_rescale <= 1.0:
        raise InputError(f"The CFG rescale must be between 0 and 1, not {params.cfg_rescale:g}.")
    if params.negative_prompt and params.cfg <= 1.0:
        raise InputError("A negative prompt works only with real CFG, which doubles the render time: "
                         "add a cfg above 1 (3, say).")
    if len(params.negative_prompt) > max_prompt_chars:
        raise InputError(f"The negative prompt is longer than {max_prompt_chars} characters.")
    if has_control_characters(params.negative_prompt):
        raise InputError("The negative prompt contains invisible control characters; please type it again without "
                         "them.")
    if not 0.0 < params.end_strength <= 1.0:
        raise InputError(f"The end frame strength must be above 0 and at most 1, not {params.end_strength:g}.")
    if params.end_strength != 1.0 and not (guides.end or params.loop):  # else it would do nothing, unsaid
        raise InputError("An end strength needs an end picture (or a loop) to pull towards.")
    original = params.variant == "original"
    for wanted, what in ((guides.end, "An end frame"), (bool(guides.keyframes), "Keyframes"), (params.loop, "A loop")):
        if wanted and not original:
            raise InputError(ORIGINAL_ONLY.format(what=what))
    if guides.end and params.loop:
        raise InputError("A loop ends on its own start picture: leave out the end picture, or the loop.")
    keyframe_time_sections(list(guides.keyframes), params.seconds)
    timed = parse_timed_prompt(prompt, params.seconds)
    if timed is not None:
        prompt_start_sections(timed, section_count(params.seconds))


def _check_switched_on(prompt: str, params: JobParams, guides: GuidePictures, limits: Limits) -> None:
    if guides.end and not limits.end_frame:
        raise InputError("End pictures are switched off here.")
    if len(guides.keyframes) > limits.max_keyframes:
        raise InputError("Keyframes are switched off here." if not limits.max_keyframes else
                         f"This job has {len(guides.keyframes)} keyframes; the limit is {limits.max_keyframes}.")
    if _TIMED.search(prompt) and not limits.timed_prompts:
        raise InputError("Timed prompts ([0s: ...] [3s: ...]) are switched off here; write one plain prompt.")
    if (params.cfg > 1.0 or params.negative_prompt) and not limits.cfg:
        raise InputError("CFG and negative prompts are switched off here.")
    if params.loop and not limits.loop:
        raise InputError("Loops are switched off here.")
