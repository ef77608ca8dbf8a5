"""A worker passes a directed job (end picture, keyframe, timed prompts, negative prompt with CFG) to render()."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from conftest import make_picture
from helpers import picture_bytes, video_frames, worker_settings

from engine.models import load_models
from engine.render import RenderRequest, render
from engine.worker import Worker
from storage.jobs import GuidePictures, JobParams, JobPictures, JobState, NewJob


def _png(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_a_worker_renders_a_directed_job_as_render_would(stores, tmp_path, tiny_models_dir):
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    prompt = "[0s: a cat sits] [1.2s: the cat jumps]"
    params = JobParams(seconds=2.4, seed=5, resolution=64, steps=2, cfg=2.0, cfg_rescale=0.3,
                       negative_prompt="blurry", end_strength=0.8)
    end, key = make_picture(seed=1), make_picture(seed=2)
    guides = GuidePictures(end=True, keyframes=(1.5,))
    job_id = (await store.enqueue(NewJob("telegram", "c", "u", prompt, params, guides=guides),
                                  JobPictures(picture_bytes(), _png(end), (_png(key),)))).job_id
    await Worker(store, settings, "w1").run(max_jobs=1)
    job = await store.get(job_id)
    assert job.state is JobState.DONE, job.error

    request = RenderRequest(prompt=prompt, seconds=2.4, seed=5, steps=2, resolution=64, cfg=2.0, cfg_rescale=0.3,
                            negative_prompt="blurry", end_strength=0.8)
    reference = render(load_models("original", "cpu", tiny_models_dir), make_picture(), request,
                       tmp_path / "reference", tmp_path / "reference.mp4", end_image=end, keyframes=[(1.5, key)])
    assert np.array_equal(video_frames(Path(job.video)), video_frames(reference.video))
    plain = RenderRequest(prompt="a cat sits", seconds=2.4, seed=5, steps=2, resolution=64)
    different = render(load_models("original", "cpu", tiny_models_dir), make_picture(), plain,
                       tmp_path / "plain", tmp_path / "plain.mp4")
    assert not np.array_equal(video_frames(Path(job.video)), video_frames(different.video))
