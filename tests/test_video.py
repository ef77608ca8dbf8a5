"""MP4 output, probing, fitting under an upload limit, and preview GIFs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import video_frames
from PIL import Image

from engine.preview import GIF_MAX_BYTES, GIF_MAX_WIDTH, latent_preview, section_gif
from engine.video import CannotFit, concat_segments, fit_to_size, frames_to_uint8, probe, write_segment


def _moving_frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(count):
        base = np.stack([(x + 3 * t) % width / width, y / height, ((x + y + 5 * t) % 64) / 64], -1) * 200
        frames.append((base + rng.random((height, width, 3)) * 55).astype(np.uint8))
    return np.stack(frames)


def test_segment_written_and_read_back(tmp_path):
    path = write_segment(tmp_path / "a.mp4", _moving_frames(37, 64, 96))
    info = probe(path)
    assert (info.width, info.height, info.frames, info.fps) == (96, 64, 37, 30.0)
    assert not list(tmp_path.glob("*.part.mp4"))


def test_concat_keeps_every_frame_in_order(tmp_path):
    frames = _moving_frames(60, 48, 64)
    chunks = np.split(frames, [4, 5, 7, 40])  # uneven, down to one frame
    parts = [write_segment(tmp_path / f"s{i}.mp4", chunk, crf=0) for i, chunk in enumerate(chunks)]
    out = concat_segments(parts, tmp_path / "out.mp4")
    info = probe(out)
    assert info.frames == 60 and info.fps == 30.0 and info.seconds == pytest.approx(2.0, abs=0.04)
    decoded = video_frames(out).astype(np.int32).reshape(60, -1)
    source = frames.astype(np.int32).reshape(60, -1)
    errors = np.abs(decoded[:, None, :] - source[None, :, :]).mean(axis=2)
    assert errors.argmin(axis=1).tolist() == list(range(60))  # every frame there, once, in order
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart: the index comes first


def test_frames_to_uint8_truncates_like_the_demos():
    pixels = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 6, 1, 1).expand(3, 6, 1, 1)
    out = frames_to_uint8(pixels)
    assert out.shape == (6, 1, 1, 3)
    assert out[:, 0, 0, 0].tolist() == [0, 0, 127, 254, 255, 255]


def test_fit_to_size_honours_the_limit(tmp_path):
    src = write_segment(tmp_path / "big.mp4", _moving_frames(90, 240, 320), crf=0)
    size = src.stat().st_size
    for limit in (size // 3, size // 12):
        out = fit_to_size(src, tmp_path / f"fit_{limit}.mp4", limit)
        info = probe(out)
        assert info.bytes <= limit
        assert info.frames == 90


def test_fit_to_size_copies_when_it_already_fits(tmp_path):
    src = write_segment(tmp_path / "small.mp4", _moving_frames(10, 32, 32))
    out = fit_to_size(src, tmp_path / "copy.mp4", src.stat().st_size)
    assert out.read_bytes() == src.read_bytes()


def test_fit_to_size_says_when_it_cannot(tmp_path):
    src = write_segment(tmp_path / "src.mp4", _moving_frames(60, 120, 160), crf=0)
    with pytest.raises(CannotFit):
        fit_to_size(src, tmp_path / "nope.mp4", 2_000)
    assert not (tmp_path / "nope.mp4").exists()


def test_section_gif_respects_width_and_size(tmp_path):
    frames = _moving_frames(69, 416, 960)
    path = section_gif(frames, tmp_path / "p.gif")
    assert path.stat().st_size <= GIF_MAX_BYTES
    with Image.open(path) as gif:
        assert gif.size[0] <= GIF_MAX_WIDTH
        assert gif.n_frames > 1


def test_latent_preview_is_side_by_side_rgb():
    strip = latent_preview(torch.randn(1, 16, 3, 5, 7))
    assert strip.shape == (5, 21, 3) and strip.dtype == np.uint8


def test_frames_are_counted_from_packets_and_a_cut_file_is_incomplete(tmp_path):
    from engine.video import count_frames
    from storage.video_packets import PacketCount, count_packets

    frames = np.random.default_rng(1).integers(0, 255, (45, 64, 96, 3), dtype=np.uint8)
    path = write_segment(tmp_path / "whole.mp4", frames)
    assert count_packets(path, timeout=60) == PacketCount(45, complete=True)
    assert count_frames(path) == 45
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    counted = count_packets(cut)
    assert not counted.complete or counted.frames < 45
    assert count_frames(cut) != 45
    assert count_frames(tmp_path / "missing.mp4") is None
