"""A worker warms up before its first claim (engine/warmup.py): a throw-away render at two bucket shapes,
queued jobs saying a worker is starting up meanwhile, the compile cache's folder made, and a warm-up that
fails is a start-up problem (the jobs wait, none fails)."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from helpers import picture_bytes, wait_for, worker_settings

import engine.worker as worker_module
from bot import texts
from engine.worker import Worker
from storage.jobs import JobParams, JobState, NewJob, WorkerStatus


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch):
    monkeypatch.setattr(worker_module, "NOT_READY_PAUSE_FIRST", 0.2)
    monkeypatch.setattr(worker_module, "NOT_READY_PAUSE_MAX", 0.8)


def _warming(tmp_path, models, **changes):
    return worker_settings(tmp_path, models, engine_warm_up=True, render_resolution=64,
                           engine_compile_cache_dir=tmp_path / "compiled", **changes)


async def _enqueue(store) -> int:
    job = NewJob("telegram", "c", "u1", "a boat drifts", JobParams(seconds=1.0, resolution=64, steps=2))
    return (await store.enqueue(job, picture_bytes())).job_id


async def test_the_worker_warms_up_before_its_first_claim(stores, tmp_path, tiny_models_dir):
    settings = _warming(tmp_path, tiny_models_dir)
    store = await stores(settings)
    job_id = await _enqueue(store)
    seen = []  # (what, starting) in order
    heartbeat, claim = store.heartbeat, store.claim

    async def watched_heartbeat(worker, problem=None, starting=False):
        seen.append(("heartbeat", starting))
        await heartbeat(worker, problem, starting)

    async def watched_claim(worker, lease_seconds=None):
        seen.append(("claim", None))
        return await claim(worker, lease_seconds)

    store.heartbeat, store.claim = watched_heartbeat, watched_claim
    worker = Worker(store, settings, "w1")
    assert (tmp_path / "compiled" / "triton").is_dir()  # the compile cache's folder, made before anything compiles
    await asyncio.wait_for(worker.run(max_jobs=1), 300)
    first_claim = seen.index(("claim", None))
    assert ("heartbeat", True) in seen[:first_claim]  # starting up, said while warming
    assert seen[first_claim - 1] == ("heartbeat", False)  # ready, then the claim
    assert worker.warmed and (await store.get(job_id)).state is JobState.DONE
    assert not (settings.data_dir / "cache" / "warm-up").exists()  # the throw-away renders are gone


async def test_queued_jobs_say_a_worker_is_starting_up(stores, tmp_path, tiny_models_dir):
    store = await stores(worker_settings(tmp_path, tiny_models_dir))
    await store.heartbeat("w1", None, starting=True)
    status = await store.worker_status()
    assert (status.alive, status.ready, status.starting) == (1, 0, 1) and status.stalled
    assert texts.waiting_note(status) == texts.STARTING_UP
    assert await store.worker_problems() == []  # starting up is not a problem: no admin message
    await _enqueue(store)
    summary = texts.queue_summary(await store.user_jobs("telegram", "u1"), await store.positions(),
                                  await store.queue_length(), status)  # what /queue answers
    assert texts.STARTING_UP in summary and texts.NO_WORKER not in summary
    await store.heartbeat("w1")
    status = await store.worker_status()
    assert (status.ready, status.starting) == (1, 0) and texts.waiting_note(status) == ""
    assert texts.waiting_note(WorkerStatus(alive=1, ready=0, problems=("disk full",))) == texts.NO_WORKER


async def test_a_failed_warm_up_is_a_start_up_problem_and_no_job_fails(stores, tmp_path, tiny_models_dir):
    """Damaged weights are found by the warm-up, before any job is claimed: the job waits, its attempts
    untouched, and the worker says why; fixed, it warms up and renders."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    weights = models / "lllyasviel" / "FramePackI2V_HY" / "diffusion_pytorch_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:1000])
    settings = _warming(tmp_path, models)
    store = await stores(settings)
    job_id = await _enqueue(store)
    worker = Worker(store, settings, "w1")
    task = asyncio.create_task(worker.run(max_jobs=1))

    async def said_why():
        problems = await store.worker_problems()
        return problems if problems and "Loading the original models failed" in problems[0][1] else None

    await wait_for(said_why, 120)
    job = await store.get(job_id)
    assert job.state is JobState.QUEUED and job.attempts == 0 and not worker.warmed
    weights.write_bytes(good)  # the operator puts the file back
    worker.models.transformers.clear()
    await asyncio.wait_for(task, 300)
    assert worker.warmed and (await store.get(job_id)).state is JobState.DONE


async def test_a_stop_during_the_warm_up_claims_nothing(stores, tmp_path, tiny_models_dir):
    settings = _warming(tmp_path, tiny_models_dir)
    store = await stores(settings)
    job_id = await _enqueue(store)
    worker = Worker(store, settings, "w1")
    heartbeat = store.heartbeat

    async def stop_once_starting(name, problem=None, starting=False):
        if starting:
            worker.request_stop()  # SIGTERM while warming: the throw-away render stops within a step
        await heartbeat(name, problem, starting)

    store.heartbeat = stop_once_starting
    await asyncio.wait_for(worker.run(), 120)
    assert (await store.get(job_id)).state is JobState.QUEUED and not worker.warmed


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("variant", ["original", "f1"])
def test_the_warm_up_decodes_every_window_length_a_job_decodes(variant, compiled, request, tmp_path, monkeypatch):
    """A compiled decoder compiles again for each new window length, so the warm-up must meet them all;
    an eager one (the default) is warmed by one section a bucket."""
    import torch

    import engine.render
    from engine.sections import Variant
    from engine.stitch import chunk_latents
    from engine.warmup import warm_up

    models = request.getfixturevalue(f"{variant}_models")
    monkeypatch.setattr(models.encoders.vae.decoder, "_framepack_compiled", compiled, raising=False)
    decoded = []
    real_decode = engine.render.vae_decode

    def counting_decode(latents, vae):
        decoded.append(latents.shape[2])
        return real_decode(latents, vae)

    monkeypatch.setattr(engine.render, "vae_decode", counting_decode)
    warm_up(models, 64, tmp_path / "warm-up")
    history = torch.zeros(1, 16, 100, 1, 1)
    in_jobs = {chunk_latents(Variant.parse(variant), history, section, sections, 9).shape[2]
               for sections in range(1, 8) for section in range(sections)}
    if compiled:
        assert set(decoded) == in_jobs
    else:  # one single-section render at each of the two buckets
        assert decoded == [chunk_latents(Variant.parse(variant), history, 0, 1, 9).shape[2]] * 2
