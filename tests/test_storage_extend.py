"""Extension jobs in the queue: stored and read back, the checks before one is queued, the ETA, retention keeping
a waiting extension's source, and a database from schema version 6."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from helpers import picture_bytes
from test_extend import write_video

from engine import continuation
from engine import sections as sec
from storage.eta import PREPARATION_SECTIONS_KEPT, PREPARATION_SECTIONS_VIDEO
from storage.extension_rules import KEPT_LATENTS
from storage.inputs import InputError
from storage.jobs import Extends, JobParams, JobState, NewJob, QueueFull
from storage.retention import DAY_SECONDS, remove_expired
from storage.schema import MIGRATIONS
from storage.settings import Settings
from storage.sqlite_store import SqliteJobStore
from storage.uploaded_videos import MIN_FRAMES

LATER = time.time() + 8 * DAY_SECONDS  # past the default 7 days of retention


def _settings(tmp_path, **changes) -> Settings:
    return Settings(**{"data_dir": tmp_path / "data", "max_queued_per_user": 50, **changes})


def _extension(source: int | None = None, video: str | None = None, user: str = "u1", chat: str = "chat",
               prompt: str = "the cat jumps", **params) -> NewJob:
    return NewJob("telegram", chat, user, prompt, JobParams(**{"seconds": 1.2, "variant": "f1", "steps": 3,
                                                               **params}),
                  extends=Extends(source, video))


async def _done(store, user: str = "u1", chat: str = "chat", kept: bool = True) -> int:
    """A finished, delivered render with its work folder's kept latents, as a worker leaves it."""
    job = NewJob("telegram", chat, user, "a cat", JobParams(seconds=2.0, steps=3, variant="f1"))
    job_id = (await store.enqueue(job, picture_bytes())).job_id
    assert (await store.claim("w1")).id == job_id
    work = store.files.work_dir(job_id)
    work.mkdir(parents=True)
    if kept:
        (work / KEPT_LATENTS).write_bytes(b"kept")
    store.files.video_path(job_id).write_bytes(b"video")
    assert await store.complete(job_id, "w1", str(store.files.video_path(job_id)), {})
    await store.mark_delivered(job_id)
    return job_id


def test_the_storage_constants_match_the_engines():
    assert KEPT_LATENTS == continuation.FILE_NAME
    assert sec.overlap_frames(9) == MIN_FRAMES


async def test_an_extension_of_a_finished_job_is_stored_and_read_back(stores, tmp_path):
    store = await stores(_settings(tmp_path))
    source = await _done(store)
    enqueued = await store.enqueue_extension(_extension(source, seed=7))
    job = await store.get(enqueued.job_id)
    assert job.extends == Extends(source, None) and not job.extends.from_video
    assert (job.state, job.prompt, job.params.variant, job.params.seed) == (JobState.QUEUED, "the cat jumps", "f1", 7)
    assert (await store.get(source)).extends is None  # a plain job reads back as one
    assert not store.files.job_dir(job.id).exists()  # nothing to store beside the row
    assert (await store.claim("w1")).extends == Extends(source, None)


async def test_an_uploaded_video_is_stored_with_its_job(stores, tmp_path):
    store = await stores(_settings(tmp_path))
    clip = tmp_path / "clip.mp4"
    write_video(clip, frames=40)
    enqueued = await store.enqueue_extension(_extension(video="holiday.mp4"), clip.read_bytes())
    job = await store.get(enqueued.job_id)
    assert job.extends == Extends(None, "holiday.mp4") and job.extends.from_video
    assert store.files.source_video_path(job.id).read_bytes() == clip.read_bytes()
    assert not list((store.files.root.parent / "tmp").iterdir())  # the scratch copy of the check is gone


async def test_the_eta_counts_the_added_sections_and_the_preparation(stores, tmp_path):
    store = await stores(_settings(tmp_path, fair_queue=False))
    source = await _done(store)
    clip = tmp_path / "clip.mp4"
    write_video(clip, frames=40)
    plain = await store.enqueue(NewJob("telegram", "chat", "u2", "a cat", JobParams(seconds=1.2, steps=3,
                                                                                   variant="f1")), picture_bytes())
    kept = await store.enqueue_extension(_extension(source))
    video = await store.enqueue_extension(_extension(video="clip.mp4"), clip.read_bytes())
    speed, _ = await store.speed()
    positions = await store.positions()
    one_job = speed.job_seconds(1, 3)
    assert positions[plain.job_id][1] == pytest.approx(one_job)
    assert positions[kept.job_id][1] == pytest.approx(
        2 * one_job + PREPARATION_SECTIONS_KEPT * speed.section_overhead)
    assert positions[video.job_id][1] == pytest.approx(
        3 * one_job + (PREPARATION_SECTIONS_KEPT + PREPARATION_SECTIONS_VIDEO) * speed.section_overhead)


async def test_extending_what_cannot_be_extended_is_refused_and_stores_nothing(stores, tmp_path):
    store = await stores(_settings(tmp_path))
    source = await _done(store)
    old_kind = await _done(store, kept=False)
    running = (await store.enqueue(NewJob("telegram", "chat", "u1", "x", JobParams(seconds=1, steps=3)),
                                   picture_bytes())).job_id
    failed = (await store.enqueue(NewJob("telegram", "chat", "u1", "x", JobParams(seconds=1, steps=3)),
                                  picture_bytes())).job_id
    await store.cancel(failed, "telegram", "u1")
    other_platform = (await store.enqueue(NewJob("discord", "chat", "u1", "x", JobParams(seconds=1, steps=3)),
                                          picture_bytes())).job_id
    before = await store.queue_length()
    refusals = {
        "no such job": (_extension(999), "There is no job 999"),
        "another platform's job": (_extension(other_platform), f"There is no job {other_platform}"),
        "someone else's job from another chat": (_extension(source, user="u2", chat="elsewhere"), "another chat"),
        "a job still waiting": (_extension(running), "not finished yet"),
        "a cancelled job": (_extension(failed), "no video to extend"),
        "a job without kept latents": (_extension(old_kind), "kept nothing to continue from"),
        "too many seconds": (_extension(source, seconds=500.0), "between 1 and 120"),
        "timed prompts": (_extension(source, prompt="[0s: a cat] [1s: a dog]"), "one plain prompt"),
        "an empty prompt": (_extension(source, prompt="  "), "prompt is empty"),
    }
    for name, (request, message) in refusals.items():
        with pytest.raises(InputError, match=message):
            await store.enqueue_extension(request)
        with pytest.raises(InputError, match=message):  # the cheap check a frontend runs first says the same
            await store.check_request(request)
        assert await store.queue_length() == before, name
    await store.set_limit("allowed_variants", "original", "test")
    with pytest.raises(InputError, match="f1 .* switched off"):
        await store.enqueue_extension(_extension(source))
    await store.set_limit("allowed_variants", "original,f1", "test")
    # Someone else in the chat where the video was shown may extend it, as they may re-roll it.
    assert (await store.enqueue_extension(_extension(source, user="u2"))).job_id


async def test_removed_or_expiring_files_are_refused(stores, tmp_path):
    store = await stores(_settings(tmp_path))
    removed, expiring = await _done(store), await _done(store)
    await store.mark_files_removed([removed])
    with pytest.raises(InputError, match="deleted after the bot's keeping period"):
        await store.enqueue_extension(_extension(removed))
    async with store._write() as db:  # finished longer ago than the keeping period: the cleanup may be at it
        await db.execute("UPDATE jobs SET finished_at=? WHERE id=?", (time.time() - 8 * DAY_SECONDS, expiring))
    with pytest.raises(InputError, match="deleted after the bot's keeping period"):
        await store.enqueue_extension(_extension(expiring))


async def test_bad_uploaded_videos_are_refused_and_store_nothing(stores, tmp_path):
    store = await stores(_settings(tmp_path, max_extend_video_bytes=1_000_000))
    good = tmp_path / "good.mp4"
    write_video(good, frames=50)
    short = tmp_path / "short.mp4"
    write_video(short, frames=10)
    mpeg4 = tmp_path / "old.mp4"
    write_video(mpeg4, frames=40, codec="mpeg4")
    data = good.read_bytes()
    cases = {
        "not a video": (b"just words, no video", "not a video I can read"),
        "a picture": (picture_bytes(), "not a video I can read"),
        "truncated": (data[: len(data) // 2], "damaged or cut short"),
        "empty": (b"", "empty"),
        "too short": (short.read_bytes(), "at least 33 frames"),
        "unsupported codec": (mpeg4.read_bytes(), "encoded as mpeg4"),
        "too large": (data + bytes(1_000_000), "the limit is 1.0 MB"),
    }
    for name, (video, message) in cases.items():
        with pytest.raises(InputError, match=message):
            await store.enqueue_extension(_extension(video=f"{name}.mp4"), video)
    assert await store.queue_length() == 0 and not store.files.root.exists()


async def test_the_quota_counts_extensions(stores, tmp_path):
    store = await stores(_settings(tmp_path, max_queued_per_user=2))
    source = await _done(store)
    await store.enqueue_extension(_extension(source))
    await store.enqueue_extension(_extension(source))
    with pytest.raises(QueueFull):
        await store.enqueue_extension(_extension(source))


async def test_retention_keeps_the_source_of_a_waiting_extension(stores, tmp_path):
    store = await stores(_settings(tmp_path))
    source, other = await _done(store), await _done(store)
    extension = (await store.enqueue_extension(_extension(source))).job_id
    assert await remove_expired(store, store.files, 7, now=LATER) == [other]
    assert store.files.work_dir(source).is_dir()
    assert (await store.claim("w1")).id == extension  # running: still kept
    assert await remove_expired(store, store.files, 7, now=LATER) == []
    assert await store.complete(extension, "w1", "video.mp4", {})
    await store.mark_delivered(extension)
    assert await remove_expired(store, store.files, 7, now=LATER) == [source, extension]


async def test_a_database_from_schema_version_6_is_migrated_and_its_jobs_read_back_plain(tmp_path):
    settings = _settings(tmp_path)
    settings.data_dir.mkdir(parents=True)
    old = sqlite3.connect(settings.data_dir / "framepack.db")
    for script in MIGRATIONS[:6]:
        old.executescript(script)
    old.execute("PRAGMA user_version = 6")
    old.execute("INSERT INTO jobs (platform, chat_id, user_id, prompt, params, state, created_at) "
                "VALUES ('telegram', 'chat', 'u1', 'a cat', '{\"seconds\": 2, \"steps\": 3}', 'queued', ?)",
                (time.time(),))
    old.commit()
    old.close()
    store = await SqliteJobStore.open(settings)
    try:
        assert (await store._one("PRAGMA user_version"))[0] == len(MIGRATIONS) >= 7
        job = await store.get(1)
        assert job.extends is None and job.prompt == "a cat" and job.params.seconds == 2
        assert 1 in await store.positions()
        assert await store.cancel(1, "telegram", "u1") == "cancelled"
        source = await _done(store)
        assert (await store.get((await store.enqueue_extension(_extension(source))).job_id)).extends.job_id == source
    finally:
        await store.close()


def test_a_video_check_needs_no_engine():
    import subprocess
    import sys

    code = ("import sys, storage.uploaded_videos, storage.sqlite_store, bot.texts; "
            "sys.exit('torch' in sys.modules or 'engine' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0
