"""A video a person sends to be extended, checked without decoding a frame (no torch here).

The chat frontends' queue (storage) and the engine (engine/uploaded_video.py, before its decode) run the same
checks: bytes, the MP4/WebM signature, that ffmpeg reads the header, codec, pixels, sides, duration, and a count
of the video's packets (a stream copy, no decode) against the duration its header promises, which finds a file
cut short behind a front index before any job is made of it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

from storage.inputs import MIN_SIDE, InputError
from storage.video_packets import count_packets

FPS = 30  # what the engine decodes an uploaded video at
CUT_SHORT = 0.9  # fewer frames than this share of the header's duration: the file is cut short
# The frames an extension's first section blends into (engine/sections.py overlap_frames(9)); a shorter video
# has nothing to continue from. A test keeps the two in step.
MIN_FRAMES = 33
VIDEO_SIGNATURES = {b"ftyp": "MP4", b"\x1a\x45\xdf\xa3": "WebM"}  # MP4's at byte 4, Matroska's EBML at 0


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int = 200_000_000
    max_seconds: float = 120.0
    max_pixels: int = 8_294_400
    codecs: tuple[str, ...] = ("h264", "hevc", "vp8", "vp9", "av1")

    @classmethod
    def from_settings(cls, settings) -> VideoLimits:
        codecs = tuple(c.strip().lower() for c in settings.extend_video_codecs.split(",") if c.strip())
        return cls(settings.max_extend_video_bytes, settings.max_extend_video_seconds,
                   settings.max_extend_video_pixels, codecs)


def check_video(path: Path, limits: VideoLimits) -> dict:
    """The video's header information, or an InputError saying why it cannot be extended; decodes no frame."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"No such video file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise InputError("The video file is empty.")
    if size > limits.max_bytes:
        raise InputError(f"The video is {size / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.1f} MB.")
    with open(path, "rb") as file:
        head = file.read(12)
    if head[4:8] not in VIDEO_SIGNATURES and head[:4] not in VIDEO_SIGNATURES:
        raise InputError("That file is not a video I can read (MP4 or WebM).")
    meta = _header(path)
    codec = str(meta.get("codec", "")).lower()
    if codec not in limits.codecs:
        raise InputError(f"The video is encoded as {codec or 'an unknown codec'}; "
                         f"I can read {', '.join(limits.codecs)}.")
    width, height = meta["size"]
    if width * height > limits.max_pixels:
        raise InputError(f"The video is {width}x{height} ({width * height / 1e6:.1f} megapixels); "
                         f"the limit is {limits.max_pixels / 1e6:.1f} megapixels.")
    if min(width, height) < MIN_SIDE:
        raise InputError(f"The video is {width}x{height}; each side must be at least {MIN_SIDE} pixels.")
    duration = float(meta.get("duration") or 0.0)
    if duration > limits.max_seconds:
        raise InputError(f"The video is {duration:g} seconds long; the limit is {limits.max_seconds:g} seconds.")
    if 0 < duration * FPS < MIN_FRAMES - 1:  # the decode counts exactly; this spares a job that cannot run
        raise InputError(f"The video is {duration:g} seconds long; at least {MIN_FRAMES} frames "
                         f"({MIN_FRAMES / FPS:.1f} s) are needed to continue it.")
    _check_not_cut_short(path, duration, float(meta.get("fps") or 0.0))
    return meta


def check_video_bytes(data: bytes, limits: VideoLimits, scratch: Path | None = None) -> dict:
    """check_video on bytes a person sent (written to a scratch file that is removed again)."""
    if scratch is not None:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix="upload-", suffix=".video", dir=scratch)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        return check_video(Path(name), limits)
    finally:
        os.unlink(name)


def _header(path: Path) -> dict:
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        reader.close()
    except (OSError, RuntimeError, StopIteration):
        raise InputError("The video is damaged or cut short and could not be read.") from None
    return meta


def _check_not_cut_short(path: Path, duration: float, fps: float) -> None:
    """ffmpeg decodes what is there of a file cut short behind its index without failing: count its packets."""
    if duration <= 0 or fps <= 0:
        return
    try:
        frames = count_packets(path, timeout=60).frames  # what was read of a file cut short still counts
    except (OSError, subprocess.TimeoutExpired):
        raise InputError("The video is damaged or cut short and could not be read.") from None
    if frames < CUT_SHORT * duration * fps - 2:
        raise InputError(f"The video is damaged or cut short: {frames} frames where its header promises "
                         f"{duration:g} seconds.")
