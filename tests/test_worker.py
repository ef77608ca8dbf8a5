"""Engine workers on the tiny models: jobs in, MP4s out, cancel, crash recovery, clean shutdown."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    damage_input,
    job_finished,
    picture_bytes,
    reference_video,
    video_frames,
    wait_for,
    worker_env,
    worker_settings,
)

from engine.video import probe
from engine.worker import Worker
from storage.jobs import JobParams, JobState, NewJob
from storage.settings import Settings
from storage.video_metadata import read_made_with

TINY_PARAMS = dict(resolution=64, steps=3)


def _start_worker(settings: Settings, name: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "engine.worker", "--name", name], env=worker_env(settings),
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )


async def _run_until_finished(settings, store, job_id: int, name: str, log: Path):
    """Start a worker process, wait until the job has finished, stop the worker; returns the job."""
    worker = _start_worker(settings, name, log)
    try:
        return await wait_for(lambda: job_finished(store, job_id), timeout=180)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


async def test_a_worker_turns_a_queued_job_into_an_mp4_and_upload_copies(stores, tmp_path, tiny_models_dir):
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    params = JobParams(seconds=2.4, variant="f1", seed=4, upload_limits=(60_000, 10**9), **TINY_PARAMS)
    job_id = (await store.enqueue(NewJob("telegram", "c", "u", "a cat waves", params), picture_bytes())).job_id
    worker = Worker(store, settings, "w1")
    await worker.run(max_jobs=1)

    job = await store.get(job_id)
    assert job.state is JobState.DONE, job.error
    assert probe(Path(job.video)).frames == 73
    small = Path(job.fitted[60_000])
    assert small.stat().st_size <= 60_000 and probe(small).frames == 73
    assert job.progress.section == 2 and job.progress.preview.endswith(".gif")
    assert job.video_for_limit(10**9) == job.fitted[10**9]
    # Every delivered file says how it was made, the re-encoded upload copy too.
    for delivered in (job.video, *job.fitted.values()):
        made = read_made_with(Path(delivered))
        assert (made.prompt, made.seed, made.variant, made.steps, made.seconds) == ("a cat waves", 4, "f1", 3, 2.4)
        assert (made.job_id, made.platform, made.resolution, made.end_picture, made.keyframes) == (
            job_id, "telegram", 64, False, ())
    speed, workers = await store.speed()
    assert speed.seconds_per_step != settings.default_seconds_per_step  # measured, not the default
    frames = video_frames(Path(job.video))
    assert np.array_equal(frames, reference_video(tiny_models_dir, tmp_path, params, "a cat waves"))


async def test_a_job_asking_for_teacache_gets_it(stores, tmp_path, tiny_models_dir):
    """The person's "fast" choice travels in the job to the render: the same video as a local TeaCache render."""
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    params = JobParams(seconds=1.2, seed=9, resolution=64, steps=5, teacache=1.0)  # 1.0 skips most calls
    job_id = (await store.enqueue(NewJob("discord", "c", "u", "rain falls", params), picture_bytes())).job_id
    await store.record_speed("w1", seconds_per_step=1.0, section_overhead=2.0)  # a plain figure to divide by
    await Worker(store, settings, "w1").run(max_jobs=1)
    job = await store.get(job_id)
    assert job.state is JobState.DONE and job.params.teacache == 1.0, job.error
    speed, _ = await store.speed()  # measured as TeaCache: the factor moved, the plain figures did not
    assert (speed.seconds_per_step, speed.section_overhead) == (1.0, 2.0)
    assert speed.teacache_factor != settings.default_teacache_factor and speed.teacache_factor > 0
    frames = video_frames(Path(job.video))
    assert np.array_equal(frames, reference_video(tiny_models_dir, tmp_path / "cached", params, "rain falls"))
    plain = reference_video(tiny_models_dir, tmp_path / "plain", JobParams(**{**params.__dict__, "teacache": 0.0}),
                            "rain falls")
    assert not np.array_equal(frames, plain)


async def test_cancel_of_a_running_job_stops_it_within_a_step(stores, tmp_path, tiny_models_dir):
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    params = JobParams(seconds=4.8, seed=1, resolution=64, steps=6)  # 4 sections of 6 steps
    job_id = (await store.enqueue(NewJob("discord", "c", "owner", "waves", params), picture_bytes())).job_id
    worker = Worker(store, settings, "w1")
    # Steps as slow as the worker's cancel poll (0.5 s), and a count of model calls after the cancel.
    transformer = worker.models.get("original").transformer
    calls_after = []

    def slow_step(*_):
        time.sleep(0.5)
        if cancelled.is_set():
            calls_after.append(1)

    cancelled = asyncio.Event()
    transformer.register_forward_pre_hook(slow_step)
    task = asyncio.create_task(worker.run(max_jobs=1))

    async def in_second_section():
        job = await store.get(job_id)
        return job.progress.section >= 2 and job.progress.step >= 1

    await wait_for(in_second_section)
    assert await store.cancel(job_id, "discord", "owner") == "stopping"
    cancelled.set()
    await asyncio.wait_for(task, 60)
    job = await store.get(job_id)
    assert job.state is JobState.CANCELLED
    # Seen at the next poll (at most one step later), then no step starts after it.
    assert len(calls_after) <= 2, len(calls_after)
    assert job.video is None


async def test_a_broken_job_fails_and_the_worker_takes_the_next(stores, tmp_path, tiny_models_dir):
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    broken = (await store.enqueue(NewJob("telegram", "c", "a", "x", JobParams(**TINY_PARAMS)), picture_bytes())).job_id
    damage_input(store, broken)  # e.g. a bad sector after it was queued
    good = (await store.enqueue(NewJob("telegram", "c", "b", "y", JobParams(seconds=1, **TINY_PARAMS)),
                                picture_bytes())).job_id
    await Worker(store, settings, "w1").run(max_jobs=2)
    assert (await store.get(broken)).state is JobState.FAILED
    assert "not an image" in (await store.get(broken)).error
    assert (await store.get(good)).state is JobState.DONE


async def test_kill_9_mid_job_then_recovery_gives_the_uninterrupted_video(stores, tmp_path, tiny_models_dir,
                                                                         backend_under_test):
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    params = JobParams(seconds=4.8, seed=21, resolution=64, steps=4)
    job_id = (await store.enqueue(NewJob("telegram", "c", "u", "a dog runs", params), picture_bytes())).job_id
    log = tmp_path / "workers.log"
    first = _start_worker(settings, "doomed", log)
    try:
        async def mid_section_three():
            # Section 2's preview comes with its checkpoint, from render's output thread, which may still be
            # writing while section 3 samples: wait for both.
            job = await store.get(job_id)
            written = (job.progress.preview or "").endswith("section_0002.gif")
            return job.progress.section >= 3 and job.progress.step >= 2 and written

        await wait_for(mid_section_three, timeout=180)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        first.kill()
    assert (await store.get(job_id)).state is JobState.RUNNING  # still leased by the dead worker

    job = await _run_until_finished(settings, store, job_id, "rescuer", log)
    assert job.state is JobState.DONE and job.worker == "rescuer" and job.attempts == 2, log.read_text()[-3000:]
    # With a bucket, the bucket's checkpoint wins, and section 2's is uploaded after its files: a kill before that
    # upload resumes at section 2 (as in test_two_hosts); the video is the same either way.
    sections = (3,) if backend_under_test == "sqlite" else (2, 3)
    assert any(f"resuming at section {n}" in log.read_text() for n in sections), log.read_text()[-3000:]
    reference = reference_video(tiny_models_dir, tmp_path, params, "a dog runs")
    assert np.array_equal(video_frames(Path(job.video)), reference)


async def test_sigterm_gives_the_job_back_at_its_step_and_it_resumes(stores, tmp_path, tiny_models_dir):
    settings = worker_settings(tmp_path, tiny_models_dir, lease_seconds=30.0)
    store = await stores(settings)
    params = JobParams(seconds=2.4, seed=8, resolution=64, steps=30)  # long sections: the stop lands inside one
    job_id = (await store.enqueue(NewJob("discord", "c", "u", "leaves fall", params), picture_bytes())).job_id
    log = tmp_path / "workers.log"
    first = _start_worker(settings, "first", log)

    async def early_in_section_one():
        job = await store.get(job_id)
        return job.progress.section >= 1 and job.progress.step >= 3

    await wait_for(early_in_section_one, timeout=180)
    stopped_at = time.monotonic()
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 0
    assert time.monotonic() - stopped_at < 30
    job = await store.get(job_id)
    assert job.state is JobState.QUEUED and job.attempts == 0  # a clean stop is not a failure
    assert "given back to the queue" in log.read_text()

    job = await _run_until_finished(settings, store, job_id, "second", log)
    assert job.state is JobState.DONE, log.read_text()[-3000:]
    assert ", step " in log.read_text()  # resumed inside the section, not from its start
    reference = reference_video(tiny_models_dir, tmp_path, params, "leaves fall")
    assert np.array_equal(video_frames(Path(job.video)), reference)


async def test_four_worker_processes_run_each_job_once(stores, tmp_path, tiny_models_dir):
    settings = worker_settings(tmp_path, tiny_models_dir, lease_seconds=30.0)
    store = await stores(settings)
    ids = []
    for i in range(8):
        params = JobParams(seconds=1, seed=i, resolution=64, steps=1)
        ids.append((await store.enqueue(NewJob("telegram", "c", f"u{i}", "hi", params), picture_bytes())).job_id)
    log = tmp_path / "workers.log"
    workers = [_start_worker(settings, f"w{i}", log) for i in range(4)]
    try:
        async def all_done():
            jobs = [await store.get(i) for i in ids]
            return jobs if all(j.state.finished for j in jobs) else None

        jobs = await wait_for(all_done, timeout=240)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=60)
    text = log.read_text()
    assert all(j.state is JobState.DONE and j.attempts == 1 for j in jobs), text[-3000:]
    for job_id in ids:
        assert text.count(f"job {job_id} claimed by") == 1
    assert len({j.worker for j in jobs}) >= 2


@pytest.mark.parametrize("variant", ["original"])
async def test_variant_swap_keeps_one_transformer(stores, tmp_path, tiny_models_dir, variant):
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    for v in (variant, "f1"):
        await store.enqueue(NewJob("telegram", "c", "u", "x", JobParams(seconds=1, variant=v, **TINY_PARAMS)),
                            picture_bytes())
    worker = Worker(store, settings, "w1")
    await worker.run(max_jobs=2)
    assert [v.value for v in worker.models.transformers] == ["f1"]
    assert [j.state for j in await store.user_jobs("telegram", "u", include_finished=True)] == [JobState.DONE] * 2


async def test_the_upload_copies_are_made_while_the_next_job_renders(stores, tmp_path, tiny_models_dir,
                                                                     monkeypatch):
    """Back to back: job 1's stamping and upload copies (ffmpeg) run while job 2 renders, and both videos are
    the ones each job gives alone."""
    import threading

    import engine.video

    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    params = [JobParams(seconds=1.2, seed=s, upload_limits=(30_000,), **TINY_PARAMS) for s in (5, 6)]
    ids = [(await store.enqueue(NewJob("telegram", "c", f"u{i}", "a kite flies", p), picture_bytes())).job_id
           for i, p in enumerate(params)]
    second_claimed = threading.Event()
    claim, fit = store.claim, engine.video.fit_to_size

    async def watched_claim(worker, lease_seconds=None):
        job = await claim(worker, lease_seconds)
        if job is not None and job.id == ids[1]:
            second_claimed.set()
        return job

    def fit_once_the_next_job_runs(src, dst, max_bytes, *args):
        if Path(src).parent.name == str(ids[0]):  # job 1's own video
            # a worker that made its copies before claiming again would never get past this
            assert second_claimed.wait(60), "job 2 was not claimed while job 1's copies were being made"
        return fit(src, dst, max_bytes, *args)

    store.claim = watched_claim
    monkeypatch.setattr(engine.video, "fit_to_size", fit_once_the_next_job_runs)
    await asyncio.wait_for(Worker(store, settings, "w1").run(max_jobs=2), 300)
    for job_id, p in zip(ids, params, strict=True):
        job = await store.get(job_id)
        assert job.state is JobState.DONE, job.error
        fitted = Path(job.fitted[30_000])
        assert fitted.stat().st_size <= 30_000 and read_made_with(fitted).seed == p.seed
        expected = reference_video(tiny_models_dir, tmp_path / f"ref{job_id}", p, "a kite flies")
        assert np.array_equal(video_frames(Path(job.video)), expected)


async def test_the_next_job_samples_while_the_last_section_is_written(stores, tmp_path, tiny_models_dir, monkeypatch):
    """Back to back: job 1 gives up the GPU after its last decode, so job 2 samples while job 1's last
    segment, its join and its continuation are still being written; both videos are each job's alone."""
    import threading

    import engine.render

    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    params = [JobParams(seconds=1.2, seed=s, **TINY_PARAMS) for s in (7, 8)]
    ids = [(await store.enqueue(NewJob("telegram", "c", f"u{i}", "a kite flies", p), picture_bytes())).job_id
           for i, p in enumerate(params)]
    second_stepped = threading.Event()
    report, join = store.report_progress, engine.render._join_segments

    async def watched_report(job_id, worker, progress, lease=None):
        if job_id == ids[1] and progress.step >= 1:
            second_stepped.set()
        return await report(job_id, worker, progress, lease)

    def join_once_the_next_job_samples(job, segments, out_path, resumed_from):
        if job.work_dir.name == str(ids[0]):
            # a worker that kept the GPU until the render's end would never get past this
            assert second_stepped.wait(60), "job 2 did not sample while job 1 was joining its segments"
        return join(job, segments, out_path, resumed_from)

    store.report_progress = watched_report
    monkeypatch.setattr(engine.render, "_join_segments", join_once_the_next_job_samples)
    worker = Worker(store, settings, "w1")
    await asyncio.wait_for(worker.run(max_jobs=2), 300)
    assert not worker.past_the_gpu and not worker.finishing and not worker.gpu.locked()
    for job_id, p in zip(ids, params, strict=True):
        job = await store.get(job_id)
        assert job.state is JobState.DONE, job.error
        expected = reference_video(tiny_models_dir, tmp_path / f"ref{job_id}", p, "a kite flies")
        assert np.array_equal(video_frames(Path(job.video)), expected)


async def _claimed_while_the_gpu_is_held(stores, tmp_path, tiny_models_dir):
    """A worker whose GPU turn the test holds (as the last job would) and the job it has claimed meanwhile."""
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    job_id = (await store.enqueue(NewJob("discord", "c", "owner", "waves", JobParams(**TINY_PARAMS)),
                                  picture_bytes())).job_id
    worker = Worker(store, settings, "w1")
    worker.gpu.acquire()  # the last job's turn
    task = asyncio.create_task(worker.run(max_jobs=1))

    async def claimed():
        return (await store.get(job_id)).state is JobState.RUNNING

    await wait_for(claimed)
    return store, worker, task, job_id


async def test_a_job_cancelled_while_it_waits_for_the_gpu_is_dropped_before_any_model_loads(stores, tmp_path,
                                                                                          tiny_models_dir):
    """Back to back, the next job is claimed while the last one may still hold the GPU (a damaged segment
    rendered again) or its transformer: cancelled in that wait, it ends cancelled and nothing is loaded."""
    store, worker, task, job_id = await _claimed_while_the_gpu_is_held(stores, tmp_path, tiny_models_dir)
    assert await store.cancel(job_id, "discord", "owner") == "stopping"
    await asyncio.sleep(1.0)  # the worker's cancel poll (0.5 s) sees it while the job waits
    worker.gpu.release()
    await asyncio.wait_for(task, 60)
    job = await store.get(job_id)
    assert job.state is JobState.CANCELLED and job.video is None
    assert worker.models.encoders is None and not worker.models.transformers
    assert not worker.gpu.locked()


async def test_a_stop_while_the_claimed_job_waits_for_the_gpu_gives_it_back_untouched(stores, tmp_path,
                                                                                       tiny_models_dir):
    store, worker, task, job_id = await _claimed_while_the_gpu_is_held(stores, tmp_path, tiny_models_dir)
    worker.request_stop()
    worker.gpu.release()
    await asyncio.wait_for(task, 60)
    assert (await store.get(job_id)).state is JobState.QUEUED
    assert worker.models.encoders is None and not worker.models.transformers
