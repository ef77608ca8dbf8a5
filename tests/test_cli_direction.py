"""`framepack-bot animate` with an end frame, keyframes, timed prompts, a loop and true CFG, on the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_picture
from test_cli import _run

from engine.video import probe
from storage.video_metadata import read_made_with

TINY = ["--seconds", "2.4", "--steps", "2", "--device", "cpu", "--resolution", "64"]


@pytest.fixture()
def pictures(tmp_path) -> dict[str, Path]:
    paths = {}
    for name, seed in (("start", 0), ("end", 1), ("middle", 2)):
        paths[name] = tmp_path / f"{name}.png"
        make_picture(120, 90, seed=seed).save(paths[name])
    return paths


@pytest.mark.parametrize(("name", "options"), [
    ("end", ["--end-image", "{end}", "--end-strength", "0.8"]),
    ("keyframe", ["--keyframe", "1.5:{middle}"]),
    ("loop", ["--loop"]),
    ("cfg", ["--negative", "blurry, still", "--cfg", "2", "--cfg-rescale", "0.5"]),
])
def test_animate_with_each_direction_option(tiny_models_dir, tmp_path, pictures, name, options):
    out = tmp_path / f"{name}.mp4"
    options = [option.format(**{k: str(v) for k, v in pictures.items()}) for option in options]
    result = _run(["animate", str(pictures["start"]), "a cat turns its head", *TINY, *options, "--out", str(out),
                   "--models", str(tiny_models_dir)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert probe(out).frames == 73
    made = read_made_with(out)  # each option is in the video's own settings
    recorded = {"end": (made.end_picture, made.end_strength), "keyframe": made.keyframes, "loop": made.loop,
                "cfg": (made.negative_prompt, made.cfg, made.cfg_rescale)}[name]
    assert recorded == {"end": (True, 0.8), "keyframe": (1.5,), "loop": True, "cfg": ("blurry, still", 2.0, 0.5)}[name]


def test_animate_with_timed_prompts(tiny_models_dir, tmp_path, pictures):
    out = tmp_path / "timed.mp4"
    result = _run(["animate", str(pictures["start"]), "[0s: a cat sits] [1.2s: the cat jumps]", *TINY,
                   "--out", str(out), "--models", str(tiny_models_dir)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert probe(out).frames == 73


def _refused(argv: list[str], monkeypatch, capsys) -> str:
    """The CLI's exit code 2 and its message, run in this process (each refusal comes before any model is
    loaded; the end-to-end runs above go through a real subprocess)."""
    from engine.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    return err


@pytest.mark.parametrize(("options", "message"), [
    (["--keyframe", "3:{middle}"], "outside the video"),
    (["--keyframe", "1:{notes}"], "The keyframe at 1s: "),
    (["--keyframe", "{middle}"], "SECONDS:PATH"),
    (["--end-image", "{notes}"], "The end picture: "),
    (["--end-image", "{end}", "--variant", "f1"], "original variant"),
    (["--keyframe", "1:{middle}", "--variant", "f1"], "original variant"),
    (["--loop", "--end-image", "{end}"], "leave out the end picture"),
    (["--cfg", "40"], "CFG must be between 1"),
    (["--cfg", "2", "--cfg-rescale", "3"], "rescale"),
    (["--end-strength", "0"], "strength"),
])
def test_animate_refuses_bad_direction_options(tmp_path, pictures, options, message, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    names = {**{k: str(v) for k, v in pictures.items()}, "notes": str(notes)}
    out = tmp_path / "out.mp4"
    err = _refused(["animate", str(pictures["start"]), "waves", *TINY, *[o.format(**names) for o in options],
                    "--out", str(out)], monkeypatch, capsys)
    assert message in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "out_work").exists()


def test_animate_refuses_timed_prompts_out_of_order(tmp_path, pictures, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = _refused(["animate", str(pictures["start"]), "[0s: sits] [2s: jumps] [1s: lands]", *TINY],
                   monkeypatch, capsys)
    assert "time order" in err
