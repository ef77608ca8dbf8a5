"""Counting a video's frames from its packets, without decoding them, through imageio-ffmpeg's ffmpeg.

One `framecrc` line per packet works on every ffmpeg that imageio-ffmpeg ships: the frame counter of
`-progress` and `-stats` stays empty for a stream copy in ffmpeg 7.0 (imageio-ffmpeg 0.6 and 0.7), which
made every segment look damaged and every uploaded video look cut short there.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg


@dataclass(frozen=True)
class PacketCount:
    frames: int  # the video packets ffmpeg read before it stopped
    complete: bool  # ffmpeg read the file to its end without an error


def count_packets(path: Path, timeout: float | None = None) -> PacketCount:
    """The packets of the first video stream; raises subprocess.TimeoutExpired after `timeout` seconds."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path),
               "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"]
    done = subprocess.run(command, capture_output=True, timeout=timeout)
    frames = sum(1 for line in done.stdout.splitlines() if line.strip() and not line.startswith(b"#"))
    return PacketCount(frames, done.returncode == 0)
