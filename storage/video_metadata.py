"""The settings a video was made with, kept in the MP4 itself: written by ffmpeg, read back in Python.

The settings are one JSON object in the MP4's standard `comment` tag (moov/udta/meta/ilst/©cmt), which
players and `ffmpeg -i` show as is. Writing re-muxes the file with stream copy, so the video itself is
not touched. Reading walks the MP4 boxes in Python rather than parsing ffmpeg's console output, which
escapes and wraps long values; it reads only the headers and the `moov` box, never the frames.

Both the engine (which writes) and the frontends (which read what a person sends) use this module, so
it lives in storage, beside the other things both sides share.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import subprocess
from dataclasses import dataclass
from importlib import metadata
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

MADE_BY = "framepack-bot"  # tells our comment from anybody else's
FORMAT = 1
MAX_MOOV_BYTES = 64 * 2**20  # the index of an hour of video is a few MB; more is not a video of ours


class NotAnMp4(ValueError):
    """The bytes are not an MP4 (or MOV) file, or one too damaged to read."""


@dataclass(frozen=True)
class MadeWith:
    """Everything that decides what a video looks like, and where it came from."""

    prompt: str
    seed: int
    variant: str
    steps: int
    seconds: float
    negative_prompt: str = ""
    cfg: float = 1.0
    cfg_rescale: float = 0.0
    end_strength: float = 1.0
    loop: bool = False
    end_picture: bool = False
    keyframes: tuple[float, ...] = ()  # the seconds of each keyframe picture
    teacache: float = 0.0  # the threshold the render ran with; 0 off
    resolution: int = 640
    loras: tuple[dict, ...] = ()  # room for LoRAs (name, sha256, strength) once jobs can carry them
    # an extension's source: {"video", "frames", "seconds"} and, where known, its "prompt" and "seed"; `seconds`
    # above is then the seconds added, `prompt` and `seed` the continuation's. None: not an extension.
    extends: dict | None = None
    version: str = ""  # framepack-bot's version
    job_id: int | None = None  # the bot's job; None for `framepack-bot animate`
    platform: str | None = None

    def to_comment(self) -> str:
        fields = {**dataclasses.asdict(self), "keyframes": list(self.keyframes), "loras": list(self.loras)}
        return json.dumps({"made_by": MADE_BY, "format": FORMAT, **fields}, ensure_ascii=True, sort_keys=True)

    @classmethod
    def from_comment(cls, text: str | None) -> MadeWith | None:
        """The settings in a comment written by `to_comment`; None for any other comment, or a damaged one."""
        try:
            data = json.loads(text or "")
        except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            return None
        if not isinstance(data, dict) or data.get("made_by") != MADE_BY:
            return None
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in data:
                continue
            value = _checked(field.name, data[field.name])
            if value is _BAD:
                return None
            values[field.name] = value
        if not {"prompt", "seed", "variant", "steps", "seconds"} <= values.keys():
            return None
        return cls(**values)


_BAD = object()
_TYPES = {"prompt": str, "negative_prompt": str, "variant": str, "version": str, "seed": int, "steps": int,
          "resolution": int, "seconds": float, "cfg": float, "cfg_rescale": float, "end_strength": float,
          "teacache": float, "loop": bool, "end_picture": bool}


def _checked(name: str, value):
    """`value` as the field's type, or _BAD: the comment came from a file anyone could have written."""
    if name == "keyframes":
        ok = isinstance(value, list) and all(_is_number(v) for v in value)
        return tuple(float(v) for v in value) if ok else _BAD
    if name == "loras":
        return tuple(value) if isinstance(value, list) and all(isinstance(v, dict) for v in value) else _BAD
    if name == "job_id":
        return value if value is None or (isinstance(value, int) and not isinstance(value, bool)) else _BAD
    if name == "extends":
        plain = (str, int, float, bool, type(None))
        ok = value is None or (isinstance(value, dict) and all(isinstance(v, plain) for v in value.values()))
        return value if ok else _BAD
    if name == "platform":
        return value if value is None or isinstance(value, str) else _BAD
    kind = _TYPES[name]
    if kind is float:
        return float(value) if _is_number(value) else _BAD
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    return value if isinstance(value, kind) else _BAD


def _is_number(value) -> bool:
    """A finite number that fits a float: JSON's integers have no bound, and it reads NaN and Infinity."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def project_version() -> str:
    try:
        return metadata.version("framepack-bot")
    except metadata.PackageNotFoundError:
        return "unknown"


# ----- writing --------------------------------------------------------------------------------------


def write_made_with(path: Path, made_with: MadeWith) -> Path:
    """Put `made_with` into the MP4 at `path`, in place: every stream copied as it is, the index in front."""
    import imageio_ffmpeg  # only the writer needs the binary

    path = Path(path)
    part = path.with_name(path.stem + ".meta.part.mp4")
    # The tag goes in through an FFMETADATA file, not the command line, which caps one argument at 128 KiB.
    tags = path.with_name(path.stem + ".meta.part.txt")
    tags.write_text(";FFMETADATA1\ncomment=" + _ffmetadata_escaped(made_with.to_comment()) + "\n", encoding="utf-8")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-i", str(path),
           "-f", "ffmetadata", "-i", str(tags), "-map", "0", "-c", "copy", "-map_metadata", "1",
           "-movflags", "+faststart", str(part)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        tags.unlink(missing_ok=True)
    if result.returncode != 0:
        part.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg could not write the video's metadata: {result.stderr.strip()[-2000:]}")
    os.replace(part, path)
    return path


def _ffmetadata_escaped(value: str) -> str:
    """FFMETADATA's escaping: a backslash before '=', ';', '#', a backslash or a line break."""
    return "".join("\\" + char if char in "=;#\\\n" else char for char in value)


# ----- reading --------------------------------------------------------------------------------------


def read_made_with(source: Path | bytes) -> MadeWith | None:
    """The settings stored in an MP4 (a path or its bytes); None when it has none of ours; NotAnMp4."""
    return MadeWith.from_comment(read_comment(source))


def read_comment(source: Path | bytes) -> str | None:
    """The MP4's `comment` tag, or None; NotAnMp4 when the bytes are not an MP4."""
    if isinstance(source, (bytes, bytearray)):
        return _comment_from(BytesIO(source), len(source))
    with open(source, "rb") as file:
        return _comment_from(file, os.fstat(file.fileno()).st_size)


def _comment_from(file: BinaryIO, size: int) -> str | None:
    moov = _read_moov(file, size)
    found = _find(moov, 0, len(moov), [b"udta", b"meta", b"ilst", b"\xa9cmt", b"data"])
    if found is None:
        return None
    start, end = found
    # A `data` box: 4 bytes of type (1 is UTF-8), 4 of locale, then the text.
    return moov[start + 8:end].decode("utf-8", errors="replace") if end - start >= 8 else None


def _read_moov(file: BinaryIO, size: int) -> bytes:
    """The `moov` box's contents, found among the top-level boxes (before or after the media data)."""
    pos, first = 0, True
    while pos + 8 <= size:
        file.seek(pos)
        header = file.read(16)
        box, body, end = _box_header(header, 0, size - pos)
        if box is None:
            break
        if first and box != b"ftyp":
            raise NotAnMp4("not an MP4")
        first = False
        if box == b"moov":
            if end - body > MAX_MOOV_BYTES:
                raise NotAnMp4("the MP4's index is too large")
            file.seek(pos + body)
            data = file.read(end - body)
            if len(data) != end - body:
                raise NotAnMp4("the MP4 is cut short")
            return data
        pos += end
    raise NotAnMp4("not an MP4" if first else "the MP4 has no index (moov); it may be cut short")


def _box_header(data: bytes, pos: int, limit: int) -> tuple[bytes | None, int, int]:
    """(type, start of body, end) of the box at `pos`, offsets from `pos`'s base; (None, 0, 0) if damaged."""
    if pos + 8 > len(data) or pos + 8 > limit:
        return None, 0, 0
    size, box = struct.unpack_from(">I4s", data, pos)
    header = 8
    if size == 1:  # a 64-bit size follows the type
        if pos + 16 > len(data):
            return None, 0, 0
        size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
    elif size == 0:  # to the end of the enclosing space
        size = limit - pos
    if size < header or pos + size > limit:
        return None, 0, 0
    return box, pos + header, pos + size


def _find(data: bytes, start: int, end: int, path: list[bytes]) -> tuple[int, int] | None:
    """The body (start, end) of the box at `path` below data[start:end]."""
    pos = start
    while pos < end:
        box, body, box_end = _box_header(data, pos, end)
        if box is None:
            return None
        if box == path[0]:
            if box == b"meta" and data[body + 4:body + 8] != b"hdlr":
                body += 4  # MP4's meta is a full box (version and flags); QuickTime's is not
            return (body, box_end) if len(path) == 1 else _find(data, body, box_end, path[1:])
        pos = box_end
    return None
