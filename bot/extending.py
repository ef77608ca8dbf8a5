"""Extension requests, the same on every chat: what a person typed (seconds, prompt, options) and the source
they picked turned into the prompt and parameters of an extension job. No chat library here."""

from __future__ import annotations

import dataclasses
import re

from bot import texts
from bot.options import FAST_TEACACHE, Request, new_seed, parse_caption
from storage.direction_rules import parse_timed_prompt
from storage.inputs import InputError
from storage.jobs import MAX_JOB_ID, Extends, Job, JobParams, NewJob
from storage.settings import Settings
from storage.video_metadata import NotAnMp4, read_made_with

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm")
_LEADING_SECONDS = re.compile(r"^\s*(\d+(?:[.,]\d+)?)\s*s?(?:\s+|$)", re.IGNORECASE)


def is_video(name: str | None, mime: str | None) -> bool:
    """What a chat declares (the MIME type, else the file name) says it is an MP4 or WebM video; the bytes are
    checked before anything is queued."""
    declared = (mime or "").split(";")[0].strip().lower()
    if declared:
        return declared.startswith("video/")
    return (name or "").lower().endswith(VIDEO_SUFFIXES)


def parse_extension(text: str) -> Request:
    """`5 the cat jumps --seed 3`: optional seconds first, then the prompt and its options (--seconds, --seed,
    --steps, --fast, --negative, --cfg). What only a picture job takes is refused."""
    text = (text or "").strip()
    seconds = None
    match = _LEADING_SECONDS.match(text)
    if match:
        seconds, text = float(match[1].replace(",", ".")), text[match.end():]
    request = parse_caption(text)
    if request.variant or request.end or request.keyframe_at or request.loop or request.end_strength is not None:
        raise InputError(texts.EXTEND_OPTIONS)
    if request.loras:
        raise InputError(texts.EXTEND_LORAS)
    if seconds is not None and request.seconds is None:
        request = dataclasses.replace(request, seconds=seconds)
    return request


def extension_job(base: NewJob, request: Request, settings: Settings, extends: Extends,
                  source: Job | None = None) -> NewJob:
    """`base` (who asks, in which chat, the upload limit) made into an extension of `extends`. A finished job's
    own prompt, seed and steps are the defaults: the same seed continues its noise stream, so an F1 video
    extended that way is the longer render. A video a person sent needs a prompt."""
    prompt = request.prompt or (plain_prompt(source) if source is not None else "")
    if not prompt:
        raise InputError(texts.EXTEND_NEEDS_PROMPT)
    # A finished job's own seed, steps and size by default; a video a person sent gets a new seed.
    kept = source.params if source is not None else JobParams(seed=new_seed(), steps=settings.default_steps,
                                                               resolution=settings.render_resolution)
    params = JobParams(
        seconds=request.seconds if request.seconds is not None else settings.default_seconds,
        variant="f1", seed=request.seed if request.seed is not None else kept.seed,
        steps=request.steps if request.steps is not None else kept.steps, resolution=kept.resolution,
        upload_limits=base.params.upload_limits, teacache=FAST_TEACACHE if request.fast else 0.0,
        negative_prompt=request.negative, cfg=request.cfg if request.cfg is not None else 1.0,
        cfg_rescale=request.cfg_rescale if request.cfg_rescale is not None else 0.0,
        loras=kept.loras,  # a job's LoRAs (its character, its style) go on into its continuation
    )
    return dataclasses.replace(base, prompt=prompt, params=params, extends=extends)


async def job_of_video(data: bytes, store, platform: str) -> Job | None:
    """The finished job of this bot a sent video says it is (its metadata: job number, prompt and seed all
    matching the stored job), so that a forwarded video continues from the job's kept latents, exactly, instead
    of from a re-encode of its frames; None for any other video."""
    try:
        made = read_made_with(data)
    except (NotAnMp4, ValueError):
        return None
    if made is None or made.job_id is None or not 1 <= made.job_id <= MAX_JOB_ID:
        return None
    job = await store.get(made.job_id)
    if job is None or job.platform != platform or job.prompt != made.prompt or job.params.seed != made.seed:
        return None
    return job


def rerolled_extension(base: NewJob, old: Job) -> NewJob:
    """The same extension with a new seed, for whoever clicked Re-roll on its video."""
    params = dataclasses.replace(old.params, seed=new_seed(), upload_limits=base.params.upload_limits)
    return dataclasses.replace(base, prompt=old.prompt, params=params, extends=old.extends)


def plain_prompt(source: Job) -> str:
    """The source's prompt; of a timed one, its last part (what was happening when the video ended)."""
    try:
        timed = parse_timed_prompt(source.prompt, source.params.seconds)
    except InputError:
        timed = None
    return timed[-1].text if timed else source.prompt
