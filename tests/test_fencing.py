"""Fenced leases on both backends: every worker write carries its claim's number (Job.lease), and once the job was
taken over (the lease ran out, a later claim got a higher number) the old claim's writes change nothing, even when
the new claim runs under the same worker name (a host that came back with its old name)."""

from __future__ import annotations

import asyncio

import pytest
from test_storage import PNG, _job

from storage.jobs import JobState, Progress
from storage.settings import Settings
from storage.store import open_store


@pytest.fixture()
async def open_stores(tmp_path, database_url):
    """Opens stores (as separate processes would) on the test's backend; closes them all."""
    opened = []

    async def open_one():
        opened.append(await open_store(Settings(data_dir=tmp_path / "data", database_url=database_url)))
        return opened[-1]

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture()
async def store(open_stores):
    return await open_stores()


async def _taken_over(store, worker: str = "gpu0"):
    """A job claimed by `worker`, whose lease ran out, claimed again by `worker` from another host."""
    job_id = (await store.enqueue(_job(), PNG)).job_id
    old = await store.claim(worker, lease_seconds=0.1)
    await asyncio.sleep(0.2)
    new = await store.claim(worker, lease_seconds=30)
    assert old.id == new.id == job_id and (old.lease, new.lease) == (1, 2)
    return old, new


async def test_a_claim_numbers_its_lease_and_the_row_reads_it_back(store):
    job_id = (await store.enqueue(_job(), PNG)).job_id
    assert (await store.get(job_id)).lease == 0
    claimed = await store.claim("gpu0")
    assert claimed.lease == 1 and (await store.get(job_id)).lease == 1
    assert await store.release(job_id, "gpu0", lease=1)
    assert (await store.claim("gpu1")).lease == 2


async def test_a_taken_over_lease_refuses_every_write(store):
    old, new = await _taken_over(store)
    job_id = old.id
    assert await store.report_progress(job_id, "gpu0", Progress(2, 2, 9, 9), lease=old.lease) is False
    assert not await store.renew(job_id, "gpu0", lease=old.lease)
    assert not await store.fail(job_id, "gpu0", "late failure", lease=old.lease)
    assert not await store.mark_cancelled(job_id, "gpu0", lease=old.lease)
    assert not await store.release(job_id, "gpu0", lease=old.lease)
    assert not await store.complete(job_id, "gpu0", "late.mp4", {}, lease=old.lease)
    job = await store.get(job_id)
    assert job.state is JobState.RUNNING and job.progress == Progress() and job.lease == new.lease
    # The new claim's writes go through.
    assert await store.report_progress(job_id, "gpu0", Progress(1, 2, 3, 9), lease=new.lease)
    assert await store.renew(job_id, "gpu0", lease=new.lease)
    assert await store.complete(job_id, "gpu0", "v.mp4", {}, lease=new.lease)
    done = await store.get(job_id)
    assert done.state is JobState.DONE and done.video == "v.mp4" and done.progress.step == 3


async def test_the_lease_number_fences_a_store_that_never_claimed(open_stores):
    """A worker's process restarted (a new store, nothing remembered) writes under the number it was given."""
    first = await open_stores()
    old, new = await _taken_over(first)
    other = await open_stores()
    assert not await other.renew(old.id, "gpu0", lease=old.lease)
    assert await other.renew(old.id, "gpu0", lease=new.lease)
    assert not await other.fail(old.id, "gpu0", "late", lease=old.lease)
    assert await other.fail(old.id, "gpu0", "now", lease=new.lease)
    assert (await first.get(old.id)).state is JobState.FAILED
