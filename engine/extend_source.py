"""The video an extension continues, made ready in the extension's work folder (`source.pt`, `prefix.mp4`).

Two kinds of source give the same thing: the F1 history to sample from (the last latents in time order), the
start latent and picture tokens, the frames before the overlap (`prefix.mp4`, copied or re-encoded once) and
the last `overlap` frames the continuation's first decode blends into.

- A work folder with `continuation.pt` (a finished render or extension): its kept latents, nothing encoded.
- A video file (MP4 or WebM): checked from its header first, decoded at 30 fps through imageio-ffmpeg,
  cropped to a bucket like a start picture; its last frames are VAE-encoded into the history and its first
  frame is the start picture (the frame index 0 of every F1 section, as in a render).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

from engine import continuation
from engine import sections as sec
from engine.image_input import nearest_bucket, resize_and_center_crop, scaled_buckets
from engine.models import FramePackModels
from engine.section_sampler import _vae_latent
from engine.video import FPS, SegmentWriter, concat_segments, write_segment
from storage.inputs import MIN_SIDE, InputError

log = logging.getLogger(__name__)

SOURCE_FILE = "source.pt"
PREFIX_FILE = "prefix.mp4"
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


@dataclass
class PreparedSource:
    fingerprint: str
    history: torch.Tensor  # (1, 16, T, h, w) time order, zero padded in front
    start_latent: torch.Tensor
    image_tokens: torch.Tensor
    seed: int | None  # with generator_state: the noise stream an extension with this seed carries on
    generator_state: torch.Tensor | None
    edge_latents: torch.Tensor | None  # decode these for the overlap (exact), else use edge_pixels
    edge_pixels: torch.Tensor | None  # (overlap, H, W, 3) uint8: the source's last frames as they play
    prefix_frames: int  # frames in prefix.mp4 (0: there is none)
    frames: int  # the whole source: the prefix and the overlap
    width: int
    height: int
    description: dict = field(default_factory=dict)  # what was extended, for the video's metadata


def prepare_source(models: FramePackModels, source: Path, work_dir: Path, request, limits: VideoLimits,
                   name: str | None = None) -> PreparedSource:
    """The source made ready in `work_dir` (reused when it already is); an InputError creates nothing."""
    source, work_dir = Path(source), Path(work_dir)
    kept = continuation.load(source) if source.is_dir() else None
    if source.is_dir() and kept is None:
        raise InputError(f"{source} holds no kept latents (continuation.pt) to continue; extend the video file.")
    if kept is None:
        check_video(source, limits)
    fingerprint = _source_fingerprint(source if kept is None else source / continuation.FILE_NAME, request)
    saved = _load_prepared(work_dir / SOURCE_FILE, fingerprint)
    if saved is not None:
        return saved
    made = not work_dir.exists()
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        if kept is not None:
            prepared = _from_kept(kept, source, work_dir, request, fingerprint)
        else:
            prepared = _from_video(models, source, work_dir, request, limits, fingerprint)
    except InputError:
        if made:
            _remove_folder(work_dir)
        raise
    prepared.description = {"video": name or source.name, "frames": prepared.frames,
                            "seconds": round(prepared.frames / FPS, 3), **prepared.description}
    tmp = work_dir / (SOURCE_FILE + ".tmp")
    torch.save(asdict(prepared), tmp)
    tmp.replace(work_dir / SOURCE_FILE)
    return prepared


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


def _from_kept(kept: continuation.Continuation, folder: Path, work_dir: Path, request,
               fingerprint: str) -> PreparedSource:
    if kept.window != request.window:
        raise InputError(f"That video was made with a latent window of {kept.window}, not {request.window}.")
    missing = [name for name, _ in kept.segments if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder} lacks the video's segment {missing[0]}; extend the video file instead.")
    overlap = sec.overlap_frames(request.window)
    segments = [(folder / name, frames) for name, frames in kept.segments]
    exact = kept.edge_count is not None and segments[-1][1] == overlap  # the last segment is that decode's end
    prefix_frames, edge = _cut_off_edge(segments, overlap, work_dir, request.crf, need_pixels=not exact)
    return PreparedSource(fingerprint, kept.history, kept.start_latent, kept.image_tokens, kept.seed,
                          kept.generator_state, kept.history[:, :, -kept.edge_count:] if exact else None,
                          None if exact else torch.from_numpy(edge), prefix_frames, prefix_frames + overlap,
                          kept.width, kept.height, {"prompt": kept.prompt, "seed": kept.seed})


def _cut_off_edge(segments: list[tuple[Path, int]], overlap: int, work_dir: Path, crf: int,
                  need_pixels: bool) -> tuple[int, np.ndarray | None]:
    """prefix.mp4 from every frame but the last `overlap` (whole segments copied, a cut one re-encoded), and
    those last frames when `need_pixels` (or a segment had to be cut)."""
    head, tail, covered = list(segments), [], 0
    while covered < overlap:
        if not head:
            raise InputError(f"The video has fewer than {overlap} frames; it is too short to extend.")
        tail.insert(0, head.pop())
        covered += tail[0][1]
    pieces = [path for path, _ in head]
    edge = None
    if need_pixels or covered > overlap:
        frames = np.concatenate([read_frames(path) for path, _ in tail])
        if covered > overlap:
            pieces.append(write_segment(work_dir / "cut.mp4", frames[:-overlap], crf))
        edge = frames[-overlap:]
    if pieces:
        concat_segments(pieces, work_dir / PREFIX_FILE)
    return sum(frames for _, frames in head) + covered - overlap, edge


def _from_video(models: FramePackModels, path: Path, work_dir: Path, request, limits: VideoLimits,
                fingerprint: str) -> PreparedSource:
    """Decode the video once, streaming: all but the last frames go straight into prefix.mp4."""
    meta = check_video(path, limits)
    height, width = nearest_bucket(meta["size"][1], meta["size"][0], scaled_buckets(request.resolution))
    overlap = sec.overlap_frames(request.window)
    keep = continuation.history_length(request.window)
    last = deque(maxlen=max(4 * keep - 3, overlap))  # the frames the history is encoded from
    first, count = None, 0
    max_frames = int(limits.max_seconds * FPS) + 1
    prefix = work_dir / "prefix.part.mp4"
    writer = _LazyWriter(prefix, width, height, request.crf)
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
        prefix.unlink(missing_ok=True)
        raise
    if writer.close():
        prefix.replace(work_dir / PREFIX_FILE)
    latents = min(keep, (len(frames) + 3) // 4)
    history = _encode_clip(models, np.stack(frames[len(frames) - (4 * latents - 3):]), request.seed)
    pad = torch.zeros((*history.shape[:2], keep - latents, *history.shape[3:]))
    image_tokens, start_latent = _picture_embedding(models, first, request.seed)
    return PreparedSource(fingerprint, torch.cat([pad, history], dim=2), start_latent, image_tokens, None, None,
                          None, torch.from_numpy(np.stack(frames[-overlap:])), count - overlap, count, width, height)


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
def _encode_clip(models: FramePackModels, frames: np.ndarray, seed: int) -> torch.Tensor:
    """(4m-3, H, W, 3) uint8 frames -> (1, 16, m, h, w) latents; the causal VAE ends the last latent on the
    last frame, which is where a decode of these latents lines up with the frames they came from."""
    vae = models.encoders.vae
    x = torch.from_numpy(frames).float().div(127.5).sub(1.0).permute(3, 0, 1, 2)[None]
    with models.placement.vae():
        posterior = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
        latents = posterior.sample(generator=torch.Generator("cpu").manual_seed(seed)) * vae.config.scaling_factor
    return latents.float().cpu()


@torch.no_grad()
def _picture_embedding(models: FramePackModels, picture: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SigLIP tokens and the VAE latent of the start picture, as encode_conditioning makes them."""
    enc, placement = models.encoders, models.placement
    with placement.image_encoder():
        pixels = enc.feature_extractor.preprocess(images=picture, return_tensors="pt")["pixel_values"]
        tokens = enc.image_encoder(pixel_values=pixels.to(enc.image_encoder.device, enc.image_encoder.dtype))
    with placement.vae():
        start = _vae_latent(enc.vae, picture, seed)
    return tokens.last_hidden_state.cpu(), start


def _source_fingerprint(path: Path, request) -> str:
    digest = hashlib.sha256(f"{request.resolution} {request.window} {request.seed} {request.crf}".encode())
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_prepared(path: Path, fingerprint: str) -> PreparedSource | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a torn file: prepare again
        log.warning("ignoring unreadable %s: %s", path, error)
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint:
        return None
    return PreparedSource(**data)


def _remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
