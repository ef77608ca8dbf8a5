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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine import continuation
from engine import sections as sec
from engine.models import FramePackModels
from engine.uploaded_video import (
    VideoLimits,
    check_video,
    decode_into_prefix,
    encode_clip,
    picture_embedding,
    read_frames,
)
from engine.video import FPS, concat_segments, write_segment
from storage.inputs import InputError

log = logging.getLogger(__name__)

SOURCE_FILE = "source.pt"
PREFIX_FILE = "prefix.mp4"


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
    """All but the last frames into prefix.mp4; the last ones VAE-encoded into the history (m <= 19 latents
    from the last 4m-3 frames: the causal VAE ends the last latent on the last frame, so they line up)."""
    overlap = sec.overlap_frames(request.window)
    keep = continuation.history_length(request.window)
    video = decode_into_prefix(path, work_dir / PREFIX_FILE, request.resolution, overlap, 4 * keep - 3,
                               request.crf, limits)
    frames = video.last
    latents = min(keep, (len(frames) + 3) // 4)
    history = encode_clip(models, np.stack(frames[len(frames) - (4 * latents - 3):]), request.seed)
    pad = torch.zeros((*history.shape[:2], keep - latents, *history.shape[3:]))
    image_tokens, start_latent = picture_embedding(models, video.first, request.seed)
    return PreparedSource(fingerprint, torch.cat([pad, history], dim=2), start_latent, image_tokens, None, None,
                          None, torch.from_numpy(np.stack(frames[-overlap:])), video.count - overlap, video.count,
                          video.width, video.height)


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
