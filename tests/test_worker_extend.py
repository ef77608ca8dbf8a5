"""Extension jobs through the queue and a worker, on the tiny models: of a finished job (and of that extension),
of an uploaded video, cancelled, and given back at a step and resumed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from helpers import job_finished, picture_bytes, reference_video, video_frames, wait_for, worker_settings
from test_extend import write_video

from engine.extend import extend
from engine.render import RenderRequest
from engine.video import probe
from engine.worker import Worker
from storage.jobs import Extends, JobParams, JobState, NewJob
from storage.video_metadata import read_made_with

TINY = dict(resolution=64, steps=3, variant="f1")
SECTION_FRAMES = 36


async def _finished_render(store, settings, seed: int = 4, seconds: float = 1.2) -> int:
    params = JobParams(seconds=seconds, seed=seed, **TINY)
    job_id = (await store.enqueue(NewJob("telegram", "c", "u", "a cat waves", params), picture_bytes())).job_id
    await Worker(store, settings, "w1").run(max_jobs=1)
    assert (await store.get(job_id)).state is JobState.DONE
    return job_id


def _extension(source: int | None = None, video: str | None = None, seed: int = 4, seconds: float = 1.2,
               steps: int = 3, **changes) -> NewJob:
    params = JobParams(**{**TINY, "seconds": seconds, "seed": seed, "steps": steps, **changes})
    return NewJob("telegram", "c", "u", "a cat waves", params, extends=Extends(source, video))


async def test_an_extension_of_a_finished_job_is_the_longer_render_and_extends_again(stores, tmp_path,
                                                                                    tiny_models_dir):
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    source = await _finished_render(store, settings)
    first = (await store.enqueue_extension(_extension(source, upload_limits=(60_000,)))).job_id
    await Worker(store, settings, "w1").run(max_jobs=1)

    job = await store.get(first)
    assert job.state is JobState.DONE, job.error
    assert probe(Path(job.video)).frames == 37 + SECTION_FRAMES
    assert job.progress.section == 1 and job.progress.preview.endswith(".gif")
    small = Path(job.fitted[60_000])
    assert small.stat().st_size <= 60_000 and probe(small).frames == 37 + SECTION_FRAMES
    # The F1 render of one section extended with its own seed by one more is the two-section render.
    longer = JobParams(seconds=2.4, seed=4, **TINY)
    assert np.array_equal(video_frames(Path(job.video)),
                          reference_video(tiny_models_dir, tmp_path, longer, "a cat waves"))
    for delivered in (job.video, small):
        made = read_made_with(Path(delivered))
        assert (made.prompt, made.seed, made.seconds, made.variant, made.job_id) == ("a cat waves", 4, 1.2, "f1",
                                                                                     first)
        assert made.extends["job"] == source and made.extends["frames"] == 37
        assert made.extends["video"] == f"framepack_{source}.mp4"

    # An extension of the extension continues from the extension's own work folder.
    second = (await store.enqueue_extension(_extension(first))).job_id
    await Worker(store, settings, "w1").run(max_jobs=1)
    again = await store.get(second)
    assert again.state is JobState.DONE, again.error
    frames = video_frames(Path(again.video))
    assert len(frames) == 37 + 2 * SECTION_FRAMES
    assert np.array_equal(frames[:40], video_frames(Path(job.video))[:40])


async def test_an_uploaded_video_is_extended_by_the_worker(stores, tmp_path, tiny_models_dir):
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    clip = tmp_path / "holiday.mp4"
    write_video(clip, frames=40)
    job_id = (await store.enqueue_extension(_extension(video="holiday.mp4", seed=9),
                                            clip.read_bytes())).job_id
    await Worker(store, settings, "w1").run(max_jobs=1)
    job = await store.get(job_id)
    assert job.state is JobState.DONE, job.error
    assert probe(Path(job.video)).frames == 40 + SECTION_FRAMES
    made = read_made_with(Path(job.video))
    assert made.extends == {"video": "holiday.mp4", "frames": 40, "seconds": round(40 / 30, 3)}


async def test_a_cancelled_extension_stops_within_a_step_and_writes_no_video(stores, tmp_path, tiny_models_dir):
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    source = await _finished_render(store, settings)
    job_id = (await store.enqueue_extension(_extension(source, seconds=2.4, steps=6))).job_id
    worker = Worker(store, settings, "w1")
    worker.models.get("f1").transformer.register_forward_pre_hook(lambda *_: time.sleep(0.3))
    task = asyncio.create_task(worker.run(max_jobs=1))

    async def stepping():
        return (await store.get(job_id)).progress.step >= 2

    await wait_for(stepping)
    assert await store.cancel(job_id, "telegram", "u") == "stopping"
    await asyncio.wait_for(task, 60)
    job = await store.get(job_id)
    assert job.state is JobState.CANCELLED and job.video is None
    assert not store.files.video_path(job_id).exists()


async def test_an_extension_given_back_at_a_step_resumes_to_the_same_video(stores, tmp_path, tiny_models_dir,
                                                                          f1_models):
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    source = await _finished_render(store, settings)
    job_id = (await store.enqueue_extension(_extension(source, seconds=2.4, seed=11, steps=4))).job_id
    worker = Worker(store, settings, "w1")
    slow = worker.models.get("f1").transformer.register_forward_pre_hook(lambda *_: time.sleep(0.3))
    task = asyncio.create_task(worker.run())

    async def inside_section_two():
        progress = (await store.get(job_id)).progress
        return progress.section == 2 and progress.step >= 2

    await wait_for(inside_section_two)
    worker.request_stop()  # as SIGTERM does: save the step, give the job back
    await asyncio.wait_for(task, 60)
    assert (await store.get(job_id)).state is JobState.QUEUED
    assert (store.files.work_dir(job_id) / "checkpoint.pt").is_file()
    slow.remove()

    await Worker(store, settings, "w2").run(max_jobs=1)
    job = await wait_for(lambda: job_finished(store, job_id))
    assert job.state is JobState.DONE and job.worker == "w2", job.error
    request = RenderRequest(prompt="a cat waves", seconds=2.4, variant="f1", seed=11, steps=4, resolution=64)
    whole = extend(f1_models, store.files.work_dir(source), request, tmp_path / "whole", tmp_path / "whole.mp4")
    assert np.array_equal(video_frames(Path(job.video)), video_frames(whole.video))
