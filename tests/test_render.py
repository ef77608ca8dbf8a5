"""The whole section loop on the tiny models: frame counts, determinism, resume, cancel, previews."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_picture
from helpers import video_frames
from PIL import Image

from engine.image_input import nearest_bucket, scaled_buckets
from engine.render import Cancelled, Paused, RenderRequest, render
from engine.sections import frames_after_each_section, section_count
from engine.video import probe

TINY = dict(prompt="a cat dances", steps=3, resolution=64)


def _render(models, tmp: Path, name: str, **changes):
    request = RenderRequest(**{**TINY, "variant": models.variant, **changes})
    return render(models, make_picture(), request, tmp / f"{name}_work", tmp / f"{name}.mp4")




@pytest.mark.parametrize("variant", ["original", "f1"])
@pytest.mark.parametrize("seconds", [1.0, 3.6])
def test_mp4_has_the_spec_frame_count(models_for, tmp_path, variant, seconds):
    models = models_for[variant]
    sections_seen = []
    request = RenderRequest(**TINY, seconds=seconds, variant=variant)
    result = render(models, make_picture(), request, tmp_path / "w", tmp_path / "v.mp4",
                    on_section=lambda e: sections_seen.append(e.frames_done))
    info = probe(result.video)
    n = section_count(seconds)
    expected = frames_after_each_section(models.variant, n)[-1]
    assert info.frames == result.frames == expected == 36 * n + 1
    bucket_h, bucket_w = nearest_bucket(80, 96, scaled_buckets(64))
    assert (info.width, info.height, info.fps) == (bucket_w, bucket_h, 30.0) == (64, 48, 30.0)
    assert len(sections_seen) == n and sections_seen[-1] == expected
    assert sorted(sections_seen) == sections_seen


def test_same_seed_same_video_other_seed_other_video(original_models, tmp_path):
    a = _render(original_models, tmp_path, "a", seconds=2.4, seed=7)
    b = _render(original_models, tmp_path, "b", seconds=2.4, seed=7)
    c = _render(original_models, tmp_path, "c", seconds=2.4, seed=8)
    fa, fb, fc = video_frames(a.video), video_frames(b.video), video_frames(c.video)
    assert np.array_equal(fa, fb)
    assert not np.array_equal(fa, fc)
    ha = torch.load(tmp_path / "a_work" / "checkpoint.pt", weights_only=False)["history"]
    hb = torch.load(tmp_path / "b_work" / "checkpoint.pt", weights_only=False)["history"]
    assert torch.equal(ha, hb)


class StopAfter:
    """should_cancel that turns true once `sections` sections are done, counting model calls after it."""

    def __init__(self, transformer, sections: int):
        self.sections = sections
        self.done = 0
        self.calls_after = 0
        self._stop = False
        transformer.register_forward_pre_hook(self._count)

    def _count(self, *_):
        if self._stop:
            self.calls_after += 1

    def on_section(self, event):
        self.done = event.section

    def on_step(self, event):
        if self.done >= self.sections and event.step >= 2:
            self._stop = True

    def __call__(self) -> bool:
        return self._stop


@pytest.mark.parametrize("variant", ["original", "f1"])
def test_resume_after_a_stop_equals_an_uninterrupted_run(tiny_models_dir, tmp_path, variant):
    from engine.models import load_models

    models = load_models(variant, "cpu", tiny_models_dir)
    request = RenderRequest(**TINY, seconds=4.8, variant=variant, seed=5)  # 4 sections
    picture = make_picture()
    whole = render(models, picture, request, tmp_path / "whole", tmp_path / "whole.mp4")

    stopper = StopAfter(models.transformer, sections=2)
    with pytest.raises(Cancelled):
        render(models, picture, request, tmp_path / "job", tmp_path / "job.mp4",
               on_step=stopper.on_step, on_section=stopper.on_section, should_cancel=stopper)
    assert stopper.calls_after == 0  # stopped within the step it was asked in
    assert not (tmp_path / "job.mp4").exists()

    resumed = render(models, picture, request, tmp_path / "job", tmp_path / "job.mp4")
    # Sections are written on the output thread while the next one samples, so the stop can come a section
    # later; the checkpoint holds exactly the sections whose output was written (and reported).
    assert stopper.done >= 2
    assert resumed.resumed_from_section == stopper.done < 4
    assert np.array_equal(video_frames(resumed.video), video_frames(whole.video))


def test_a_crash_after_a_checkpoint_resumes(original_models, tmp_path):
    request = RenderRequest(**TINY, seconds=3.6, seed=11)
    picture = make_picture()
    whole = render(original_models, picture, request, tmp_path / "whole", tmp_path / "whole.mp4")

    class Crash(Exception):
        pass

    reported = []

    def crash_after_first(event):
        reported.append(event.section)
        raise Crash()

    with pytest.raises(Crash):  # raised on the output thread, surfaced by the section loop
        render(original_models, picture, request, tmp_path / "job", tmp_path / "job.mp4",
               on_section=crash_after_first)
    assert not (tmp_path / "job.mp4").exists()
    resumed = render(original_models, picture, request, tmp_path / "job", tmp_path / "job.mp4")
    assert 1 <= resumed.resumed_from_section == max(reported) < request.sections
    assert np.array_equal(video_frames(resumed.video), video_frames(whole.video))


def test_a_checkpoint_of_another_request_is_not_reused(original_models, tmp_path):
    picture = make_picture()
    first = RenderRequest(**TINY, seconds=2.4, seed=1)
    render(original_models, picture, first, tmp_path / "job", tmp_path / "a.mp4")
    second = RenderRequest(**TINY, seconds=2.4, seed=2)
    result = render(original_models, picture, second, tmp_path / "job", tmp_path / "b.mp4")
    assert result.resumed_from_section == 0
    fresh = render(original_models, picture, second, tmp_path / "fresh", tmp_path / "c.mp4")
    assert np.array_equal(video_frames(result.video), video_frames(fresh.video))


def test_cancel_before_start_raises_without_model_calls(original_models, tmp_path):
    calls = []
    handle = original_models.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(Cancelled):
            render(original_models, make_picture(), RenderRequest(**TINY), tmp_path / "w", tmp_path / "v.mp4",
                   should_cancel=lambda: True)
    finally:
        handle.remove()
    assert calls == []


def test_step_and_section_callbacks_carry_previews(f1_models, tmp_path):
    steps, sections = [], []
    request = RenderRequest(**TINY, seconds=2.4, variant="f1")
    render(f1_models, make_picture(), request, tmp_path / "w", tmp_path / "v.mp4",
           on_step=steps.append, on_section=sections.append)
    assert [(e.section, e.step) for e in steps] == [(s, i) for s in (1, 2) for i in (1, 2, 3)]
    strip = steps[-1].preview()
    assert strip.shape == (6, 8 * 9, 3) and strip.dtype == np.uint8
    assert all(e.seconds_per_step >= 0 for e in steps)
    for event in sections:
        assert min(event.sample_seconds, event.decode_seconds, event.output_seconds) >= 0
        with Image.open(event.gif) as gif:
            assert gif.size[0] <= 480 and gif.n_frames > 1
        assert event.gif.stat().st_size <= 2_000_000


def test_history_kept_between_sections_does_not_grow(original_models, tmp_path):
    request = RenderRequest(**{**TINY, "steps": 1}, seconds=9.6)  # 8 sections
    sizes = []

    def record(event):
        saved = torch.load(tmp_path / "w" / "checkpoint.pt", weights_only=False)
        sizes.append(saved["history"].shape[2])

    result = render(original_models, make_picture(), request, tmp_path / "w", tmp_path / "v.mp4",
                    on_section=record)
    assert result.frames == 36 * 8 + 1
    assert max(sizes) <= 19 + 1 and sizes[-1] == sizes[3]


@pytest.mark.parametrize("variant", ["original", "f1"])
def test_pause_mid_section_resumes_at_that_step_with_the_same_video(models_for, tmp_path, variant):
    models = models_for[variant]
    request = RenderRequest(**{**TINY, "steps": 4}, seconds=3.6, variant=variant, seed=9)  # 3 sections
    picture = make_picture()
    whole = render(models, picture, request, tmp_path / "whole", tmp_path / "whole.mp4")

    seen = []

    def pause_in_section_two() -> bool:
        return bool(seen) and seen[-1] == (2, 2)

    with pytest.raises(Paused):
        render(models, picture, request, tmp_path / "job", tmp_path / "job.mp4",
               on_step=lambda e: seen.append((e.section, e.step)), should_pause=pause_in_section_two)
    saved = torch.load(tmp_path / "job" / "checkpoint.pt", weights_only=False)
    assert saved["sections_done"] == 1 and saved["partial"]["sampler"]["step"] == 2

    resumed_steps = []
    resumed = render(models, picture, request, tmp_path / "job", tmp_path / "job.mp4",
                     on_step=lambda e: resumed_steps.append((e.section, e.step)))
    assert resumed_steps[0] == (2, 3)  # carried on from the very next step
    assert len(resumed_steps) == 2 + 4  # the rest of section 2, then section 3
    assert np.array_equal(video_frames(resumed.video), video_frames(whole.video))


def test_pause_between_sections_needs_no_partial_state(original_models, tmp_path):
    request = RenderRequest(**TINY, seconds=2.4, seed=3)
    picture = make_picture()
    asked = []  # asked after section 1's last step: the pause comes at the start of section 2

    def on_step(event):
        if event.section == 1 and event.step == event.steps:
            asked.append(event)

    with pytest.raises(Paused):
        render(original_models, picture, request, tmp_path / "job", tmp_path / "job.mp4",
               on_step=on_step, should_pause=lambda: bool(asked))
    saved = torch.load(tmp_path / "job" / "checkpoint.pt", weights_only=False)
    assert saved["sections_done"] == 1 and saved["partial"] is None
    resumed = render(original_models, picture, request, tmp_path / "job", tmp_path / "job.mp4")
    fresh = render(original_models, picture, request, tmp_path / "fresh", tmp_path / "fresh.mp4")
    assert np.array_equal(video_frames(resumed.video), video_frames(fresh.video))


def test_a_sections_output_is_written_while_the_next_section_samples(original_models, tmp_path):
    request = RenderRequest(**TINY, seconds=2.4, seed=3)  # 2 sections
    picture = make_picture()
    second_sampling = threading.Event()
    waited = []

    def on_step(event):
        if event.section == 2:
            second_sampling.set()

    def on_section(event):
        if event.section == 1:  # written in line with the loop, this would wait for nothing and time out
            waited.append(second_sampling.wait(timeout=120))

    overlapped = render(original_models, picture, request, tmp_path / "a", tmp_path / "a.mp4",
                        on_step=on_step, on_section=on_section)
    assert waited == [True]
    plain = render(original_models, picture, request, tmp_path / "b", tmp_path / "b.mp4")
    assert np.array_equal(video_frames(overlapped.video), video_frames(plain.video))


def test_the_last_sections_two_segments_are_encoded_at_once(original_models, tmp_path, monkeypatch):
    """The last section writes its own frames and the video's far end: its tail, which the person waits for."""
    import engine.render

    request = RenderRequest(**TINY, seconds=2.4, seed=3)  # 2 sections: the second writes two segments
    both = threading.Barrier(2, timeout=60)
    encode = engine.render.write_segment
    met = []

    def meeting(path, frames, crf=16):
        if path.name in ("segment_0000.mp4", "segment_0001.mp4"):  # the last section's; section 1 wrote 0002
            met.append(both.wait())  # written one after the other, the first would wait alone and time out
        return encode(path, frames, crf)

    monkeypatch.setattr(engine.render, "write_segment", meeting)
    result = render(original_models, make_picture(), request, tmp_path / "job", tmp_path / "job.mp4")
    assert sorted(met) == [0, 1]
    monkeypatch.setattr(engine.render, "write_segment", encode)
    plain = render(original_models, make_picture(), request, tmp_path / "plain", tmp_path / "plain.mp4")
    assert np.array_equal(video_frames(result.video), video_frames(plain.video))
