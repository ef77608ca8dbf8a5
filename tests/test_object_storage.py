"""STORAGE_URL: the bucket's contract (a folder and a real S3 API server over HTTP), a job's files round trip
between two hosts' data directories, the store wrapper's moves, retention, and secrets kept out of texts."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from helpers import picture_bytes
from s3_server import SECRET_KEY

from storage.files import JobFiles
from storage.job_sync import JobSync
from storage.jobs import JobParams, JobState, NewJob
from storage.log_setup import RedactingFilter, secrets_of
from storage.object_store import ObjectStoreError, open_object_store
from storage.retention import remove_expired
from storage.settings import Settings
from storage.sqlite_store import SqliteJobStore
from storage.synced_store import SyncedJobStore, with_object_storage


@pytest.fixture(params=["folder", "s3"])
def bucket_settings(request, tmp_path) -> dict:
    if request.param == "folder":
        return dict(storage_url=f"file://{tmp_path / 'shared'}")
    return request.getfixturevalue("s3_settings")


def _objects(tmp_path: Path, fields: dict):
    return open_object_store(Settings(data_dir=tmp_path / "data", **fields))


def test_unset_storage_url_keeps_files_local(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    assert open_object_store(settings) is None
    store = object()
    assert with_object_storage(store, settings) is store


def test_a_storage_url_that_is_not_s3_or_a_folder_is_refused():
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        Settings(storage_url="https://bucket.example.com/x")


def test_the_object_store_contract(tmp_path, bucket_settings):
    objects = _objects(tmp_path, bucket_settings)
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"checkpoint one")
    big.write_bytes(os.urandom(12 * 2**20))  # over obstore's part size: uploaded in parts

    objects.put_file("jobs/1/work/checkpoint.pt", small)
    objects.put_file("jobs/1/video.mp4", big)
    objects.put_file("jobs/12/input", small)
    assert objects.list("jobs/1/") == {"jobs/1/work/checkpoint.pt": 14, "jobs/1/video.mp4": 12 * 2**20}

    small.write_bytes(b"checkpoint two, longer")  # a new version replaces the old one
    objects.put_file("jobs/1/work/checkpoint.pt", small)
    assert objects.get_file("jobs/1/work/checkpoint.pt", tmp_path / "back" / "checkpoint.pt")
    assert (tmp_path / "back" / "checkpoint.pt").read_bytes() == b"checkpoint two, longer"
    assert objects.get_file("jobs/1/video.mp4", tmp_path / "back" / "video.mp4")
    assert (tmp_path / "back" / "video.mp4").read_bytes() == big.read_bytes()

    assert not objects.get_file("jobs/1/nothing", tmp_path / "back" / "nothing")
    assert not (tmp_path / "back" / "nothing").exists() and not list((tmp_path / "back").glob("*.download"))

    assert objects.delete_prefix("jobs/1/") == 2
    assert objects.list("jobs/1/") == {} and list(objects.list("jobs/")) == ["jobs/12/input"]
    assert objects.delete_prefix("jobs/1/") == 0  # idempotent


def _job_folder(files: JobFiles, job_id: int) -> dict[str, bytes]:
    """A job's folder as a finished render leaves it; returns {path under the data dir: bytes}."""
    contents = {
        "input": picture_bytes(), "end": b"end picture",
        "work/conditioning.pt": os.urandom(3000), "work/checkpoint.pt": os.urandom(2000),
        "work/latents_0001.pt": os.urandom(1500), "work/segment_0000.mp4": os.urandom(5000),
        "work/section_0001.gif": b"GIF89a...", "work/continuation.pt": os.urandom(800),
        "video.mp4": os.urandom(9000), "video_60000.mp4": os.urandom(4000),
    }
    for name, data in contents.items():
        path = files.job_dir(job_id) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (files.work_dir(job_id) / "checkpoint.pt.tmp").write_bytes(b"half written")
    return {f"jobs/{job_id}/{name}": data for name, data in contents.items()}


def test_a_jobs_files_round_trip_between_two_hosts(tmp_path, bucket_settings):
    objects = _objects(tmp_path, bucket_settings)
    here, there = JobFiles(tmp_path / "host_a"), JobFiles(tmp_path / "host_b")
    sync_a, sync_b = JobSync(objects, here), JobSync(objects, there)
    contents = _job_folder(here, 7)
    video, fitted = str(here.video_path(7)), {60_000: str(here.fitted_path(7, 60_000))}

    assert sync_a.upload_inputs(7) == 2
    assert sync_a.upload_results(7, video, fitted) == 8
    assert sync_a.upload_work(7) == 0  # nothing changed since
    (here.work_dir(7) / "checkpoint.pt").write_bytes(b"the next section's")
    assert sync_a.upload_work(7) == 1  # only what changed
    contents["jobs/7/work/checkpoint.pt"] = b"the next section's"
    assert objects.list("jobs/7/").keys() == contents.keys()  # half-written files never go up

    assert sync_b.download_job(7) == len(contents)
    for key, data in contents.items():
        assert (there.root.parent / key).read_bytes() == data
    assert sync_b.download_job(7) == 1  # the checkpoint is always taken from the bucket; the rest is in place

    # A worker's own paths become this host's.
    job = _finished_job(7, video, fitted)
    local = sync_b.with_local_files(job)
    assert local.video == str(there.video_path(7)) and local.fitted == {60_000: str(there.fitted_path(7, 60_000))}

    assert sync_a.delete_job(7) == len(contents) and objects.list("jobs/") == {}


def _finished_job(job_id: int, video: str, fitted: dict):
    from storage.jobs import Job, Progress

    return Job(id=job_id, platform="telegram", chat_id="c", user_id="u", prompt="p", params=JobParams(),
               state=JobState.DONE, created_at=0.0, video=video, fitted=fitted,
               progress=Progress(1, 1, 1, 1, video.replace("video.mp4", "work/section_0001.gif")))


async def test_a_frontend_on_another_host_gets_the_video_and_preview_from_the_bucket(tmp_path, s3_settings):
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    frontend_a = await _synced_store(tmp_path / "frontend", database, s3_settings)
    worker_b = await _synced_store(tmp_path / "worker", database, s3_settings)
    frontend_c = await _synced_store(tmp_path / "other_frontend", database, s3_settings)
    try:
        params = JobParams(seconds=1.0, resolution=64, steps=3, upload_limits=(60_000,))
        job_id = (await frontend_a.enqueue(NewJob("telegram", "c", "u", "a cat", params), picture_bytes())).job_id

        job = await worker_b.claim("w")  # the inputs come down with the claim
        files_b = worker_b.job_sync.files
        assert files_b.input_path(job_id).read_bytes() == picture_bytes()
        contents = _job_folder(files_b, job_id)
        preview = str(files_b.work_dir(job_id) / "section_0001.gif")
        from storage.jobs import Progress

        await worker_b.report_progress(job_id, "w", Progress(1, 1, 3, 3, preview))  # a section: up it goes
        shown = (await frontend_c.active_jobs("telegram"))[0].progress.preview
        assert Path(shown).read_bytes() == b"GIF89a..." and shown.startswith(str(tmp_path / "other_frontend"))

        video, fitted = str(files_b.video_path(job_id)), {60_000: str(files_b.fitted_path(job_id, 60_000))}
        assert await worker_b.complete(job_id, "w", video, fitted)
        delivered = (await frontend_c.undelivered("telegram"))[0]
        assert Path(delivered.video_for_limit(60_000)).read_bytes() == contents[f"jobs/{job_id}/video_60000.mp4"]
        assert Path(delivered.video).read_bytes() == contents[f"jobs/{job_id}/video.mp4"]
        assert delivered.video.startswith(str(tmp_path / "other_frontend"))
        assert job.id == job_id

        # Retention deletes the bucket's copies with the folder.
        await frontend_c.mark_delivered(job_id)
        removed = await remove_expired(frontend_c, frontend_c.job_sync.files, 1.0, now=10**12)
        assert removed == [job_id] and frontend_c.job_sync.objects.list("jobs/") == {}
    finally:
        for store in (frontend_a, worker_b, frontend_c):
            await store.close()


async def test_a_frontend_on_another_host_checks_and_queues_an_extension_from_the_buckets_latents(tmp_path,
                                                                                                  s3_settings):
    from storage.jobs import Extends

    database = f"sqlite:///{tmp_path / 'shared.db'}"
    frontend_a = await _synced_store(tmp_path / "frontend", database, s3_settings)
    worker_b = await _synced_store(tmp_path / "worker", database, s3_settings)
    try:
        params = JobParams(seconds=1.2, resolution=64, steps=2, variant="f1")
        job_id = (await frontend_a.enqueue(NewJob("telegram", "c", "u", "a cat", params), picture_bytes())).job_id
        await worker_b.claim("w")
        files_b = worker_b.job_sync.files
        contents = _job_folder(files_b, job_id)
        assert await worker_b.complete(job_id, "w", str(files_b.video_path(job_id)), {})
        kept = frontend_a.job_sync.files.work_dir(job_id) / "continuation.pt"
        assert not kept.exists()

        extension = NewJob("telegram", "c", "u", "on and on", JobParams(seconds=1.2, steps=2, variant="f1"),
                           extends=Extends(job_id=job_id))
        await frontend_a.check_request(extension)  # the Extend button: refused at once when nothing was kept
        assert kept.read_bytes() == contents[f"jobs/{job_id}/work/continuation.pt"]
        assert not frontend_a.job_sync.files.video_path(job_id).exists()  # only what the check reads comes down
        kept.unlink()
        queued = await frontend_a.enqueue_extension(extension)
        assert (await worker_b.get(queued.job_id)).extends.job_id == job_id
    finally:
        await frontend_a.close()
        await worker_b.close()


async def test_a_job_whose_inputs_are_not_in_the_bucket_yet_goes_back_to_the_queue(tmp_path, s3_settings):
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    plain = await SqliteJobStore.open(Settings(data_dir=tmp_path / "frontend"), tmp_path / "shared.db")
    worker = await _synced_store(tmp_path / "worker", database, s3_settings)
    try:
        params = JobParams(seconds=1.0, resolution=64, steps=3)
        job_id = (await plain.enqueue(NewJob("telegram", "c", "u", "a cat", params), picture_bytes())).job_id
        assert await worker.claim("w") is None
        job = await worker.get(job_id)
        assert job.state is JobState.QUEUED and job.attempts == 0
    finally:
        await plain.close()
        await worker.close()


async def _synced_store(data_dir: Path, database: str, fields: dict) -> SyncedJobStore:
    from storage.store import open_store

    store = await open_store(Settings(data_dir=data_dir, database_url=database, **fields))
    assert isinstance(store, SyncedJobStore)
    return store


def test_the_secret_key_is_in_no_message_repr_or_log_line(tmp_path, s3_settings, caplog, monkeypatch):
    settings = Settings(data_dir=tmp_path / "data", **s3_settings)
    assert SECRET_KEY not in repr(settings) and SECRET_KEY in secrets_of(settings)
    objects = open_object_store(settings)
    assert SECRET_KEY not in repr(objects) and SECRET_KEY not in objects.where

    missing = open_object_store(Settings(data_dir=tmp_path / "data", **{**s3_settings,
                                                                         "storage_url": "s3://no-such-bucket/x"}))
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ObjectStoreError) as raised:
        missing.put_file("jobs/1/input", tmp_path / "f")
    assert "no-such-bucket" in str(raised.value) and SECRET_KEY not in str(raised.value)

    from storage.settings import SettingsError, get_settings

    monkeypatch.setenv("STORAGE_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("STORAGE_URL", "ftp://nope")
    get_settings.cache_clear()  # an earlier test's settings may be cached
    try:
        with pytest.raises(SettingsError) as bad:
            get_settings()
        assert SECRET_KEY not in str(bad.value)
    finally:
        get_settings.cache_clear()

    record = logging.LogRecord("obstore", logging.ERROR, __file__, 1, "signing with %s", (SECRET_KEY,), None)
    RedactingFilter(secrets_of(settings)).filter(record)
    assert SECRET_KEY not in logging.Formatter().format(record)


async def test_a_frontend_on_another_host_rerolls_and_tells_info_from_the_buckets_inputs(tmp_path, s3_settings):
    """Frontends on two hosts: a job queued on A (its picture and end picture uploaded) is re-rolled or asked
    about on B, whose data folder never had them: B fetches the inputs, not the work folder or the videos."""
    from helpers import stored_job_and_video

    from bot.video_info import video_info
    from storage.jobs import GuidePictures, JobPictures

    database = f"sqlite:///{tmp_path / 'shared.db'}"
    frontend_a = await _synced_store(tmp_path / "host_a", database, s3_settings)
    frontend_b = await _synced_store(tmp_path / "host_b", database, s3_settings)
    try:
        pictures = JobPictures(picture_bytes(), end=picture_bytes())
        job = NewJob("telegram", "c", "u", "a cat", JobParams(seconds=1.0, resolution=64, steps=2),
                     guides=GuidePictures(end=True))
        job_id = (await frontend_a.enqueue(job, pictures)).job_id
        files_b = frontend_b.job_sync.files
        assert not files_b.job_dir(job_id).exists()
        await frontend_b.fetch_inputs(job_id)  # what a re-roll does before it reads the pictures
        assert files_b.read_pictures(job_id, GuidePictures(end=True)) == pictures
        assert not files_b.work_dir(job_id).exists()

        other_id, video = await stored_job_and_video(frontend_a, tmp_path, "telegram")
        assert not files_b.job_dir(other_id).exists()
        info = await video_info(video, frontend_b, files_b, "telegram")
        assert info.again_job_id == other_id, info.text  # "Animate again" offered on B: its picture came down
    finally:
        await frontend_a.close()
        await frontend_b.close()


def _folder_bucket(tmp_path: Path) -> dict:
    return dict(storage_url=f"file://{tmp_path / 'shared'}")


def _flaky(monkeypatch, objects, method: str, failures: int, pause: float = 0.0) -> list[str]:
    """The bucket's `method` fails `failures` times, then works (each call `pause` seconds late); returns the
    keys it was called for."""
    import time

    real, called = getattr(objects, method), []

    def flaky(key, path):
        called.append(key)
        time.sleep(pause)
        if len(called) <= failures:
            raise ObjectStoreError(f"the bucket did not answer ({method} {key})")
        return real(key, path)

    monkeypatch.setattr(objects, method, flaky)
    return called


async def test_an_enqueue_whose_inputs_the_bucket_will_not_take_stores_nothing(tmp_path, monkeypatch):
    from storage import synced_store
    from storage.jobs import Unavailable

    monkeypatch.setattr(synced_store, "UPLOAD_PAUSES", (0.01, 0.01))
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    frontend = await _synced_store(tmp_path / "frontend", database, _folder_bucket(tmp_path))
    worker = await _synced_store(tmp_path / "worker", database, _folder_bucket(tmp_path))
    try:
        params = JobParams(seconds=1.0, resolution=64, steps=2)
        tries = _flaky(monkeypatch, frontend.job_sync.objects, "put_file", failures=3)
        with pytest.raises(Unavailable, match="could not store your picture"):
            await frontend.enqueue(NewJob("telegram", "c", "u", "a cat", params), picture_bytes())
        assert len(tries) == 3 and await frontend.queue_length() == 0 and await worker.claim("w") is None

        monkeypatch.undo()
        monkeypatch.setattr(synced_store, "UPLOAD_PAUSES", (0.01, 0.01))
        _flaky(monkeypatch, frontend.job_sync.objects, "put_file", failures=1)  # a passing hiccup
        job_id = (await frontend.enqueue(NewJob("telegram", "c", "u", "a dog", params), picture_bytes())).job_id
        claimed = await worker.claim("w")
        assert claimed.id == job_id and claimed.prompt == "a dog"
        assert worker.job_sync.files.input_path(job_id).read_bytes() == picture_bytes()
    finally:
        await frontend.close()
        await worker.close()


async def test_a_job_whose_inputs_never_reach_the_bucket_fails_and_the_queue_moves_on(tmp_path, monkeypatch):
    from storage import synced_store

    database = f"sqlite:///{tmp_path / 'shared.db'}"
    unsynced = await SqliteJobStore.open(Settings(data_dir=tmp_path / "misconfigured"), tmp_path / "shared.db")
    frontend = await _synced_store(tmp_path / "frontend", database, _folder_bucket(tmp_path))
    worker = await _synced_store(tmp_path / "worker", database, _folder_bucket(tmp_path))
    try:
        params = JobParams(seconds=1.0, resolution=64, steps=2)
        lost = (await unsynced.enqueue(NewJob("telegram", "c", "u1", "a cat", params), picture_bytes())).job_id
        fine = (await frontend.enqueue(NewJob("telegram", "c", "u2", "a dog", params), picture_bytes())).job_id
        assert await worker.claim("w") is None  # within the grace: back to the queue, as if still uploading
        assert (await worker.get(lost)).state is JobState.QUEUED
        monkeypatch.setattr(synced_store, "INPUTS_GRACE_SECONDS", 0.0)
        assert await worker.claim("w") is None
        failed = await worker.get(lost)
        assert failed.state is JobState.FAILED and failed.error == synced_store.INPUTS_MISSING
        assert (await worker.claim("w")).id == fine
    finally:
        for store in (unsynced, frontend, worker):
            await store.close()


async def test_a_bucket_down_while_a_video_is_delivered_delays_it_and_loses_nothing(tmp_path, monkeypatch):
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    frontend = await _synced_store(tmp_path / "frontend", database, _folder_bucket(tmp_path))
    worker = await _synced_store(tmp_path / "worker", database, _folder_bucket(tmp_path))
    try:
        params = JobParams(seconds=1.0, resolution=64, steps=2)
        job_id = (await frontend.enqueue(NewJob("telegram", "c", "u", "a cat", params), picture_bytes())).job_id
        await worker.claim("w")
        files = worker.job_sync.files
        contents = _job_folder(files, job_id)
        assert await worker.complete(job_id, "w", str(files.video_path(job_id)), {})
        _flaky(monkeypatch, frontend.job_sync.objects, "get_file", failures=1)
        assert await frontend.undelivered("telegram") == []  # not this pass: no job with another host's paths
        (delivered,) = await frontend.undelivered("telegram")
        assert Path(delivered.video).read_bytes() == contents[f"jobs/{job_id}/video.mp4"]
    finally:
        await frontend.close()
        await worker.close()


async def test_the_lease_is_renewed_while_a_claims_files_download(tmp_path, monkeypatch):
    import asyncio

    database = f"sqlite:///{tmp_path / 'shared.db'}"
    frontend = await _synced_store(tmp_path / "frontend", database, _folder_bucket(tmp_path))
    slow = await _synced_store(tmp_path / "slow_worker", database, _folder_bucket(tmp_path))
    idle = await _synced_store(tmp_path / "idle_worker", database, _folder_bucket(tmp_path))
    try:
        params = JobParams(seconds=1.0, resolution=64, steps=2)
        job_id = (await frontend.enqueue(NewJob("telegram", "c", "u", "a cat", params), picture_bytes())).job_id
        _job_folder(frontend.job_sync.files, job_id)
        frontend.job_sync.upload_work(job_id)  # a resumed job: a work folder to fetch, file by file
        fetched = _flaky(monkeypatch, slow.job_sync.objects, "get_file", failures=0, pause=0.4)
        claiming = asyncio.ensure_future(slow.claim("slow", lease_seconds=1.0))  # its download takes ~2.5 s
        while (await frontend.get(job_id)).worker != "slow":
            await asyncio.sleep(0.01)
        while not claiming.done():
            assert await idle.claim("idle", lease_seconds=1.0) is None  # the lease never ran out
            await asyncio.sleep(0.2)
        job = claiming.result()
        assert job.id == job_id and len(fetched) >= 6
        assert (await slow.get(job_id)).attempts == 1 and (await slow.get(job_id)).worker == "slow"
    finally:
        for store in (frontend, slow, idle):
            await store.close()
