"""The progress/delivery loop: throttled edits per chat, previews at once, delivery retried until it works."""

from __future__ import annotations

from helpers import picture_bytes

from bot.watcher import Frontend, Undeliverable, Watcher
from storage import sql_store
from storage.jobs import JobParams, NewJob, Progress
from storage.settings import Settings


async def test_edits_are_throttled_per_chat_but_new_previews_go_out_at_once(stores, tmp_path, monkeypatch):
    monkeypatch.setattr(sql_store, "DELIVERY_RETRY_FIRST", 0.0)  # the retry pause has its own test
    store = await stores(Settings(data_dir=tmp_path / "d", max_queued_per_user=10))
    ids = [(await store.enqueue(NewJob("telegram", "chat", f"u{i}", "x", JobParams()), picture_bytes())).job_id
           for i in range(2)]
    for job_id in ids:
        await store.set_status_message(job_id, f"t:{job_id}")
    shown, delivered, failures = [], [], [1]

    async def show(job, text, preview):
        shown.append((job.id, text, preview))

    async def deliver(job):
        if failures:
            failures.pop()
            raise RuntimeError("network down")
        delivered.append(job.id)

    watcher = Watcher(store, Frontend("telegram", show, deliver, lambda job: 3600.0))
    await watcher.tick()
    assert [s[0] for s in shown] == [ids[0]]  # the second job shares the chat: it waits its turn
    await store.claim("w")
    await store.report_progress(ids[0], "w", Progress(1, 2, 3, 25))
    await watcher.tick()
    assert len(shown) == 1  # changed text, but the chat was edited moments ago
    await store.report_progress(ids[0], "w", Progress(1, 2, 25, 25, preview="/tmp/section_0001.gif"))
    await watcher.tick()
    assert shown[-1][0] == ids[0] and shown[-1][2] == "/tmp/section_0001.gif"  # a new preview goes out at once

    await store.complete(ids[0], "w", "v.mp4", {})
    await watcher.tick()  # delivery fails once: the job stays undelivered
    assert delivered == [] and [j.id for j in await store.undelivered("telegram")] == [ids[0]]
    await watcher.tick()
    assert delivered == [ids[0]] and await store.undelivered("telegram") == []


async def _finished_job(store, platform: str = "telegram") -> int:
    job_id = (await store.enqueue(NewJob(platform, "chat", "u", "x", JobParams()), picture_bytes())).job_id
    await store.claim("w")
    await store.complete(job_id, "w", "v.mp4", {})
    return job_id


async def _no_show(job, text, preview):
    pass


async def test_a_transient_delivery_failure_is_retried_with_a_growing_pause(stores, tmp_path, caplog):
    store = await stores(Settings(data_dir=tmp_path / "d"))
    job_id = await _finished_job(store)
    tries = []

    async def deliver(job):
        tries.append(job.id)
        raise ConnectionResetError("the network dropped")

    watcher = Watcher(store, Frontend("telegram", _no_show, deliver, lambda job: 0.0))
    for _ in range(10):  # ten ticks within the first pause: one try, not ten
        await watcher.tick()
    assert tries == [job_id]
    job = await store.get(job_id)
    assert not job.delivered and job.delivery_attempts == 1 and job.delivery_error is None
    pauses = [await store.delivery_failed(job_id, "again", permanent=False) for _ in range(12)]
    assert pauses[:3] == [10.0, 20.0, 40.0] and pauses[-1] == sql_store.DELIVERY_RETRY_MAX
    assert "Traceback" not in caplog.text and caplog.text.count("trying again") == 1


async def test_a_permanent_delivery_failure_is_recorded_once_and_never_retried(stores, tmp_path, caplog):
    store = await stores(Settings(data_dir=tmp_path / "d"))
    blocked = await _finished_job(store)
    gone = await _finished_job(store)
    tries = []

    class Blocked(Exception):
        pass

    async def deliver(job):
        tries.append(job.id)
        if job.id == gone:
            raise FileNotFoundError(2, "No such file or directory", "/data/jobs/2/video.mp4")
        raise Blocked("Forbidden: bot was blocked by the user")

    watcher = Watcher(store, Frontend("telegram", _no_show, deliver, lambda job: 0.0,
                                      is_permanent=lambda error: isinstance(error, Blocked)))
    for _ in range(5):
        await watcher.tick()
    assert sorted(tries) == [blocked, gone]
    assert (await store.get(blocked)).delivery_error == "Forbidden: bot was blocked by the user"
    assert "No such file" in (await store.get(gone)).delivery_error
    assert await store.undelivered("telegram") == []
    assert caplog.text.count("given up") == 2 and "Traceback" not in caplog.text


async def test_undeliverable_from_a_frontend_is_permanent(stores, tmp_path):
    store = await stores(Settings(data_dir=tmp_path / "d"))
    job_id = await _finished_job(store)

    async def deliver(job):
        raise Undeliverable("DMs closed and no channel to post in")

    await Watcher(store, Frontend("telegram", _no_show, deliver, lambda job: 0.0)).tick()
    assert (await store.get(job_id)).delivery_error == "DMs closed and no channel to post in"


async def test_admins_hear_of_a_worker_problem_once(stores, tmp_path):
    store = await stores(Settings(data_dir=tmp_path / "d", lease_seconds=30))
    told = []

    async def notify(text):
        told.append(text)

    async def deliver(job):
        pass

    frontend = Frontend("telegram", _no_show, deliver, lambda job: 0.0, notify_admins=notify)
    await store.heartbeat("gpu0", "No CUDA GPU is visible.")
    for _ in range(3):
        await Watcher(store, frontend).tick()  # a new watcher each time: as after a restart
    await store.heartbeat("gpu0", "FramePack weights are missing.")
    await Watcher(store, frontend).tick()
    assert len(told) == 2 and "No CUDA GPU" in told[0] and "weights are missing" in told[1]


async def test_a_problem_that_comes_back_is_told_again_and_a_notice_that_failed_is_tried_again(stores, tmp_path):
    store = await stores(Settings(data_dir=tmp_path / "d", lease_seconds=30))
    told, failing = [], [1]

    async def notify(text):
        if failing:
            failing.pop()
            raise RuntimeError("no admin could be reached")
        told.append(text)

    async def deliver(job):
        pass

    frontend = Frontend("telegram", _no_show, deliver, lambda job: 0.0, notify_admins=notify)
    await store.heartbeat("gpu0", "The disk is full.")
    await Watcher(store, frontend).tick()  # the send fails: not counted as told
    await Watcher(store, frontend).tick()
    await Watcher(store, frontend).tick()
    assert told == [told[0]] and "disk is full" in told[0]
    await store.heartbeat("gpu0")  # mended
    await Watcher(store, frontend).tick()
    await store.heartbeat("gpu0", "The disk is full.")  # and full again, later
    await Watcher(store, frontend).tick()
    assert len(told) == 2


async def test_a_preview_file_not_found_does_not_stop_the_jobs_progress(stores, tmp_path):
    store = await stores(Settings(data_dir=tmp_path / "d"))
    job_id = (await store.enqueue(NewJob("telegram", "chat", "u", "x", JobParams()), picture_bytes())).job_id
    await store.set_status_message(job_id, "t:1")
    tries = []

    async def show(job, text, preview):
        tries.append(preview)
        if len(tries) == 1:  # a preview gone between the worker's report and this read
            raise FileNotFoundError(2, "No such file or directory", preview)

    async def deliver(job):
        pass

    watcher = Watcher(store, Frontend("telegram", show, deliver, lambda job: 0.0))
    job = await store.claim("w")
    await store.report_progress(job_id, "w", Progress(1, 2, 1, 2, "/gone/section_0001.gif"), lease=job.lease)
    await watcher.tick()
    assert (await store.get(job_id)).status_message == "t:1"  # still shown: the next preview goes there
    await store.report_progress(job_id, "w", Progress(2, 2, 1, 2, "/data/section_0002.gif"), lease=job.lease)
    await watcher.tick()
    assert tries == ["/gone/section_0001.gif", "/data/section_0002.gif"]
