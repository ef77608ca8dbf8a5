"""H.264 MP4 output through imageio-ffmpeg's ffmpeg, and re-encoding to fit a chat upload limit."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from storage.video_packets import count_packets

FPS = 30


def frames_to_uint8(pixels) -> np.ndarray:
    """(3, T, H, W) floats in about [-1, 1] -> uint8 (T, H, W, 3), truncating as the demos do."""
    import torch

    x = torch.clamp(pixels.float(), -1.0, 1.0) * 127.5 + 127.5
    return x.to(torch.uint8).permute(1, 2, 3, 0).contiguous().numpy()


class SegmentWriter:
    """Streams uint8 RGB frames into one H.264 file, yuv420p, 30 fps, constant quality."""

    def __init__(self, path: Path, width: int, height: int, crf: int = 16):
        self.path = Path(path)
        self.frames = 0
        self._writer = imageio_ffmpeg.write_frames(
            str(self.path), (width, height), fps=FPS, codec="libx264", pix_fmt_out="yuv420p",
            quality=None, macro_block_size=2, output_params=["-crf", str(int(crf))],
        )
        self._writer.send(None)

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            self._writer.send(np.ascontiguousarray(frame))
            self.frames += 1

    def close(self) -> None:
        self._writer.close()


def write_segment(path: Path, frames: np.ndarray, crf: int = 16) -> Path:
    """Encode uint8 (T, H, W, 3) frames to `path` via a temporary name, so a crash leaves no half file."""
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    writer = SegmentWriter(tmp, frames.shape[2], frames.shape[1], crf)
    try:
        writer.write(frames)
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


def _run_ffmpeg(args: list[str]) -> None:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {result.stderr.strip()[-2000:]}")


def concat_segments(segments: list[Path], out: Path) -> Path:
    """Join MP4 segments (each starting with a keyframe) into one MP4 without re-encoding.

    Every packet gets a fresh timestamp on an exact 30 fps clock (keeping each frame's B-frame
    reorder offset), so short segments cannot skew the frame rate; the index goes to the front
    (+faststart) for streaming playback in chat clients. Needs ffmpeg 4.4+ (the `setts` filter).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tick = f"1/({FPS}*TB)"  # one frame in the stream's own time base
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "segments.txt"
        listing.write_text("".join(f"file '{Path(s).resolve()}'\n" for s in segments))
        part = out.with_name(out.stem + ".part.mp4")
        _run_ffmpeg(["-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
                     "-bsf:v", f"setts=pts=PTS-DTS+N*{tick}:dts=N*{tick}",
                     "-movflags", "+faststart", str(part)])
    os.replace(part, out)
    return out


def count_frames(path: Path) -> int | None:
    """The frames in a video file, counted from its packets without decoding; None when it does not read."""
    if not Path(path).is_file():
        return None
    counted = count_packets(path)
    return counted.frames if counted.complete else None


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int
    seconds: float
    bytes: int


def probe(path: Path) -> VideoInfo:
    """Read a video's size, frame rate and frame count back from the file itself."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    reader.close()
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    width, height = meta["size"]
    return VideoInfo(width, height, float(meta["fps"]), frames, seconds, Path(path).stat().st_size)


class CannotFit(RuntimeError):
    pass


def fit_to_size(src: Path, dst: Path, max_bytes: int, min_width: int = 160) -> Path:
    """Write a copy of `src` no larger than `max_bytes`: lower the bitrate first, then the resolution.

    Returns `dst`; copies the file unchanged when it already fits.
    """
    src, dst = Path(src), Path(dst)
    if src.stat().st_size <= max_bytes:
        if src != dst:
            shutil.copyfile(src, dst)
        return dst
    info = probe(src)
    seconds = max(info.seconds, 1 / FPS)
    # Leave room for the MP4 container and rate-control overshoot.
    bitrate = int(max_bytes * 8 * 0.92 / seconds)
    width = info.width
    part = dst.with_name(dst.stem + ".part.mp4")
    for _ in range(12):
        height = round(info.height * width / info.width / 2) * 2
        # Below ~0.04 bits per pixel H.264 falls apart; shrink the picture instead of the bitrate.
        while width > min_width and bitrate / (width * height * FPS) < 0.04:
            width = max(min_width, int(width * 0.75) // 2 * 2)
            height = round(info.height * width / info.width / 2) * 2
        _run_ffmpeg([
            "-i", str(src), "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "medium",
            "-b:v", str(bitrate), "-maxrate", str(bitrate), "-bufsize", str(bitrate),
            "-vf", f"scale={width}:{height}:flags=lanczos", "-movflags", "+faststart", str(part),
        ])
        size = part.stat().st_size
        if size <= max_bytes:
            os.replace(part, dst)
            return dst
        bitrate = int(bitrate * max_bytes / size * 0.9)
        if width <= min_width and bitrate < 20_000:
            break
    part.unlink(missing_ok=True)
    raise CannotFit(f"Could not fit the video under {max_bytes} bytes.")
