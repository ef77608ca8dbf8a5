"""A video a person sends to be extended: checked from its header, decoded once, its frames VAE-encoded.

The checks run before any frame is decoded (bytes, MP4/WebM signature, that ffmpeg reads it, codec, size,
duration); the decode goes through imageio-ffmpeg at 30 fps, each frame bucket-cropped like a start picture.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

from engine.image_input import nearest_bucket, resize_and_center_crop, scaled_buckets
from engine.models import FramePackModels
from engine.section_sampler import vae_latent
from engine.video import FPS, SegmentWriter
from storage.inputs import MIN_SIDE, InputError

log = logging.getLogger(__name__)

CUT_SHORT = 0.9  # fewer frames than this share of the header's duration: the file is cut short
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
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        reader.close()
    except (OSError, RuntimeError, StopIteration):
        raise InputError("The video is damaged or cut short and could not be read.") from None
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
    return meta


@dataclass
class DecodedVideo:
    first: np.ndarray  # the first frame, bucket-cropped: the start picture
    last: list[np.ndarray]  # the last frames (up to `tail`), bucket-cropped
    count: int  # every frame at 30 fps
    width: int
    height: int


def decode_into_prefix(path: Path, prefix: Path, resolution: int, overlap: int, tail: int, crf: int,
                       limits: VideoLimits) -> DecodedVideo:
    """Decode the video once at 30 fps, streaming: every frame but the last `overlap` goes straight into
    `prefix` (written only when there are such frames); the last `tail` come back. An InputError leaves no file."""
    meta = check_video(path, limits)
    height, width = nearest_bucket(meta["size"][1], meta["size"][0], scaled_buckets(resolution))
    last = deque(maxlen=max(tail, overlap))
    first, count = None, 0
    max_frames = int(limits.max_seconds * FPS) + 1
    part = prefix.with_name(prefix.stem + ".part" + prefix.suffix)
    writer = _LazyWriter(part, width, height, crf)
    try:
        try:
            reader = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", f"fps={FPS}"])
            source_w, source_h = next(reader)["size"]
            for raw in reader:
                frame = np.frombuffer(raw, np.uint8).reshape(source_h, source_w, 3)
                frame = resize_and_center_crop(frame, width, height)
                count += 1
                if count > max_frames:
                    raise InputError(f"The video is longer than {limits.max_seconds:g} seconds.")
                first = frame if first is None else first
                if len(last) == last.maxlen:
                    writer.write(last[0])
                last.append(frame)
        except (OSError, RuntimeError, StopIteration, ValueError) as error:
            log.info("decoding %s failed: %s", path, error)
            raise InputError("The video is damaged or cut short and could not be decoded.") from None
        if count < CUT_SHORT * float(meta.get("duration") or 0.0) * FPS - 2:
            # ffmpeg decodes what is there of a file cut short behind its index, without failing
            raise InputError(f"The video is damaged or cut short: {count} frames where its header promises "
                             f"{float(meta['duration']):g} seconds.")
        if count < overlap:
            raise InputError(f"The video has {count} frames at 30 fps; at least {overlap} ({overlap / FPS:.1f} s) "
                             "are needed to continue it." if count else "The video has no frames.")
        frames = list(last)
        for frame in frames[:-overlap]:
            writer.write(frame)
    except BaseException:
        writer.close()
        part.unlink(missing_ok=True)
        raise
    if writer.close():
        part.replace(prefix)
    return DecodedVideo(first, frames, count, width, height)


class _LazyWriter:
    """A segment writer opened at the first frame, so that a video too short for a prefix leaves no file."""

    def __init__(self, path: Path, width: int, height: int, crf: int):
        self.path, self.size, self.crf, self.writer = path, (width, height), crf, None

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            self.writer = SegmentWriter(self.path, *self.size, self.crf)
        self.writer.write(frame[None])

    def close(self) -> bool:
        """True when frames were written."""
        if self.writer is not None:
            self.writer.close()
        return self.writer is not None


def read_frames(path: Path) -> np.ndarray:
    """Every frame of a video as uint8 (T, H, W, 3)."""
    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = next(reader)["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])


@torch.no_grad()
def encode_clip(models: FramePackModels, frames: np.ndarray, seed: int) -> torch.Tensor:
    """(4m-3, H, W, 3) uint8 frames -> (1, 16, m, h, w) latents; the causal VAE ends the last latent on the
    last frame, which is where a decode of these latents lines up with the frames they came from."""
    vae = models.encoders.vae
    x = torch.from_numpy(frames).float().div(127.5).sub(1.0).permute(3, 0, 1, 2)[None]
    with models.placement.vae():
        posterior = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
        latents = posterior.sample(generator=torch.Generator("cpu").manual_seed(seed)) * vae.config.scaling_factor
    return latents.float().cpu()


@torch.no_grad()
def picture_embedding(models: FramePackModels, picture: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SigLIP tokens and the VAE latent of the start picture, as encode_conditioning makes them."""
    enc, placement = models.encoders, models.placement
    with placement.image_encoder():
        pixels = enc.feature_extractor.preprocess(images=picture, return_tensors="pt")["pixel_values"]
        tokens = enc.image_encoder(pixel_values=pixels.to(enc.image_encoder.device, enc.image_encoder.dtype))
    with placement.vae():
        start = vae_latent(enc.vae, picture, seed)
    return tokens.last_hidden_state.cpu(), start
