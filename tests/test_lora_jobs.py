"""LoRAs through the queue: stored with the job (name, sha256, strength), checked against LORA_DIR before
queueing, put on by the worker (switching between jobs in one warm worker), a file changed since queueing
failing the job in words, and the LoRAs kept by re-rolls and extensions."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import picture_bytes, video_frames, worker_settings
from lora_files import write_lora

from bot.extending import extension_job, parse_extension, rerolled_extension
from bot.options import Request, parse_caption
from bot.texts import settings_line
from bot.video_info import describe
from engine.worker import Worker
from storage.inputs import InputError
from storage.jobs import Extends, JobLora, JobParams, JobState, NewJob
from storage.lora_catalog import choose_loras, file_sha256, lora_names, matching_names, render_loras
from storage.video_metadata import read_made_with

ONE_SECTION = dict(seconds=1.2, resolution=64, steps=2, seed=3)


@pytest.fixture()
def lora_dir(tmp_path, original_models) -> Path:
    folder = tmp_path / "loras"
    model = original_models.transformer
    write_lora(folder / "style.safetensors", model, "musubi-hunyuan", std=0.1, seed=1)
    write_lora(folder / "Character.safetensors", model, "diffusers", std=0.1, seed=2)
    write_lora(folder / "third.safetensors", model, "original-peft", std=0.1, seed=3)
    write_lora(folder / "fourth.safetensors", model, "musubi-framepack", std=0.1, seed=4)
    (folder / "notes.txt").write_text("not a LoRA")
    return folder


def _job(prompt: str = "a cat waves", **params) -> NewJob:
    return NewJob("telegram", "c", "u", prompt, JobParams(**{**ONE_SECTION, **params}))


# ----- the catalog and the store ---------------------------------------------------------------------------

def test_picks_are_resolved_to_names_and_hashes_and_bad_ones_refused(lora_dir):
    assert lora_names(lora_dir) == ["Character", "fourth", "style", "third"]
    assert matching_names(lora_dir, "h") == ["Character", "fourth", "third"]
    chosen = choose_loras([("style", 0.8), ("character", 1.0)], lora_dir)  # case does not matter
    assert chosen == (JobLora("style", file_sha256(lora_dir / "style.safetensors"), 0.8),
                      JobLora("Character", file_sha256(lora_dir / "Character.safetensors"), 1.0))
    bad = [([("nope", 1.0)], "no LoRA named 'nope'. LoRAs here: Character, fourth, style, third"),
           ([("../loras/style", 1.0)], "no LoRA named"),
           ([("style", 1), ("third", 1), ("fourth", 1), ("Character", 1)], "at most 3 LoRAs, not 4"),
           ([("style", 9.0)], "strength must be between -4 and 4, not 9"),
           ([("style", float("nan"))], "strength must be between"),
           ([("style", 1.0), ("STYLE", 0.5)], "named twice")]
    for picks, message in bad:
        with pytest.raises(InputError, match=message.replace(".", r"\.").replace("(", r"\(")):
            choose_loras(picks, lora_dir)
    with pytest.raises(InputError, match="no LoRAs installed"):
        choose_loras([("style", 1.0)], lora_dir / "missing")


def test_a_hash_is_read_again_only_when_the_file_changes(lora_dir, original_models):
    path = lora_dir / "style.safetensors"
    first = file_sha256(path)
    write_lora(path, original_models.transformer, "musubi-hunyuan", std=0.1, seed=7)
    os.utime(path, ns=(1, 1))  # a new mtime as well as new bytes
    assert file_sha256(path) != first


def test_caption_lora_options():
    request = parse_caption("a cat --lora style:0.8 --lora Character --lora x:-1,5")
    assert request.prompt == "a cat" and request.loras == (("style", 0.8), ("Character", 1.0), ("x", -1.5))
    with pytest.raises(InputError, match="--lora takes NAME or NAME:STRENGTH"):
        parse_caption("a cat --lora style:strong")


async def test_the_store_keeps_a_jobs_loras_and_old_rows_read_back_without(stores, tmp_path, lora_dir):
    settings = worker_settings(tmp_path, tmp_path / "no-models", lora_dir=lora_dir)
    store = await stores(settings)
    loras = choose_loras([("style", 0.5), ("third", -1.0)], lora_dir)
    job_id = (await store.enqueue(_job(loras=loras), picture_bytes())).job_id
    assert (await store.get(job_id)).params.loras == loras
    assert (await store.claim("w1")).params.loras == loras
    stored = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(JobParams()))).items() if k != "loras"}
    assert JobParams(**stored).loras == ()  # params written before LoRAs existed
    assert render_loras(loras, lora_dir)[0] == {"name": "style", "path": str(lora_dir / "style.safetensors"),
                                                "sha256": loras[0].sha256, "strength": 0.5}


# ----- the worker -------------------------------------------------------------------------------------------

async def test_a_warm_worker_renders_each_job_with_its_own_loras(stores, tmp_path, tiny_models_dir, lora_dir):
    """none, style, character, none, style in one worker: the same LoRAs give the same video, others not."""
    settings = worker_settings(tmp_path, tiny_models_dir, lora_dir=lora_dir)
    store = await stores(settings)
    style = choose_loras([("style", 1.0)], lora_dir)
    both = choose_loras([("Character", 0.7), ("third", -0.5)], lora_dir)
    ids = [(await store.enqueue(_job(loras=loras), picture_bytes())).job_id for loras in ((), style, both, (), style)]
    await Worker(store, settings, "w1").run(max_jobs=len(ids))
    jobs = [await store.get(job_id) for job_id in ids]
    assert all(job.state is JobState.DONE for job in jobs), [job.error for job in jobs]
    frames = [video_frames(Path(job.video)) for job in jobs]
    assert np.array_equal(frames[0], frames[3]) and np.array_equal(frames[1], frames[4])  # taken off, put on again
    assert not np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[1], frames[2])
    made = read_made_with(Path(jobs[2].video))
    assert list(made.loras) == [{"name": "Character", "sha256": both[0].sha256, "strength": 0.7},
                                {"name": "third", "sha256": both[1].sha256, "strength": -0.5}]
    assert "LoRA Character 0.7" in describe(made)  # what /info shows


async def test_a_lora_changed_or_removed_after_queueing_fails_the_job_in_words(stores, tmp_path, tiny_models_dir,
                                                                                lora_dir, original_models):
    settings = worker_settings(tmp_path, tiny_models_dir, lora_dir=lora_dir)
    store = await stores(settings)
    changed = (await store.enqueue(_job(loras=choose_loras([("style", 1.0)], lora_dir)), picture_bytes())).job_id
    removed = (await store.enqueue(_job(loras=choose_loras([("third", 1.0)], lora_dir)), picture_bytes())).job_id
    write_lora(lora_dir / "style.safetensors", original_models.transformer, "musubi-hunyuan", seed=11)
    (lora_dir / "third.safetensors").unlink()
    await Worker(store, settings, "w1").run(max_jobs=2)
    changed_job, removed_job = await store.get(changed), await store.get(removed)
    assert changed_job.state is JobState.FAILED and removed_job.state is JobState.FAILED
    assert changed_job.error.startswith("The LoRA style changed since this job was made"), changed_job.error
    assert "The LoRA third cannot be used" in removed_job.error and "no such file" in removed_job.error


# ----- re-rolls and extensions ------------------------------------------------------------------------------

async def test_rerolls_and_extensions_keep_the_loras(stores, tmp_path, lora_dir):
    settings = worker_settings(tmp_path, tmp_path / "no-models", lora_dir=lora_dir)
    store = await stores(settings)
    loras = choose_loras([("style", 0.8)], lora_dir)
    job_id = (await store.enqueue(_job(loras=loras), picture_bytes())).job_id
    source = dataclasses.replace(await store.get(job_id), state=JobState.DONE)
    assert "LoRA style 0.8" in settings_line(source)
    extension = extension_job(_job(), Request(""), settings, Extends(job_id=job_id), source)
    assert extension.params.loras == loras  # the continuation keeps its source's style
    stored_extension = dataclasses.replace(source, params=extension.params, extends=Extends(job_id=job_id))
    again = rerolled_extension(_job(), stored_extension)
    assert again.params.loras == loras
    uploaded = extension_job(_job(), Request("next"), settings, Extends(video_name="v.mp4"))
    assert uploaded.params.loras == ()
    with pytest.raises(InputError, match="keeps the LoRAs"):
        parse_extension("5 the cat jumps --lora style")


def test_the_chat_side_of_loras_needs_no_engine():
    """The chats check picks and run /admin loras without importing torch (bot/ never does)."""
    import subprocess
    import sys

    code = ("import sys, bot.loras, bot.discord_frontend, bot.telegram_frontend, storage.lora_catalog; "
            "sys.exit('torch' in sys.modules or 'engine' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0
