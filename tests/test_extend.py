"""Extending a video with the F1 sampler, on the tiny models: from kept latents, from a video file, again.

What the math guarantees, and what these tests assert exactly:

- F1 generates in time order, and its section k reads only the start latent, the picture's SigLIP tokens, the
  prompt, the last 19 latents of the history and the k-th noise draw of the seed's generator. A finished F1
  render keeps all of these (continuation.pt), so extending an N-section render by M sections with the same
  prompt, seed and sampling settings samples exactly the latents of sections N+1..N+M of an (N+M)-section
  render. The first new decode blends into a fresh decode of the latents the render decoded last, which is
  what the longer render blends into, so the joined video is that render frame for frame (on the CPU, where
  every step is deterministic).
- The same holds for an extension of an extension: extending by M1 and then by M2 with the same prompt and seed
  equals one extension by M1 + M2 (the kept seed continues its noise stream).
- Another seed draws other noise: the new sections differ, and the source's frames before the overlap are
  still copied unchanged.
- A video file has no latents to keep: its last frames are VAE-encoded, so the continuation matches no single
  render; what holds is the length (the source's frames at 30 fps plus 36 a section) and that the source's
  frames come first.
"""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from conftest import make_picture
from helpers import video_frames

from engine import continuation
from engine.extend import VideoLimits, extend
from engine.image_input import resize_and_center_crop
from engine.made_with import extension_made_with, stamp
from engine.render import Cancelled, Paused, RenderRequest, render
from engine.video import concat_segments
from storage.inputs import InputError
from storage.video_metadata import read_made_with

TINY = dict(prompt="a cat dances", steps=3, resolution=64, seed=5)
SECTION_FRAMES = 36  # 4 * window


def _request(**changes) -> RenderRequest:
    return RenderRequest(**{**TINY, "variant": "f1", "seconds": 1.2, **changes})


def _generated(work_dir: Path, section: int) -> torch.Tensor:
    return torch.load(work_dir / f"latents_{section:04d}.pt", weights_only=False)["generated"]


def write_video(path: Path, frames: int = 50, size: tuple[int, int] = (96, 80), codec: str = "libx264",
                fps: int = 30) -> np.ndarray:
    """A moving gradient through imageio-ffmpeg; returns the frames it was given."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    clip = np.stack([np.stack([(x * 2 + t * 4) % 256, (y * 3 + t * 2) % 256, (x + y + t * 6) % 256], axis=-1)
                     for t in range(frames)]).astype(np.uint8)
    pix = "yuv420p"
    writer = imageio_ffmpeg.write_frames(str(path), size, fps=fps, codec=codec, pix_fmt_out=pix, quality=None,
                                         macro_block_size=2, output_params=["-crf", "16"] if codec != "mpeg4" else [])
    writer.send(None)
    for frame in clip:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return clip


@pytest.fixture(scope="module")
def f1_render(f1_models, tmp_path_factory) -> Path:
    """An F1 render of 2 sections, seed 5, and its work folder."""
    tmp = tmp_path_factory.mktemp("f1_render")
    render(f1_models, make_picture(), _request(seconds=2.4), tmp / "work", tmp / "render.mp4")
    return tmp


def test_an_f1_render_keeps_what_its_last_checkpoint_holds(f1_render):
    kept = continuation.load(f1_render / "work")
    checkpoint = torch.load(f1_render / "work" / "checkpoint.pt", weights_only=False)
    assert torch.equal(kept.history, checkpoint["history"]) and kept.history.shape[2] == 19
    assert torch.equal(kept.generator_state, checkpoint["generator_state"]) and kept.seed == 5
    assert kept.segments == [("segment_0000.mp4", 4), ("segment_0001.mp4", 36), ("segment_0002.mp4", 33)]
    assert kept.edge_count == 18  # the last section decoded its 9 latents after the 9 before


def test_extending_an_f1_render_from_its_kept_latents_is_the_longer_render(f1_models, f1_render, tmp_path):
    longer = render(f1_models, make_picture(), _request(seconds=3.6), tmp_path / "longer", tmp_path / "longer.mp4")
    result = extend(f1_models, f1_render / "work", _request(seconds=1.2), tmp_path / "ext", tmp_path / "ext.mp4")

    assert result.frames == longer.frames == 3 * SECTION_FRAMES + 1 and result.source_frames == 73
    assert torch.equal(_generated(tmp_path / "ext", 1), _generated(tmp_path / "longer", 3))
    assert np.array_equal(video_frames(result.video), video_frames(longer.video))
    # No frame of the render went through the VAE encoder: the prefix is the render's own segments, copied.
    assert np.array_equal(video_frames(tmp_path / "ext" / "prefix.mp4"), video_frames(f1_render / "render.mp4")[:40])


def test_another_seed_continues_differently_after_the_copied_frames(f1_models, f1_render, tmp_path):
    same = extend(f1_models, f1_render / "work", _request(), tmp_path / "a", tmp_path / "a.mp4")
    other = extend(f1_models, f1_render / "work", _request(seed=6), tmp_path / "b", tmp_path / "b.mp4")
    assert not torch.equal(_generated(tmp_path / "a", 1), _generated(tmp_path / "b", 1))
    a, b, source = video_frames(same.video), video_frames(other.video), video_frames(f1_render / "render.mp4")
    assert len(a) == len(b) == 109
    assert np.array_equal(a[:40], b[:40]) and np.array_equal(b[:40], source[:40])
    assert not np.array_equal(a[40:], b[40:])


def test_an_original_render_keeps_its_end_in_time_order_and_extends(original_models, f1_models, tmp_path):
    request = RenderRequest(**TINY, seconds=2.4)
    video = render(original_models, make_picture(), request, tmp_path / "work", tmp_path / "v.mp4")
    kept = continuation.load(tmp_path / "work")
    # Generated end first: section 1 is the video's last 9 latents, section 2 the 9 before, then the start latent.
    assert torch.equal(kept.history[:, :, -9:], _generated(tmp_path / "work", 1))
    assert torch.equal(kept.history[:, :, -18:-9], _generated(tmp_path / "work", 2))
    assert torch.equal(kept.history[:, :, -19:-18], kept.start_latent)
    assert kept.edge_count is None  # its last frames are a blend of two decodes: the frames themselves are used

    result = extend(f1_models, tmp_path / "work", _request(), tmp_path / "ext", tmp_path / "ext.mp4")
    joined, source = video_frames(result.video), video_frames(video.video)
    assert len(joined) == video.frames + SECTION_FRAMES == 109
    assert np.array_equal(joined[:33], source[:33])  # the first segment, copied as it is
    assert np.abs(joined[33:40].astype(int) - source[33:40]).mean() < 8  # the cut one, encoded once more (crf 16)


@pytest.mark.parametrize(("suffix", "codec"), [(".mp4", "libx264"), (".webm", "libvpx-vp9")])
def test_an_uploaded_video_is_extended_with_its_frames_first(f1_models, tmp_path, suffix, codec):
    upload = tmp_path / f"upload{suffix}"
    clip = write_video(upload, frames=50, codec=codec)
    result = extend(f1_models, upload, _request(), tmp_path / "ext", tmp_path / "ext.mp4")

    joined = video_frames(result.video)
    assert (result.width, result.height) == (64, 48)  # the 96x80 picture's bucket at 64
    assert result.source_frames == 50 and len(joined) == result.frames == 50 + SECTION_FRAMES
    expected = np.stack([resize_and_center_crop(frame, 64, 48) for frame in clip[:50 - 33]])
    assert np.abs(joined[:17].astype(int) - expected).mean() < 6  # the upload's frames, cropped, come first
    assert np.abs(joined[17:].astype(int) - expected[-1]).mean() > 0  # and new ones after them
    kept = continuation.load(tmp_path / "ext")
    assert kept.frames == result.frames and kept.seed == 5


def test_an_extension_of_an_extension_is_one_longer_extension(f1_models, tmp_path):
    upload = tmp_path / "upload.mp4"
    write_video(upload, frames=40)
    first = extend(f1_models, upload, _request(), tmp_path / "one", tmp_path / "one.mp4")
    second = extend(f1_models, tmp_path / "one", _request(), tmp_path / "two", tmp_path / "two.mp4")
    whole = extend(f1_models, upload, _request(seconds=2.4), tmp_path / "whole", tmp_path / "whole.mp4")

    assert second.frames == first.frames + SECTION_FRAMES == 40 + 2 * SECTION_FRAMES
    assert torch.equal(_generated(tmp_path / "two", 1), _generated(tmp_path / "whole", 2))
    assert np.array_equal(video_frames(second.video), video_frames(whole.video))
    assert np.array_equal(video_frames(second.video)[:first.frames - 33], video_frames(first.video)[:first.frames - 33])


def test_a_paused_extension_resumes_to_the_same_video(f1_models, f1_render, tmp_path):
    request = _request(seconds=2.4, steps=4)
    whole = extend(f1_models, f1_render / "work", request, tmp_path / "whole", tmp_path / "whole.mp4")
    seen = []
    with pytest.raises(Paused):
        extend(f1_models, f1_render / "work", request, tmp_path / "job", tmp_path / "job.mp4",
               on_step=lambda e: seen.append((e.section, e.step)), should_pause=lambda: (2, 2) in seen)
    resumed_steps = []
    resumed = extend(f1_models, f1_render / "work", request, tmp_path / "job", tmp_path / "job.mp4",
                     on_step=lambda e: resumed_steps.append((e.section, e.step)))
    assert resumed.resumed_from_section == 1 and resumed_steps[0] == (2, 3)
    assert np.array_equal(video_frames(resumed.video), video_frames(whole.video))


def test_a_cancelled_extension_writes_no_video(f1_models, f1_render, tmp_path):
    with pytest.raises(Cancelled):
        extend(f1_models, f1_render / "work", _request(), tmp_path / "job", tmp_path / "job.mp4",
               should_cancel=lambda: True)
    assert not (tmp_path / "job.mp4").exists() and not list((tmp_path / "job").glob("segment_*"))


def _bad_videos(tmp: Path) -> dict[str, tuple[Path, VideoLimits, str]]:
    good = tmp / "good.mp4"
    write_video(good, frames=50)
    truncated = tmp / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    indexed_first = concat_segments([good], tmp / "faststart.mp4")  # the index in front: decodes what is left
    cut_behind_index = tmp / "cut_behind_index.mp4"
    cut_behind_index.write_bytes(indexed_first.read_bytes()[: indexed_first.stat().st_size * 2 // 3])
    empty = tmp / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp / "notes.mp4"
    text.write_text("not a video at all, just words")
    picture = tmp / "picture.webm"
    make_picture().save(picture, format="PNG")
    short = tmp / "short.mp4"
    write_video(short, frames=10)
    tiny = tmp / "tiny.mp4"
    write_video(tiny, frames=40, size=(12, 12))
    mpeg4 = tmp / "old.mp4"
    write_video(mpeg4, frames=40, codec="mpeg4")
    limits = VideoLimits()
    return {
        "not a video": (text, limits, "not a video I can read"),
        "a picture": (picture, limits, "not a video I can read"),
        "truncated": (truncated, limits, "damaged or cut short"),
        "cut behind its index": (cut_behind_index, limits, "damaged or cut short: .* frames where"),
        "zero frames": (empty, limits, "empty"),
        "too short": (short, limits, "at least 33"),
        "too long": (good, VideoLimits(max_seconds=1.0), "limit is 1 seconds"),
        "too large": (good, VideoLimits(max_bytes=1000), "MB; the limit"),
        "unsupported codec": (mpeg4, limits, "encoded as mpeg4"),
        "too small": (tiny, limits, "at least 16 pixels"),
        "too many pixels": (good, VideoLimits(max_pixels=4000), "megapixels"),
        "missing": (tmp / "nothing.mp4", limits, "No such video file"),
        "a folder without kept latents": (tmp, limits, "no kept latents"),
    }


def test_every_bad_video_is_refused_clearly_and_creates_nothing(f1_models, tmp_path):
    calls = []
    handle = f1_models.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        for name, (path, limits, message) in _bad_videos(tmp_path).items():
            work, out = tmp_path / f"work {name}", tmp_path / f"out {name}.mp4"
            with pytest.raises(InputError, match=message):
                extend(f1_models, path, _request(), work, out, limits=limits)
            assert not work.exists() and not out.exists(), name
    finally:
        handle.remove()
    assert calls == []


def test_an_extension_says_what_it_extends_in_its_metadata(f1_models, tmp_path):
    upload = tmp_path / "holiday.mp4"
    write_video(upload, frames=40)
    request = _request(prompt="the cat jumps", seed=9)
    result = extend(f1_models, upload, request, tmp_path / "ext", tmp_path / "ext.mp4")
    stamp(result.video, extension_made_with(request, result.extends))
    made = read_made_with(result.video)
    assert (made.prompt, made.seed, made.seconds, made.variant) == ("the cat jumps", 9, 1.2, "f1")
    assert made.extends == {"video": "holiday.mp4", "frames": 40, "seconds": round(40 / 30, 3)}
    assert np.array_equal(video_frames(result.video), video_frames(tmp_path / "ext.mp4"))
