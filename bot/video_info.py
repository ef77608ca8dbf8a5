"""`/info` on a video: the settings it was made with, and whether "Animate again" can queue them anew.

The frontends download the video (within MAX_INFO_VIDEO_BYTES and the platform's own limits) and hand
the bytes here; what comes back is the text to show and the job an "Animate again" button re-rolls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from storage.files import JobFiles
from storage.jobs import MAX_JOB_ID
from storage.store import JobStore
from storage.video_metadata import MadeWith, NotAnMp4, read_made_with

NO_VIDEO = "Use this on a video (an MP4 file)."
NOT_OURS = ("This video does not say how it was made: it was not made by this bot, or its settings were "
            "removed (some apps re-encode videos they pass on).")


@dataclass(frozen=True)
class VideoInfo:
    text: str
    again_job_id: int | None  # the stored job "Animate again" re-rolls; None: it cannot (the text says why)


def is_video_name(name: str | None, mime: str | None) -> bool:
    """What a person sent looks like an MP4 (the bytes are checked after the download)."""
    return (mime or "").lower() in ("video/mp4", "video/quicktime") or (name or "").lower().endswith(
        (".mp4", ".m4v", ".mov"))


async def video_info(data: bytes, store: JobStore, files: JobFiles, platform: str) -> VideoInfo:
    """What the video says about itself, and whether its job can run again here."""
    try:
        made = await asyncio.to_thread(read_made_with, data)
    except NotAnMp4:
        return VideoInfo("That file is not an MP4 video I can read. " + NO_VIDEO, None)
    if made is None:
        return VideoInfo(NOT_OURS, None)
    job_id, missing = await _stored_job(made, store, files, platform)
    text = _clipped(describe(made), 1750) + ("" if missing is None else f"\n\nAnimate again: {missing}")
    return VideoInfo(text, job_id)


def describe(made: MadeWith) -> str:
    """The settings, short enough for one chat message (Discord's 2000 characters) whatever the file holds."""
    lines = [f'Prompt: "{_clipped(made.prompt, 800)}"']
    if made.negative_prompt:
        lines.append(f'Negative prompt: "{_clipped(made.negative_prompt, 300)}"')
    lines.append(f"Seed {made.seed}, {made.seconds:g} s, {made.variant}, {made.steps} steps, {made.resolution}px")
    guidance = f"CFG {made.cfg:g}" + (f" (rescale {made.cfg_rescale:g})" if made.cfg_rescale else "")
    lines.append(guidance + (f", TeaCache {made.teacache:g}" if made.teacache else ", TeaCache off"))
    if made.end_picture:
        lines.append(f"End picture (strength {made.end_strength:g})")
    if made.loop:
        lines.append("Loop: ends on its start picture")
    if made.keyframes:
        lines.append(_clipped("Keyframes at " + ", ".join(f"{at:g}s" for at in made.keyframes), 200))
    for lora in made.loras[:5]:
        lines.append(_clipped(f"LoRA {lora.get('name', '?')} {lora.get('strength', '')}".rstrip(), 100))
    origin = f"job {made.job_id}" if made.job_id is not None else "the command line"
    lines.append(f"Made by framepack-bot {_clipped(made.version, 40) or '(unknown version)'}, {origin}.")
    return "\n".join(lines)


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


async def _stored_job(made: MadeWith, store: JobStore, files: JobFiles, platform: str) -> tuple[int | None, str | None]:
    """(job id, None) when this bot still has the job and its pictures; else (None, what is missing)."""
    send_again = "send the picture again with these settings."
    if made.job_id is None:
        return None, "it was made with `framepack-bot animate`, so its pictures are not stored here; " + send_again
    job = await store.get(made.job_id) if 1 <= made.job_id <= MAX_JOB_ID else None  # a forged number may not fit
    # The prompt and seed must match too: another bot's job with the same number is not this video's.
    if job is None or job.platform != platform or job.prompt != made.prompt or job.params.seed != made.seed:
        gone = f"job {made.job_id} is not in this bot's records (it was made elsewhere, or removed); "
        return None, gone + send_again
    if job.files_removed_at is not None:  # RESULT_RETENTION_DAYS passed: storage/retention.py deleted them
        return None, f"the pictures of job {job.id} were deleted after the bot's keeping period; " + send_again
    await store.fetch_inputs(job.id)
    try:
        await asyncio.to_thread(files.read_pictures, job.id, job.guides)
    except FileNotFoundError:
        return None, f"the pictures of job {job.id} are no longer stored; " + send_again
    return job.id, None
