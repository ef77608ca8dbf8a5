"""Stamping a finished video with the settings it was made with (storage/video_metadata.py holds the format)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from engine.render import RenderRequest
from engine.sections import Variant
from storage.video_metadata import MadeWith, project_version, read_made_with, write_made_with


def made_with(request: RenderRequest, *, end_picture: bool, keyframes: Sequence[float],
              job_id: int | None = None, platform: str | None = None) -> MadeWith:
    """The settings of `request` as they go into the video: the ones that decide what it looks like."""
    return MadeWith(
        prompt=request.prompt, seed=request.seed, variant=Variant.parse(request.variant).value, steps=request.steps,
        seconds=float(request.seconds), negative_prompt=request.negative_prompt, cfg=request.cfg,
        cfg_rescale=request.cfg_rescale, end_strength=request.end_strength, loop=request.loop,
        end_picture=end_picture, keyframes=tuple(sorted(float(at) for at in keyframes)), teacache=request.teacache,
        resolution=request.resolution, loras=tuple(lora.made_with() for lora in request.loras),
        version=project_version(), job_id=job_id, platform=platform,
    )


def stamp(video: Path, settings: MadeWith, max_bytes: int | None = None) -> Path:
    """Write `settings` into `video` unless it carries them already (a copy of a stamped file does).

    `max_bytes`: an upload copy must still fit its limit after the few hundred bytes of the tag.
    """
    if read_made_with(video) == settings:
        return video
    write_made_with(video, settings)
    if max_bytes is not None and Path(video).stat().st_size > max_bytes:
        raise RuntimeError(f"{video} no longer fits {max_bytes} bytes with its metadata.")
    return video


def extension_made_with(request: RenderRequest, extends: dict, *, job_id: int | None = None,
                        platform: str | None = None) -> MadeWith:
    """The settings of an extension: its own prompt, seed and seconds added, and what it extends."""
    plain = made_with(request, end_picture=False, keyframes=(), job_id=job_id, platform=platform)
    return dataclasses.replace(plain, extends=dict(extends))
