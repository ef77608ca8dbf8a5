"""Videos that remember how they were made: the settings written by ffmpeg with stream copy, read back in Python."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from engine.video import concat_segments, write_segment
from storage.video_metadata import MadeWith, NotAnMp4, read_comment, read_made_with, write_made_with

SETTINGS = MadeWith(prompt='a cat "turns" its head\né 猫', seed=2**40 + 7, variant="original", steps=25, seconds=2.4,
                    negative_prompt="blur", cfg=4.0, cfg_rescale=0.5, end_strength=0.8, end_picture=True,
                    keyframes=(1.0, 1.5), teacache=0.15, resolution=640, version="0.1.0", job_id=12,
                    platform="telegram")


def _video(path: Path, frames: int = 12) -> Path:
    rng = np.random.default_rng(0)
    write_segment(path, rng.integers(0, 255, (frames, 32, 48, 3), dtype=np.uint8))
    return concat_segments([path], path.with_name("joined_" + path.name))  # as render joins its segments


def _packets_md5(path: Path) -> str:
    """A hash of the video stream's coded packets, as ffmpeg demuxes them: no decoding."""
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path),
                             "-map", "0:v:0", "-c", "copy", "-f", "md5", "-"], capture_output=True, text=True,
                            check=True)
    return result.stdout.strip()


def test_settings_round_trip_through_the_mp4_and_the_stream_is_copied(tmp_path):
    video = _video(tmp_path / "v.mp4")
    before = _packets_md5(video)
    write_made_with(video, SETTINGS)
    assert _packets_md5(video) == before  # stream copy: not one coded byte changed
    assert read_made_with(video) == SETTINGS
    assert read_made_with(video.read_bytes()) == SETTINGS
    assert video.read_bytes()[4:8] == b"ftyp" and video.read_bytes().find(b"moov") < video.read_bytes().find(b"mdat")
    write_made_with(video, SETTINGS.__class__(**{**SETTINGS.__dict__, "seed": 1}))  # written again: replaced
    assert read_made_with(video).seed == 1 and _packets_md5(video) == before


def test_ffmpeg_itself_reads_the_comment_as_one_json_object(tmp_path):
    video = write_made_with(_video(tmp_path / "v.mp4"), SETTINGS)
    shown = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(video), "-f", "ffmetadata", "-"],
                           capture_output=True, text=True).stdout
    assert "comment=" in shown and '"made_by": "framepack-bot"' in read_comment(video)
    assert json.loads(read_comment(video))["prompt"] == SETTINGS.prompt


def _comment(**raw) -> str:
    """A comment as a forger might write it: our fields, with `raw` JSON text for some values."""
    fields = {"prompt": '"x"', "seed": "1", "variant": '"f1"', "steps": "1", "seconds": "1", **raw}
    pairs = [("made_by", '"framepack-bot"'), *fields.items()]
    return "{" + ", ".join(f'"{name}": {value}' for name, value in pairs) + "}"


def test_videos_without_our_settings_and_files_that_are_not_mp4(tmp_path):
    plain = _video(tmp_path / "v.mp4")
    assert read_comment(plain) is None and read_made_with(plain) is None
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(plain), "-c", "copy",
                    "-metadata", "comment=shot on my phone", str(tmp_path / "other.mp4")], check=True)
    assert read_comment(tmp_path / "other.mp4") == "shot on my phone"
    assert read_made_with(tmp_path / "other.mp4") is None
    for forged in ['{"made_by": "framepack-bot", "prompt": 3, "seed": 1, "variant": "f1", "steps": 1, "seconds": 1}',
                   '{"made_by": "framepack-bot", "prompt": "x"}', "[1, 2]",
                   # numbers no float holds, or not finite; and nesting deeper than Python's recursion limit
                   _comment(seconds=10**400), _comment(seconds="NaN"), _comment(cfg="Infinity"),
                   _comment(keyframes=f"[1, {10**400}]"), '{"made_by": "framepack-bot", "x": ' + "[" * 100_000]:
        assert MadeWith.from_comment(forged) is None
    assert MadeWith.from_comment(_comment(seconds=2.5)).seconds == 2.5  # the same comment with a plain number
    for not_mp4 in [b"", b"GIF89a" + bytes(100), b"\x1aE\xdf\xa3" + bytes(100), plain.read_bytes()[:200]]:
        with pytest.raises(NotAnMp4):
            read_made_with(not_mp4)


async def test_a_forged_video_gets_a_short_answer_and_no_impossible_job(tmp_path):
    from bot.video_info import video_info

    forged = MadeWith(prompt="x" * 9000, negative_prompt="y" * 9000, seed=10**400, variant="f1" * 500, steps=2,
                      seconds=1.0, keyframes=tuple(range(3000)), loras=({"name": "n" * 999},) * 99, job_id=2**70)
    video = write_made_with(_video(tmp_path / "v.mp4"), forged)
    info = await video_info(video.read_bytes(), store=None, files=None, platform="discord")
    assert len(info.text) < 2000 and info.again_job_id is None and "not in this bot's records" in info.text
