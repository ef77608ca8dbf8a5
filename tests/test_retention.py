"""RESULT_RETENTION_DAYS: the folders of old finished, delivered jobs are deleted; everything else is kept."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import pytest
from helpers import picture_bytes, stored_job_and_video, wait_for
from pydantic import ValidationError

from bot.serve import clean_up_periodically
from bot.video_info import video_info
from storage.jobs import JobParams, JobState, NewJob
from storage.retention import DAY_SECONDS, expiry_cutoff, remove_expired
from storage.schema import MIGRATIONS
from storage.settings import Settings, describe
from storage.sqlite_store import SqliteJobStore

PNG = picture_bytes()
LATER = time.time() + 8 * DAY_SECONDS  # a week and a day from now: past the default 7 days


def _settings(tmp_path, **changes) -> Settings:
    return Settings(**{"data_dir": tmp_path / "data", "max_queued_per_user": 50, **changes})


async def _queued(store, user: str = "u1") -> int:
    job = NewJob("telegram", "chat", user, "a cat", JobParams(seconds=2.0, steps=3))
    return (await store.enqueue(job, PNG)).job_id


async def _running(store) -> int:
    job_id = await _queued(store)
    assert (await store.claim("w1")).id == job_id
    return job_id


async def _done(store, delivered: bool = True) -> int:
    """A job the worker finished, with a video and an upload copy in its folder, as the worker leaves them."""
    job_id = await _running(store)
    files = store.files
    for path in (files.video_path(job_id), files.fitted_path(job_id, 50_000_000),
                 files.work_dir(job_id) / "checkpoint.pt", files.work_dir(job_id) / "continuation.pt"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert await store.complete(job_id, "w1", str(files.video_path(job_id)),
                                {50_000_000: str(files.fitted_path(job_id, 50_000_000))})
    if delivered:
        await store.mark_delivered(job_id)
    return job_id


async def _failed_and_given_up(store) -> int:
    job_id = await _running(store)
    assert await store.fail(job_id, "w1", "out of memory")
    await store.delivery_failed(job_id, "the person blocked the bot", permanent=True)
    return job_id


async def _cancelled_while_queued(store) -> int:
    job_id = await _queued(store)
    assert await store.cancel(job_id, "telegram", "u1") == "cancelled"
    await store.mark_delivered(job_id)
    return job_id


async def _finished_days_ago(store, job_id: int, days: float) -> None:
    async with store._write() as db:
        await db.execute("UPDATE jobs SET finished_at=? WHERE id=?", (time.time() - days * DAY_SECONDS, job_id))


async def test_old_finished_delivered_jobs_lose_their_folders_and_keep_their_rows(stores, tmp_path):
    store = await stores(_settings(tmp_path))
    old = [await _done(store), await _failed_and_given_up(store), await _cancelled_while_queued(store)]
    assert all(store.files.job_dir(j).is_dir() for j in old)

    removed = await remove_expired(store, store.files, 7, now=LATER)

    assert removed == old
    for job_id in old:
        assert not store.files.job_dir(job_id).exists()
        job = await store.get(job_id)  # the history stays
        assert job.state.finished and job.delivered and job.files_removed_at is not None
    assert (await store.get(old[0])).state is JobState.DONE and (await store.get(old[0])).prompt == "a cat"
    history = await store.user_jobs("telegram", "u1", include_finished=True)
    assert [j.id for j in history] == old


async def test_recent_queued_running_and_undelivered_jobs_are_kept(stores, tmp_path):
    store = await stores(_settings(tmp_path, result_retention_days=7))
    recent = await _done(store)
    undelivered = await _done(store, delivered=False)
    await _finished_days_ago(store, undelivered, 30)  # old, but its person has not got it yet
    running = await _running(store)
    queued = await _queued(store)
    await _finished_days_ago(store, recent, 6.9)

    assert await remove_expired(store, store.files, 7) == []
    for job_id in (recent, undelivered, running, queued):
        assert store.files.job_dir(job_id).is_dir()
        assert (await store.get(job_id)).files_removed_at is None
    # Even long after, the unfinished and the undelivered stay: only the delivered one goes.
    assert await remove_expired(store, store.files, 7, now=LATER + 365 * DAY_SECONDS) == [recent]
    assert {j.id for j in await store.undelivered("telegram")} == {undelivered}
    assert (await store.claim("w2")).id == queued and store.files.input_path(queued).is_file()


async def test_the_cleanup_is_idempotent_and_a_folder_already_gone_is_fine(stores, tmp_path):
    store = await stores(_settings(tmp_path))
    first, second = await _done(store), await _done(store)
    store.files.remove_job(second)  # deleted by hand before the cleanup ran
    assert await remove_expired(store, store.files, 7, now=LATER) == [first, second]
    marked = (await store.get(first)).files_removed_at
    assert await remove_expired(store, store.files, 7, now=LATER) == []
    assert (await store.get(first)).files_removed_at == marked  # not marked again
    assert await store.expired_jobs(LATER) == []


async def test_zero_days_keeps_everything(stores, tmp_path):
    store = await stores(_settings(tmp_path, result_retention_days=0))
    job_id = await _done(store)
    assert await remove_expired(store, store.files, 0, now=LATER + 3650 * DAY_SECONDS) == []
    assert store.files.video_path(job_id).is_file()


async def test_a_folder_that_cannot_be_deleted_is_logged_and_tried_again(stores, tmp_path, monkeypatch, caplog):
    store = await stores(_settings(tmp_path))
    stuck, fine = await _done(store), await _done(store)
    real_remove = store.files.remove_job

    def refuse_one(job_id: int) -> None:
        if job_id == stuck:
            raise PermissionError(13, "Permission denied")
        real_remove(job_id)

    monkeypatch.setattr(store.files, "remove_job", refuse_one)
    with caplog.at_level(logging.WARNING, logger="storage.retention"):
        assert await remove_expired(store, store.files, 7, now=LATER) == [fine]
    assert f"job {stuck}: could not delete its folder" in caplog.text and "Permission denied" in caplog.text
    assert (await store.get(stuck)).files_removed_at is None
    monkeypatch.setattr(store.files, "remove_job", real_remove)
    assert await remove_expired(store, store.files, 7, now=LATER) == [stuck]


async def test_an_expired_job_is_never_delivered_again_and_info_says_its_pictures_are_gone(stores, tmp_path):
    store = await stores(_settings(tmp_path))
    job_id, video = await stored_job_and_video(store, tmp_path, "telegram")
    assert (await store.claim("w1")).id == job_id
    assert await store.complete(job_id, "w1", str(store.files.video_path(job_id)), {})
    await store.mark_delivered(job_id)
    assert (await video_info(video, store, store.files, "telegram")).again_job_id == job_id

    assert await remove_expired(store, store.files, 7, now=LATER) == [job_id]

    assert await store.undelivered("telegram") == []
    info = await video_info(video, store, store.files, "telegram")
    assert info.again_job_id is None
    assert f"the pictures of job {job_id} were deleted after the bot's keeping period" in info.text
    with pytest.raises(FileNotFoundError):  # what the frontends' re-roll catches ("no longer stored")
        store.files.read_pictures(job_id, (await store.get(job_id)).guides)


async def test_serve_cleans_up_at_start_and_then_every_interval(stores, tmp_path):
    settings = _settings(tmp_path, result_retention_days=1)
    store = await stores(settings)
    first, second = await _done(store), await _done(store)
    await _finished_days_ago(store, first, 2)
    stop = asyncio.Event()
    task = asyncio.create_task(clean_up_periodically(settings, store, stop, interval=0.05))
    try:
        await wait_for(lambda: _removed(store, first), timeout=10)
        assert store.files.job_dir(second).is_dir()  # not old enough yet
        await _finished_days_ago(store, second, 1.5)
        await wait_for(lambda: _removed(store, second), timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


async def test_a_failing_cleanup_round_is_logged_and_does_not_stop_serve(stores, tmp_path, caplog):
    settings = _settings(tmp_path, result_retention_days=1)
    store = await stores(settings)
    job_id = await _done(store)
    await _finished_days_ago(store, job_id, 2)
    real_expired, calls = store.expired_jobs, []

    async def flaky(finished_before: float) -> list[int]:
        calls.append(finished_before)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        return await real_expired(finished_before)

    store.expired_jobs = flaky
    stop = asyncio.Event()
    with caplog.at_level(logging.ERROR, logger="framepack.serve"):
        task = asyncio.create_task(clean_up_periodically(settings, store, stop, interval=0.05))
        try:
            await wait_for(lambda: _removed(store, job_id), timeout=10)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=5)
    assert "deleting the files of expired jobs failed" in caplog.text and len(calls) >= 2


async def test_serve_runs_no_cleanup_when_files_are_kept_forever(stores, tmp_path):
    settings = _settings(tmp_path, result_retention_days=0)
    store = await stores(settings)
    job_id = await _done(store)
    await _finished_days_ago(store, job_id, 10_000)
    await asyncio.wait_for(clean_up_periodically(settings, store, asyncio.Event(), interval=0.05), timeout=5)
    assert store.files.job_dir(job_id).is_dir()


async def _removed(store, job_id: int) -> bool:
    job = await store.get(job_id)
    return job.files_removed_at is not None and not store.files.job_dir(job_id).exists()


@pytest.mark.parametrize("value", ["0", "0.01", "7", "1.5", "3650"])
def test_good_retention_values_are_taken(monkeypatch, value):
    monkeypatch.setenv("RESULT_RETENTION_DAYS", value)
    assert Settings().result_retention_days == float(value)


@pytest.mark.parametrize("value", ["-1", "0.001", "3651", "nan", "inf", "a week"])
def test_bad_retention_values_are_refused_with_a_clear_message(monkeypatch, value):
    monkeypatch.setenv("RESULT_RETENTION_DAYS", value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    text = describe(raised.value)
    assert text.count("\n  ") == 1 and "RESULT_RETENTION_DAYS: " in text and f"(got {value!r})" in text
    if value in ("-1", "0.001", "3651"):
        assert "must be 0 (keep forever) or between 0.01 and 3650 days" in text


def test_the_default_keeps_a_week(monkeypatch):
    monkeypatch.delenv("RESULT_RETENTION_DAYS", raising=False)
    assert Settings().result_retention_days == 7


async def test_a_database_from_schema_version_5_is_migrated_and_its_finished_jobs_expire(tmp_path):
    settings = _settings(tmp_path)
    settings.data_dir.mkdir(parents=True)
    old = sqlite3.connect(settings.data_dir / "framepack.db")
    for script in MIGRATIONS[:5]:
        old.executescript(script)
    old.execute("PRAGMA user_version = 5")
    old.execute("INSERT INTO jobs (platform, chat_id, user_id, prompt, params, state, created_at, finished_at, "
                "delivered) VALUES ('telegram', 'c', 'u', 'a cat', '{}', 'done', ?, ?, 1)",
                (time.time() - 9 * DAY_SECONDS,) * 2)
    old.commit()
    old.close()
    store = await SqliteJobStore.open(settings)
    try:
        assert (await store._one("PRAGMA user_version"))[0] == len(MIGRATIONS)
        assert (await store.get(1)).files_removed_at is None
        assert await remove_expired(store, store.files, 7) == [1]
        assert (await store.get(1)).files_removed_at is not None
    finally:
        await store.close()


def test_the_cutoff_is_the_keeping_period_back_from_now_and_none_keeps_everything():
    # the cleanup and the extension check (storage/extension_rules.py) both take the cutoff from here
    assert expiry_cutoff(7, now=LATER) == LATER - 7 * DAY_SECONDS
    assert expiry_cutoff(0.5, now=1_000_000.0) == 1_000_000.0 - 43_200.0
    assert expiry_cutoff(0, now=LATER) is None
