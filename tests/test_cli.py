"""`framepack-bot animate` and `download`, end to end in a subprocess, on the tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_picture
from tiny_models import install_into_hub_cache

from engine.models import HUNYUAN_REPO, REDUX_REPO, TRANSFORMER_REPOS
from engine.sections import Variant
from engine.video import probe
from storage.video_metadata import project_version, read_made_with

CLI = [sys.executable, "-m", "engine.cli"]


def _run(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.run([*CLI, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


@pytest.fixture()
def picture_file(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    make_picture(120, 90).save(path)
    return path


@pytest.mark.parametrize(("variant", "seconds", "frames"), [("original", 2.4, 73), ("f1", 1.2, 37)])
def test_animate_writes_a_playable_mp4_and_previews(tiny_models_dir, tmp_path, picture_file, variant, seconds,
                                                    frames):
    out = tmp_path / "out" / "cat.mp4"
    out.parent.mkdir()
    result = _run(
        ["animate", str(picture_file), "a cat turns its head", "--seconds", str(seconds), "--variant", variant,
         "--steps", "2", "--out", str(out), "--models", str(tiny_models_dir), "--device", "cpu",
         "--resolution", "64"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    info = probe(out)
    assert info.frames == frames and info.fps == 30.0
    assert f"{frames} frames" in result.stdout
    gifs = sorted(out.parent.glob("cat_section*.gif"))
    assert len(gifs) == (frames - 1) // 36
    assert "section" in result.stderr  # the progress bar
    made = read_made_with(out)
    assert (made.prompt, made.variant, made.seconds, made.steps, made.job_id) == (
        "a cat turns its head", variant, seconds, 2, None)
    assert made.version == project_version() and made.cfg == 1.0 and not made.loop


def test_animate_uses_the_hub_cache_by_default(tiny_models_dir, tmp_path, picture_file):
    cache = tmp_path / "hf" / "hub"
    for repo in (HUNYUAN_REPO, REDUX_REPO, TRANSFORMER_REPOS[Variant.ORIGINAL]):
        install_into_hub_cache(tiny_models_dir, cache, repo)
    out = tmp_path / "v.mp4"
    result = _run(
        ["animate", str(picture_file), "waves", "--seconds", "1", "--steps", "1", "--out", str(out),
         "--device", "cpu", "--resolution", "64"],
        cwd=tmp_path, HF_HUB_CACHE=str(cache),
    )
    assert result.returncode == 0, result.stderr
    assert probe(out).frames == 37


def test_animate_without_weights_says_what_to_do(tmp_path, picture_file):
    result = _run(
        ["animate", str(picture_file), "waves", "--device", "cpu", "--out", str(tmp_path / "v.mp4")],
        cwd=tmp_path, HF_HUB_CACHE=str(tmp_path / "empty"),
    )
    assert result.returncode == 3
    assert "framepack-bot download" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seconds", "500"], "between 1 and 120"),
        (["--variant", "f9"], "Unknown variant"),
        (["--steps", "0"], "Steps must be"),
    ],
)
def test_animate_rejects_bad_options(tmp_path, picture_file, args, message):
    result = _run(["animate", str(picture_file), "waves", *args], cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_animate_rejects_a_file_that_is_not_an_image(tmp_path):
    fake = tmp_path / "cat.png"
    fake.write_bytes(b"%PDF-1.4 not a picture")
    result = _run(["animate", str(fake), "waves"], cwd=tmp_path)
    assert result.returncode == 2 and "not an image" in result.stderr


def test_animate_rejects_a_huge_prompt(tmp_path, picture_file):
    result = _run(["animate", str(picture_file), "x" * 5000], cwd=tmp_path)
    assert result.returncode == 2 and "prompt is 5000 characters" in result.stderr


def test_animate_refuses_the_full_model_without_a_gpu(tiny_models_dir, tmp_path, picture_file):
    result = _run(
        ["animate", str(picture_file), "waves", "--models", str(tiny_models_dir)],
        cwd=tmp_path, CUDA_VISIBLE_DEVICES="",
    )
    assert result.returncode == 3
    assert "No CUDA GPU" in result.stderr and "--device cpu" in result.stderr


def test_download_reports_where_the_weights_are(tiny_models_dir, tmp_path):
    cache = tmp_path / "hub"
    for repo in (HUNYUAN_REPO, REDUX_REPO, *TRANSFORMER_REPOS.values()):
        install_into_hub_cache(tiny_models_dir, cache, repo)
    result = _run(["download"], cwd=tmp_path, HF_HUB_CACHE=str(cache))
    assert result.returncode == 0, result.stderr
    for repo in (HUNYUAN_REPO, REDUX_REPO, *TRANSFORMER_REPOS.values()):
        assert repo in result.stdout


def test_download_offline_with_nothing_cached_fails_clearly(tmp_path):
    result = _run(["download", "--variant", "f1"], cwd=tmp_path, HF_HUB_CACHE=str(tmp_path / "empty"))
    assert result.returncode == 3
    assert "download failed" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "."], "--out names a folder"),
        (["--device", "tpu"], "--device takes cpu, cuda or cuda:N"),
        (["--device", "cuda:x"], "--device takes cpu, cuda or cuda:N"),
    ],
)
def test_animate_rejects_a_folder_as_output_and_an_unknown_device(tmp_path, picture_file, args, message):
    result = _run(["animate", str(picture_file), "waves", *args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("prompt", "message"), [("\u200b\u200d \ufeff", "The prompt is empty."), ("waves\x07", "control characters")]
)
def test_animate_rejects_an_invisible_or_control_character_prompt(tmp_path, picture_file, prompt, message):
    result = _run(["animate", str(picture_file), prompt], cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def _doctor(env: dict, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", "doctor"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1", "DATA_DIR": str(tmp_path / "d"),
                                             **env})


def test_doctor_on_a_machine_without_a_gpu_says_why_not(tmp_path, tiny_models_dir):
    done = _doctor({"FRAMEPACK_MODELS_DIR": str(tiny_models_dir)}, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "GPUs: none visible" in done.stdout and "No CUDA GPU is visible" in done.stdout
    assert "weights: present for original, f1" in done.stdout and "RAM:" in done.stdout


def test_doctor_names_a_missing_weights_folder(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    done = _doctor({"FRAMEPACK_MODELS_DIR": str(empty), "FRAMEPACK_AUTO_DOWNLOAD": "false", "ENGINE_DEVICE": "cpu"},
                   tmp_path)
    assert done.returncode == 1
    assert "lllyasviel/FramePackI2V_HY" in done.stdout and "The bot cannot run here" in done.stdout


def test_doctor_passes_a_cpu_machine_with_its_weights(tmp_path, tiny_models_dir):
    done = _doctor({"FRAMEPACK_MODELS_DIR": str(tiny_models_dir), "ENGINE_DEVICE": "cpu"}, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "The bot can run here." in done.stdout


@pytest.mark.parametrize("command", [["animate", "cat.png", "a cat"], ["extend", "v.mp4", "on"], ["download"],
                                     ["doctor"]])
def test_verbose_is_taken_after_the_command_as_framepack_bot_passes_it(command):
    from engine.cli import _parser

    assert _parser().parse_args([command[0], "-v", *command[1:]]).verbose is True
    assert _parser().parse_args(command).verbose is False
