"""The job queue's contract: enqueue, quota, limits, claims and leases, fair order, cancel, ETA, delivery.

Every test that takes `store`, `open_stores` or `database_url` runs twice: on SQLite and on a real PostgreSQL
server (tests/postgres_server.py, a fresh database per test). The few at the end that are about SQLite's own
file are SQLite only. PostgreSQL's own (fencing, SKIP LOCKED, NOTIFY): tests/test_postgres_store.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import sqlite3
import time

import pytest
from PIL import Image

from storage.eta import Speed, start_and_finish
from storage.inputs import InputError
from storage.jobs import JobParams, JobState, NewJob, Progress, QueueFull
from storage.schema import MIGRATIONS
from storage.settings import Settings
from storage.sqlite_store import MAX_ATTEMPTS, SqliteJobStore
from storage.store import open_store


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


def _settings(tmp_path, **changes) -> Settings:
    base = dict(data_dir=tmp_path / "data", max_queued_per_user=3, fair_queue=True, lease_seconds=30.0,
                default_seconds_per_step=2.0, default_section_overhead=5.0)
    return Settings(**{**base, **changes})


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request) -> str | None:
    """None: SQLite under the data folder; else a new, empty PostgreSQL database."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture()
async def open_stores(tmp_path, database_url):
    """Opens stores on the test's backend through open_store, as serve and the workers do; closes them all."""
    opened = []

    async def open_one(**changes):
        opened.append(await open_store(_settings(tmp_path, database_url=database_url, **changes)))
        return opened[-1]

    yield open_one
    for s in opened:
        await s.close()


@pytest.fixture()
async def store(open_stores):
    return await open_stores()


def _job(user: str = "u1", platform: str = "telegram", **params) -> NewJob:
    return NewJob(platform=platform, chat_id="chat", user_id=user, prompt="a cat", params=JobParams(**params))


async def test_enqueue_stores_request_and_picture_together(store):
    first = await store.enqueue(_job(), PNG)
    second = await store.enqueue(_job("u2"), PNG)
    assert (first.position, second.position) == (1, 2)
    job = await store.get(first.job_id)
    assert job.state is JobState.QUEUED and job.prompt == "a cat" and job.params.steps == 25
    assert store.files.input_path(first.job_id).read_bytes() == PNG
    assert store.files.input_path(first.job_id).parent.name == str(first.job_id)  # named by id only
    assert await store.queue_length() == 2


async def test_quota_is_enforced_and_a_refusal_stores_nothing(store):
    for _ in range(3):
        await store.enqueue(_job(), PNG)
    with pytest.raises(QueueFull, match="limit is 3"):
        await store.enqueue(_job(), PNG)
    assert await store.queue_length() == 3
    assert sorted(p.name for p in store.files.root.iterdir()) == ["1", "2", "3"]
    await store.enqueue(_job("someone-else"), PNG)  # the quota is per person


async def test_requests_over_the_limits_are_refused(store):
    with pytest.raises(InputError, match="between 1 and 120"):
        await store.enqueue(_job(seconds=121), PNG)
    await store.set_limit("max_steps", "20", "admin")
    with pytest.raises(InputError, match="Steps must be between 1 and 20"):
        await store.enqueue(_job(steps=25), PNG)
    await store.set_limit("allowed_variants", "f1", "admin")
    with pytest.raises(InputError, match="switched off"):
        await store.enqueue(_job(variant="original", steps=10), PNG)
    assert await store.queue_length() == 0


async def test_check_request_refuses_like_enqueue_without_a_picture(store):
    """Frontends call it before downloading anything; it must agree with enqueue and store nothing."""
    await store.check_request(_job())
    with pytest.raises(InputError, match="between 1 and 120"):
        await store.check_request(_job(seconds=121))
    with pytest.raises(InputError, match="Unknown variant 'sdxl'"):
        await store.check_request(_job(variant="sdxl"))
    with pytest.raises(InputError, match="seed must be"):
        await store.check_request(_job(seed=-1))
    with pytest.raises(InputError, match="TeaCache threshold"):
        await store.check_request(_job(teacache=1.5))
    for _ in range(3):
        await store.enqueue(_job(), PNG)
    with pytest.raises(QueueFull, match="limit is 3"):
        await store.check_request(_job())
    await store.check_request(_job("someone-else"))
    assert await store.queue_length() == 3


async def test_limits_persist_and_bad_values_are_rejected(open_stores):
    store = await open_stores()
    limits = await store.set_limit("max-seconds", "30", "admin:42")
    assert limits.max_seconds == 30.0
    await store.set_limit("allowed_variants", "f1, original", "admin:42")
    for name, value, reason in [
        ("max_seconds", "500", "between 1 and 120"),
        ("max_seconds", "soon", "must be a number"),
        ("max_steps", "2.5", "whole number"),
        ("max_queued_per_user", "-1", "between 0 and 1000"),
        ("allowed_variants", "f1,f2", "comma list"),
        ("allowed_variants", "", "comma list"),
        ("max_gpus", "3", "Unknown limit"),
    ]:
        with pytest.raises(InputError, match=reason):
            await store.set_limit(name, value, "admin:42")
    changes = await store.limit_changes()
    assert changes["max_seconds"][0] == "admin:42"
    await store.close()

    reopened = await open_stores()
    limits = await reopened.get_limits()
    assert limits.max_seconds == 30.0 and limits.allowed_variants == ("f1", "original")
    assert limits.max_steps == reopened.settings.max_steps  # untouched by the rejected values


async def test_fair_order_interleaves_people(open_stores):
    store = await open_stores(max_queued_per_user=10)
    a = [(await store.enqueue(_job("a"), PNG)).job_id for _ in range(3)]
    b = (await store.enqueue(_job("b"), PNG)).job_id
    c = (await store.enqueue(_job("c"), PNG)).job_id
    assert (await store.position(b))[0] == 2 and (await store.position(c))[0] == 3
    assert (await store.position(a[1]))[0] == 4
    order = [(await store.claim("w")).id for _ in range(5)]
    assert order == [a[0], b, c, a[1], a[2]]


async def test_fifo_order_when_fairness_is_off(open_stores):
    store = await open_stores(max_queued_per_user=10, fair_queue=False)
    ids = [(await store.enqueue(_job(u), PNG)).job_id for u in ("a", "a", "a", "b")]
    assert [(await store.claim("w")).id for _ in range(4)] == ids


async def test_claims_lease_renew_and_takeover(store):
    job_id = (await store.enqueue(_job(), PNG)).job_id
    job = await store.claim("w1", lease_seconds=0.2)
    assert job.id == job_id and job.state is JobState.RUNNING and job.attempts == 1
    assert await store.claim("w2") is None  # nothing else to take while the lease holds
    assert await store.renew(job_id, "w1", lease_seconds=0.2)
    await asyncio.sleep(0.3)
    taken = await store.claim("w2", lease_seconds=30)
    assert taken.id == job_id and taken.worker == "w2" and taken.attempts == 2
    assert not await store.renew(job_id, "w1")  # the old worker learns it lost the job
    assert not await store.complete(job_id, "w1", "x.mp4", {})
    assert await store.complete(job_id, "w2", "v.mp4", {1000: "v_1000.mp4"})
    done = await store.get(job_id)
    assert done.state is JobState.DONE and done.video == "v.mp4" and done.fitted == {1000: "v_1000.mp4"}
    assert done.video_for_limit(5000) == "v_1000.mp4" and done.video_for_limit(10) == "v.mp4"


async def test_a_job_that_keeps_killing_workers_is_failed(store):
    job_id = (await store.enqueue(_job(), PNG)).job_id
    for attempt in range(MAX_ATTEMPTS):
        job = await store.claim(f"w{attempt}", lease_seconds=0.05)
        assert job.id == job_id
        await asyncio.sleep(0.1)
    assert await store.claim("last") is None
    failed = await store.get(job_id)
    assert failed.state is JobState.FAILED and "3 times" in failed.error


async def test_release_on_shutdown_does_not_count_as_an_attempt(store):
    job_id = (await store.enqueue(_job(), PNG)).job_id
    await store.claim("w1")
    assert await store.release(job_id, "w1")
    job = await store.get(job_id)
    assert job.state is JobState.QUEUED and job.attempts == 0 and job.worker is None
    assert (await store.claim("w2")).id == job_id


async def test_cancel_rules(store):
    queued = (await store.enqueue(_job("owner"), PNG)).job_id
    running = (await store.enqueue(_job("owner"), PNG)).job_id
    await store.claim("w")  # takes `queued`... the oldest
    assert await store.cancel(running, "telegram", "stranger") == "not_allowed"
    assert await store.cancel(running, "discord", "owner") == "not_found"  # other platform's ids are not visible
    assert await store.cancel(999, "telegram", "owner") == "not_found"
    assert await store.cancel(running, "telegram", "owner") == "cancelled"  # it was still waiting
    assert (await store.get(running)).state is JobState.CANCELLED
    assert await store.cancel(queued, "telegram", "admin", is_admin=True) == "stopping"
    assert await store.is_cancel_requested(queued)
    assert (await store.get(queued)).state is JobState.RUNNING  # the worker stops it within a step
    assert await store.mark_cancelled(queued, "w")
    assert await store.cancel(queued, "telegram", "owner") == "finished"


async def test_undelivered_results_survive_until_marked(open_stores):
    store = await open_stores()
    job_id = (await store.enqueue(_job(), PNG)).job_id
    failed_id = (await store.enqueue(_job(), PNG)).job_id
    await store.claim("w")
    await store.complete(job_id, "w", "v.mp4", {})
    await store.claim("w")
    await store.fail(failed_id, "w", "boom")
    await store.close()
    store = await open_stores()
    assert [j.id for j in await store.undelivered("telegram")] == [job_id, failed_id]
    assert await store.undelivered("discord") == []
    await store.mark_delivered(job_id)
    assert [j.id for j in await store.undelivered("telegram")] == [failed_id]


async def test_progress_is_written_only_by_the_lease_holder(store):
    job_id = (await store.enqueue(_job(), PNG)).job_id
    await store.claim("w1")
    await store.report_progress(job_id, "w1", Progress(section=2, sections=4, step=5, steps=25))
    await store.report_progress(job_id, "intruder", Progress(section=4, sections=4, step=25, steps=25))
    job = await store.get(job_id)
    assert (job.progress.section, job.progress.step, job.progress.steps_done) == (2, 5, 30)


def test_list_scheduling_arithmetic():
    assert start_and_finish([], [], 10, 1) == (0, 10)
    assert start_and_finish([30], [10, 10], 5, 1) == (50, 55)
    assert start_and_finish([30, 5], [10, 10], 5, 2) == (25, 30)  # 5+10 -> 15, 15+10 -> 25, then ours
    assert start_and_finish([], [10, 20, 30], 1, 3) == (10, 11)  # three workers busy; ours waits for the first
    assert start_and_finish([], [10, 20], 1, 3) == (0, 1)  # a third worker is free at once
    assert Speed(2.0, 5.0).job_seconds(sections=4, steps_per_section=25) == 4 * (50 + 5)
    assert Speed(2.0, 5.0, 0.4).job_seconds(sections=4, steps_per_section=25, teacache=True) == 4 * (20 + 5)


async def test_eta_uses_measured_speed_and_running_progress(store):
    running = (await store.enqueue(_job("a", seconds=5, steps=25), PNG)).job_id
    waiting = (await store.enqueue(_job("b", seconds=5, steps=25), PNG)).job_id
    await store.claim("w1")
    position, eta = await store.position(waiting)
    per_job = 4 * (25 * 2.0 + 5.0)  # the default speed from settings
    assert position == 1 and eta == pytest.approx(2 * per_job)
    await store.record_speed("w1", seconds_per_step=1.0, section_overhead=3.0)
    await store.report_progress(running, "w1", Progress(section=3, sections=4, step=25, steps=25))
    position, eta = await store.position(waiting)
    left = 25 * 1.0 + 2 * 3.0  # one section of steps left; sections 3 and 4 still owe their overhead
    assert eta == pytest.approx(left + 4 * (25 * 1.0 + 3.0))
    assert (await store.position(running)) == (0, pytest.approx(left))


async def test_a_worker_handing_over_to_its_next_job_is_one_slot_in_the_eta(store):
    """Back to back, a worker runs its next job while the last one writes its last segment and upload copies:
    two running jobs on one worker do not make a second worker for the queue's ETA."""
    ending, started, waiting = [(await store.enqueue(_job(person, seconds=5, steps=25), PNG)).job_id
                                for person in ("a", "b", "c")]
    await store.claim("w1")
    await store.report_progress(ending, "w1", Progress(section=4, sections=4, step=25, steps=25))
    await store.claim("w1")
    per_job = 4 * (25 * 2.0 + 5.0)  # the default speed from settings
    assert (await store.get(started)).state is JobState.RUNNING
    assert (await store.position(ending)) == (0, pytest.approx(5.0))  # its last section's output
    assert (await store.position(waiting)) == (1, pytest.approx(2 * per_job))


async def test_fast_jobs_are_estimated_with_the_teacache_factor(store):
    fast = (await store.enqueue(_job("a", seconds=5, steps=25, teacache=0.15), PNG)).job_id
    plain = (await store.enqueue(_job("b", seconds=5, steps=25), PNG)).job_id
    fast_seconds = 4 * (25 * 2.0 * 0.5 + 5.0)  # the default speed and the default factor from settings
    assert (await store.position(fast)) == (1, pytest.approx(fast_seconds))
    assert (await store.position(plain)) == (2, pytest.approx(fast_seconds + 4 * (25 * 2.0 + 5.0)))
    await store.claim("w1")
    await store.report_progress(fast, "w1", Progress(section=3, sections=4, step=25, steps=25))
    left = 25 * 2.0 * 0.5 + 2 * 5.0  # a running fast job's steps left go at the factor too
    assert (await store.position(fast)) == (0, pytest.approx(left))


async def test_a_teacache_measurement_moves_the_factor_not_the_plain_speed(store):
    await store.record_speed("w1", seconds_per_step=0.4, section_overhead=9.0, teacache=True)
    speed, _ = await store.speed()
    assert (speed.seconds_per_step, speed.teacache_factor) == (2.0, 0.5)  # no plain figure to divide by yet
    await store.record_speed("w1", seconds_per_step=1.0, section_overhead=3.0)
    await store.record_speed("w1", seconds_per_step=0.4, section_overhead=9.0, teacache=True)
    speed, _ = await store.speed()
    assert (speed.seconds_per_step, speed.section_overhead) == (1.0, 3.0)
    assert speed.teacache_factor == pytest.approx(0.4)
    await store.record_speed("w1", seconds_per_step=0.5, section_overhead=9.0, teacache=True)
    speed, _ = await store.speed()
    assert speed.seconds_per_step == 1.0 and speed.teacache_factor == pytest.approx(0.7 * 0.5 + 0.3 * 0.4)
    job_id = (await store.enqueue(_job(seconds=5, steps=25, teacache=0.15), PNG)).job_id
    assert (await store.position(job_id))[1] == pytest.approx(4 * (25 * 1.0 * speed.teacache_factor + 3.0))


async def test_a_thousand_jobs_from_two_hundred_people_answer_positions_quickly(open_stores):
    store = await open_stores(max_queued_per_user=10)
    ids = []
    for i in range(1000):
        ids.append((await store.enqueue(_job(f"user{i % 200}"), PNG)).job_id)
    started = time.perf_counter()
    positions = [(await store.position(job_id))[0] for job_id in ids[::10]]
    elapsed = time.perf_counter() - started
    assert sorted(positions) == sorted(set(positions)) and max(positions) <= 1000
    # Fair order: every person's first job comes before anyone's second.
    assert (await store.position(ids[199]))[0] == 200 and (await store.position(ids[200]))[0] == 201
    assert elapsed < 20, f"100 position queries took {elapsed:.1f} s"


def _claim_loop(data_dir: str, database_url: str | None, worker: str, ready, start, results) -> None:
    async def go():
        store = await open_store(Settings(data_dir=data_dir, database_url=database_url, lease_seconds=30))
        claimed = []
        ready.put(worker)
        start.wait()  # all four begin together
        while (job := await store.claim(worker)) is not None:
            claimed.append(job.id)
            await asyncio.sleep(0.002)  # a sliver of "work" so the others get their turns
            assert await store.complete(job.id, worker, "v.mp4", {})
        await store.close()
        return claimed

    results.put((worker, asyncio.run(go())))


async def test_four_processes_never_claim_one_job_twice(open_stores, database_url):
    store = await open_stores(max_queued_per_user=1000, fair_queue=False)
    settings = store.settings
    ids = {(await store.enqueue(_job(f"u{i % 7}"), PNG)).job_id for i in range(120)}
    ctx = multiprocessing.get_context("spawn")
    results, ready, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim_loop,
                         args=(str(settings.data_dir), database_url, f"w{i}", ready, start, results))
             for i in range(4)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    start.set()
    claimed = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    everything = [job_id for jobs in claimed.values() for job_id in jobs]
    assert sorted(everything) == sorted(ids)  # each job exactly once
    assert sum(1 for jobs in claimed.values() if jobs) >= 2  # they really competed
    states = {(await store.get(i)).state for i in ids}
    assert states == {JobState.DONE}


async def test_concurrent_enqueue_and_drain_loses_nothing(open_stores):
    producer_store = await open_stores(max_queued_per_user=10_000, fair_queue=True)
    consumers = [await open_stores(max_queued_per_user=10_000, fair_queue=True) for _ in range(3)]
    enqueued: list[int] = []
    drained: list[int] = []
    producing = True

    async def produce():
        nonlocal producing
        for i in range(150):
            enqueued.append((await producer_store.enqueue(_job(f"p{i % 13}"), PNG)).job_id)
            if i % 10 == 0:
                await asyncio.sleep(0)
        producing = False

    async def consume(store, name):
        while producing or await store.queue_length():
            job = await store.claim(name)
            if job is None:
                await asyncio.sleep(0.01)
                continue
            await store.report_progress(job.id, name, Progress(section=1, sections=1, step=1, steps=1))
            assert await store.complete(job.id, name, "v.mp4", {})
            drained.append(job.id)

    await asyncio.wait_for(
        asyncio.gather(produce(), *(consume(s, f"c{i}") for i, s in enumerate(consumers))), timeout=120
    )
    assert sorted(drained) == sorted(enqueued) and len(set(drained)) == 150


async def test_a_picture_that_does_not_decode_is_never_stored(store):
    with pytest.raises(InputError, match="not an image"):
        await store.enqueue(_job(), b"GIF89a but not really")
    with pytest.raises(InputError, match="damaged or truncated"):
        await store.enqueue(_job(), PNG[: len(PNG) // 2])
    assert await store.queue_length() == 0 and not store.files.root.exists()


@pytest.mark.parametrize("yields", range(6))
async def test_a_write_cancelled_anywhere_leaves_no_transaction_open(store, yields):
    """The worker cancels its lease watcher when a render ends, possibly in the middle of a write: the
    next write must still start its own transaction (it failed with 'within a transaction')."""
    job_id = (await store.enqueue(_job(), PNG)).job_id
    await store.claim("w1")
    renewing = asyncio.create_task(store.renew(job_id, "w1"))
    for _ in range(yields):
        await asyncio.sleep(0)
    renewing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await renewing
    assert await store.complete(job_id, "w1", "v.mp4", {})
    assert (await store.get(job_id)).state is JobState.DONE


@pytest.mark.parametrize(
    ("prompt", "message"),
    [("\u200b\u200d\ufeff \u2060\n", "The prompt is empty."), ("a cat\x00 dances", "control characters")],
)
async def test_an_invisible_or_control_character_prompt_is_refused(store, prompt, message):
    job = NewJob(platform="telegram", chat_id="chat", user_id="u1", prompt=prompt, params=JobParams())
    with pytest.raises(InputError, match=message):
        await store.check_request(job)
    with pytest.raises(InputError, match=message):
        await store.enqueue(job, PNG)
    assert await store.queue_length() == 0


# ----- SQLite only: its own database file and its schema history (PostgreSQL starts at the newest) -----


async def test_a_database_from_schema_version_1_is_migrated_and_keeps_its_rows(tmp_path):
    settings = _settings(tmp_path)
    settings.data_dir.mkdir(parents=True)
    old = sqlite3.connect(settings.data_dir / "framepack.db")
    old.executescript(MIGRATIONS[0])
    old.execute("PRAGMA user_version = 1")
    old.execute("INSERT INTO workers (name, seconds_per_step, section_overhead, samples, seen_at) "
                "VALUES ('w1', 1.0, 3.0, 4, ?)", (time.time(),))
    # A row from before the fast option: its params have no "teacache".
    old.execute("INSERT INTO jobs (platform, chat_id, user_id, prompt, params, state, created_at) "
                "VALUES ('telegram', 'c', 'u', 'a cat', ?, 'queued', ?)",
                (json.dumps({"seconds": 5.0, "variant": "original", "seed": 1, "steps": 25}), time.time()))
    old.commit()
    old.close()
    store = await SqliteJobStore.open(settings)
    try:
        assert (await store._one("PRAGMA user_version"))[0] == len(MIGRATIONS)
        speed, _ = await store.speed()
        assert (speed.seconds_per_step, speed.section_overhead, speed.teacache_factor) == (1.0, 3.0, 0.5)
        assert (await store.get(1)).params.teacache == 0.0
        assert (await store.position(1)) == (1, pytest.approx(4 * (25 * 1.0 + 3.0)))
        await store.record_speed("w1", seconds_per_step=0.45, section_overhead=3.0, teacache=True)
        assert (await store.speed())[0].teacache_factor == pytest.approx(0.45)
    finally:
        await store.close()


async def test_reads_beside_writes_on_one_connection_never_lock_out_its_next_write(tmp_path):
    """A read left half-done (its statement stepped, not yet fetched) holds an old snapshot of the file; once
    another process has committed, SQLite refuses that connection's next BEGIN IMMEDIATE at once ("database is
    locked", no busy wait). A worker's lease, cancel polls and heartbeat share one connection, so this crashed
    workers in CI."""
    settings = _settings(tmp_path)
    worker, other = await SqliteJobStore.open(settings), await SqliteJobStore.open(settings)
    try:
        job_id = (await worker.enqueue(_job(), PNG)).job_id

        async def reads():
            for _ in range(300):
                await worker.get(job_id)
                await worker.queue_length()

        async def writes(store, name):
            for _ in range(300):
                await store.heartbeat(name, None)

        await asyncio.gather(reads(), writes(worker, "w1"), writes(other, "w2"))
    finally:
        await worker.close()
        await other.close()
