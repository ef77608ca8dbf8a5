"""An idle worker on PostgreSQL claims a job the moment it is queued (LISTEN/NOTIFY), not at its next poll."""

from __future__ import annotations

import asyncio
import socket
import time

from helpers import job_finished, picture_bytes, wait_for, worker_settings

import engine.worker
from engine.worker import Worker
from storage.jobs import JobParams, JobState, NewJob
from storage.store import open_store

POLL_SECONDS = 30.0  # the idle worker's poll interval in this test: a claim sooner came from a notification


async def test_an_idle_worker_claims_a_new_job_well_under_its_poll_interval(tmp_path, tiny_models_dir, postgres_url,
                                                                           monkeypatch):
    monkeypatch.setattr(engine.worker, "IDLE_POLL_SECONDS", POLL_SECONDS)
    settings = worker_settings(tmp_path, tiny_models_dir, database_url=postgres_url)
    worker_store, frontend_store = await open_store(settings), await open_store(settings)
    try:
        idle_claims = []
        claim = worker_store.claim

        async def counting_claim(*args, **kwargs):
            job = await claim(*args, **kwargs)
            idle_claims.append(job is None)
            return job

        worker_store.claim = counting_claim
        running = asyncio.create_task(Worker(worker_store, settings, "w1").run(max_jobs=1))
        await wait_for(lambda: _true(idle_claims), timeout=30, every=0.02)  # it found nothing and waits now
        await asyncio.sleep(0.3)
        queued_at = time.perf_counter()
        params = JobParams(seconds=1.2, resolution=64, steps=2)
        job_id = (await frontend_store.enqueue(NewJob("telegram", "c", "u", "a cat", params), picture_bytes())).job_id
        await wait_for(lambda: _running(frontend_store, job_id), timeout=POLL_SECONDS, every=0.01)
        waited = time.perf_counter() - queued_at
        print(f"idle worker claimed a new job {waited * 1000:.0f} ms after it was queued (poll interval "
              f"{POLL_SECONDS:.0f} s)")
        # the job shows running once the claim commits, a moment before the worker's claim call returns
        await wait_for(lambda: _true(idle_claims[1:]), timeout=10, every=0.01)
        assert waited < 2.0 and idle_claims == [True, False]
        await asyncio.wait_for(running, timeout=120)
        assert (await wait_for(lambda: job_finished(frontend_store, job_id))).state is JobState.DONE
        (described,) = await frontend_store.workers()  # for /admin workers
        assert (described.name, described.host, described.gpu) == ("w1", socket.gethostname(), "cpu")
        assert described.plan and described.seconds_per_step > 0
    finally:
        await worker_store.close()
        await frontend_store.close()


async def _true(values: list) -> bool:
    return bool(values)


async def _running(store, job_id: int) -> bool:
    return (await store.get(job_id)).state is not JobState.QUEUED
