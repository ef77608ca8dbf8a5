"""`framepack-bot extend`, end to end in a subprocess on the tiny models: a render's kept latents, any video."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_picture
from helpers import video_frames
from test_cli import _run
from test_extend import write_video

from engine.video import probe
from storage.video_metadata import read_made_with

TINY = ["--steps", "2", "--device", "cpu", "--resolution", "64"]


def test_extend_a_render_from_its_work_folder_then_extend_the_extension(tiny_models_dir, tmp_path):
    picture = tmp_path / "photo.png"
    make_picture().save(picture)
    models = ["--models", str(tiny_models_dir)]
    made = _run(["animate", str(picture), "a cat turns", "--variant", "f1", "--seconds", "1.2", "--seed", "4",
                 "--out", "cat.mp4", *TINY, *models], cwd=tmp_path)
    assert made.returncode == 0, made.stderr

    first = _run(["extend", "cat.mp4", "a cat turns", "--seconds", "1.2", "--from-work", "cat_work", *TINY, *models],
                 cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    extended = tmp_path / "cat_extended.mp4"
    assert probe(extended).frames == 37 + 36 and "--from-work cat_extended_work" in first.stdout
    settings = read_made_with(extended)
    assert (settings.prompt, settings.seed, settings.seconds, settings.variant) == ("a cat turns", 4, 1.2, "f1")
    assert settings.extends == {"video": "cat.mp4", "frames": 37, "seconds": round(37 / 30, 3),
                                "prompt": "a cat turns", "seed": 4}
    # The render's seed carried on its noise stream: the same video as a render of the whole length.
    whole = _run(["animate", str(picture), "a cat turns", "--variant", "f1", "--seconds", "2.4", "--seed", "4",
                  "--out", "whole.mp4", *TINY, *models], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert np.array_equal(video_frames(extended), video_frames(tmp_path / "whole.mp4"))

    again = _run(["extend", "cat_extended.mp4", "the cat sits", "--seconds", "1.2", "--seed", "8",
                  "--from-work", "cat_extended_work", "--out", "again.mp4", *TINY, *models], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert probe(tmp_path / "again.mp4").frames == 37 + 2 * 36
    assert read_made_with(tmp_path / "again.mp4").extends["prompt"] == "a cat turns"


def test_extend_any_video_file(tiny_models_dir, tmp_path):
    write_video(tmp_path / "clip.webm", frames=45, codec="libvpx-vp9")
    result = _run(["extend", "clip.webm", "the waves roll", "--seconds", "1.2", "--out", "long.mp4", *TINY,
                   "--models", str(tiny_models_dir)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert probe(tmp_path / "long.mp4").frames == 45 + 36
    assert read_made_with(tmp_path / "long.mp4").extends == {"video": "clip.webm", "frames": 45,
                                                             "seconds": round(45 / 30, 3)}


@pytest.mark.parametrize(("args", "message"), [
    (["nothing.mp4", "go on"], "No such video file"),
    (["notes.mp4", "go on"], "not a video I can read"),
    (["notes.mp4", "go on", "--from-work", "."], "no kept latents"),
    (["notes.mp4", "go on", "--seconds", "0"], "duration must be between"),
    (["notes.mp4", " "], "prompt is empty"),
])
def test_extend_refuses_bad_input_with_a_message(tiny_models_dir, tmp_path, args, message):
    (tmp_path / "notes.mp4").write_text("just words")
    result = _run(["extend", *args, *TINY, "--models", str(tiny_models_dir)], cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4"]


def test_a_file_that_is_no_video_is_refused_before_the_models_load(tmp_path):
    (tmp_path / "notes.mp4").write_text("just words")
    (tmp_path / "no_models").mkdir()  # loading would fail with missing weights (exit 3): it never starts
    result = _run(["extend", "notes.mp4", "go on", *TINY, "--models", str(tmp_path / "no_models")], cwd=tmp_path)
    assert result.returncode == 2 and "not a video I can read" in result.stderr, result.stderr
