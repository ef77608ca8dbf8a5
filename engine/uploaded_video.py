"""A video a person sends to be extended: checked from its header, decoded once, its frames VAE-encoded.

The checks run before any frame is decoded (storage/uploaded_videos.py, which the chat side's queue runs too);
the decode goes through imageio-ffmpeg at 30 fps, each frame bucket-cropped like a start picture.
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
from storage.inputs import InputError
from storage.uploaded_videos import CUT_SHORT, VideoLimits, check_video

log = logging.getLogger(__name__)

__all__ = ["VideoLimits", "check_video", "decode_into_prefix", "encode_clip", "picture_embedding", "read_frames"]


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
