"""Fault injection: what the workers and the queue do when the machine, not the job, is at fault.

A broken models folder, no device, damaged weights, a full disk, a read-only database, a cancel that
comes after the last step. In each, no accepted job is lost and nobody reads a path or a stack.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import job_finished, picture_bytes, wait_for, worker_env, worker_settings

import engine.worker as worker_module
from engine.store_outage import StoreOutage
from engine.video import probe
from engine.worker import FAILED_TEXT, Worker
from storage.jobs import JobParams, JobState, NewJob, QueueFull
from storage.settings import Settings

TINY = dict(resolution=64, steps=2)


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch):
    """The worker's not-ready and outage pauses, shortened so that a test sees several rounds of it."""
    monkeypatch.setattr(worker_module, "NOT_READY_PAUSE_FIRST", 0.2)
    monkeypatch.setattr(worker_module, "NOT_READY_PAUSE_MAX", 0.8)
    monkeypatch.setattr(worker_module, "OUTAGE_RETRY_SECONDS", 0.2)


async def _enqueue(store, count: int = 1, **params) -> list[int]:
    made = []
    for i in range(count):
        job = NewJob("telegram", "c", f"u{i}", "a boat drifts", JobParams(**{"seconds": 1.0, **TINY, **params}))
        made.append((await store.enqueue(job, picture_bytes())).job_id)
    return made


async def _states(store, ids) -> list[JobState]:
    return [(await store.get(i)).state for i in ids]


async def test_a_missing_models_folder_fails_no_job_and_the_worker_recovers(stores, tmp_path, tiny_models_dir):
    models = tmp_path / "models"
    models.mkdir()
    settings = worker_settings(tmp_path, models, lease_seconds=5.0)
    store = await stores(settings)
    ids = await _enqueue(store, 20)
    worker = Worker(store, settings, "w1")
    task = asyncio.create_task(worker.run(max_jobs=1))
    await asyncio.sleep(3)  # several rounds of "not ready"
    assert set(await _states(store, ids)) == {JobState.QUEUED}
    status = await store.worker_status()
    assert status.alive == 1 and status.stalled and "missing" in status.problems[0]
    shutil.copytree(tiny_models_dir, models, dirs_exist_ok=True)  # the operator fixes the folder
    await asyncio.wait_for(task, 120)
    states = await _states(store, ids)
    assert states.count(JobState.DONE) == 1 and states.count(JobState.QUEUED) == 19
    assert (await store.worker_status()).ready == 1


async def test_no_device_keeps_the_jobs_waiting(stores, tmp_path, tiny_models_dir, monkeypatch):
    """ENGINE_GPUS naming a GPU that is not there shows up in the worker as no CUDA device."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = worker_settings(tmp_path, tiny_models_dir, engine_device="cuda")
    store = await stores(settings)
    ids = await _enqueue(store, 5)
    worker = Worker(store, settings, "w1")
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(2)
    worker.request_stop()
    await asyncio.wait_for(task, 30)
    assert set(await _states(store, ids)) == {JobState.QUEUED}
    assert all(j.attempts == 0 for j in [await store.get(i) for i in ids])
    assert "no CUDA GPU" in (await store.worker_problems())[0][1]


async def test_damaged_weights_give_the_job_back_and_do_not_count_its_attempt(stores, tmp_path, tiny_models_dir):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    weights = models / "lllyasviel" / "FramePackI2V_HY" / "diffusion_pytorch_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:1000])  # truncated, as by a download that broke off
    settings = worker_settings(tmp_path, models)
    store = await stores(settings)
    (job_id,) = await _enqueue(store)
    worker = Worker(store, settings, "w1")
    task = asyncio.create_task(worker.run(max_jobs=1))

    async def given_back():
        problems = await store.worker_problems()
        return problems if problems and "Loading the original models failed" in problems[0][1] else None

    await wait_for(given_back, timeout=60)
    job = await store.get(job_id)
    assert job.state is JobState.QUEUED and job.attempts == 0
    weights.write_bytes(good)
    await asyncio.wait_for(task, 120)
    assert (await store.get(job_id)).state is JobState.DONE


async def test_a_full_disk_mid_render_pauses_the_job_and_it_finishes_later(stores, tmp_path, tiny_models_dir,
                                                                           monkeypatch):
    import engine.render

    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    (job_id,) = await _enqueue(store, seconds=2.4)  # 2 sections
    real_write = engine.render.write_segment
    failures = []

    def write_or_disk_full(path, frames, crf):
        if not failures:  # the first segment: ffmpeg dies of a full disk, Python sees a broken pipe
            failures.append(path)
            raise OSError(f"[Errno 32] Broken pipe\n\nFFMPEG COMMAND:\nffmpeg -y {path}\n\nFFMPEG STDERR OUTPUT:\n"
                          f"{path}: No space left on device")
        return real_write(path, frames, crf)

    monkeypatch.setattr(engine.render, "write_segment", write_or_disk_full)
    await Worker(store, settings, "w1").run(max_jobs=1)
    job = await store.get(job_id)
    assert failures and job.state is JobState.DONE and job.attempts == 1, job.error
    assert probe(Path(job.video)).frames == 73


async def test_the_queue_away_for_a_moment_loses_no_job_and_no_worker(stores, tmp_path, tiny_models_dir, caplog):
    """The database restarting (or SQLite busy past its timeout) under a worker: its heartbeat, its claim, the
    lease renewal and cancel poll of the job it renders and that job's completion each fail twice. The worker
    rides it out: the job is done on its first attempt, and the outage is logged once, not at every retry."""
    settings = worker_settings(tmp_path, tiny_models_dir, lease_seconds=4.0)
    store = await stores(settings)
    (job_id,) = await _enqueue(store, seconds=2.4)  # 2 sections: the render outlives a few lease renewals
    failed = {}

    def away_twice(name):
        real = getattr(store, name)

        async def call(*args, **kwargs):
            if failed.setdefault(name, 0) < 2:
                failed[name] += 1
                raise sqlite3.OperationalError("database is locked")
            return await real(*args, **kwargs)

        return call

    for name in ("heartbeat", "claim", "renew", "is_cancel_requested", "complete"):
        setattr(store, name, away_twice(name))
    with caplog.at_level("INFO", logger="engine.store_outage"):
        await asyncio.wait_for(Worker(store, settings, "w1").run(max_jobs=1), 180)
    job = await store.get(job_id)
    assert job.state is JobState.DONE and job.attempts == 1, job.error
    # The lease and cancel calls fail as often as the render's length gives them turns; the others twice each.
    assert failed["heartbeat"] == failed["claim"] == failed["complete"] == 2, failed
    assert failed["renew"] >= 1 and failed["is_cancel_requested"] >= 1, failed
    said = [r.getMessage() for r in caplog.records if r.name == "engine.store_outage"]
    assert said and all("cannot be reached" in line or "is back" in line for line in said)


async def test_an_outage_is_logged_when_it_starts_and_when_it_ends_not_at_each_retry(caplog):
    outage = StoreOutage("w1")

    async def away():
        raise sqlite3.OperationalError("database is locked")

    async def back():
        return 7

    with caplog.at_level("INFO", logger="engine.store_outage"):
        assert [await outage.attempt(away(), default=-1) for _ in range(5)] == [-1] * 5
        assert outage.ongoing and outage.failures == 5
        assert await outage.attempt(back()) == 7 and not outage.ongoing
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "cannot be reached (OperationalError: database is locked)" in said[0]
    assert "is back after" in said[1]
    calls = []

    async def away_then_back():
        calls.append(1)
        return await (away() if len(calls) < 3 else back())

    assert await outage.persist(away_then_back, seconds=5, pause=0.01) == 7 and len(calls) == 3
    with pytest.raises(sqlite3.OperationalError):  # still away when its time is up: the error, for the caller
        await outage.persist(away, seconds=0.05, pause=0.01)


async def test_a_failed_render_tells_the_person_a_plain_sentence(stores, tmp_path, tiny_models_dir, monkeypatch):
    import engine.render

    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    (job_id,) = await _enqueue(store)

    def broken(path, frames, crf):
        raise RuntimeError(f"ffmpeg exited with code 1\nFFMPEG COMMAND:\nffmpeg -i pipe: {path}")

    monkeypatch.setattr(engine.render, "write_segment", broken)
    await Worker(store, settings, "w1").run(max_jobs=1)
    job = await store.get(job_id)
    assert job.state is JobState.FAILED and job.error == FAILED_TEXT
    assert str(tmp_path) not in job.error and "ffmpeg" not in job.error.lower()


async def test_a_cancel_after_the_last_step_ends_the_job_cancelled(stores, tmp_path, tiny_models_dir, monkeypatch):
    """The person was told "stopping": the video must not be delivered."""
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    (job_id,) = await _enqueue(store, upload_limits=(10**9,))
    worker = Worker(store, settings, "w1")
    loop = asyncio.get_running_loop()
    import engine.render

    real_concat = engine.render.concat_segments
    answers = []

    def cancel_then_join(paths, out):  # every step is done; the person cancels now
        answers.append(asyncio.run_coroutine_threadsafe(store.cancel(job_id, "telegram", "u0"), loop).result())
        return real_concat(paths, out)

    monkeypatch.setattr(engine.render, "concat_segments", cancel_then_join)
    await worker.run(max_jobs=1)
    job = await store.get(job_id)
    assert answers == ["stopping"]
    assert job.state is JobState.CANCELLED and job.video is None and job.fitted == {}


async def test_complete_after_a_cancel_request_is_a_cancel(stores, tmp_path):
    store = await stores(Settings(data_dir=tmp_path / "d"))
    (job_id,) = await _enqueue(store)
    await store.claim("w")
    assert await store.cancel(job_id, "telegram", "u0") == "stopping"
    assert await store.complete(job_id, "w", "v.mp4", {}) is False
    job = await store.get(job_id)
    assert job.state is JobState.CANCELLED and job.video is None
    assert [j.id for j in await store.undelivered("telegram")] == [job_id]  # the person hears it was cancelled


async def test_enqueue_on_a_full_disk_stores_nothing_and_says_so(stores, tmp_path, monkeypatch):
    from storage.files import JobFiles
    from storage.jobs import Unavailable

    store = await stores(Settings(data_dir=tmp_path / "d"))

    def disk_full(self, job_id, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.input_path(job_id)))

    monkeypatch.setattr(JobFiles, "write_input", disk_full)
    with pytest.raises(Unavailable, match="out of disk space") as raised:
        await _enqueue(store)
    assert str(tmp_path) not in str(raised.value)
    assert await store.queue_length() == 0


def _make_read_only(paths: list[Path], read_only: bool) -> None:
    """Root writes through file permissions, so as root the files and folders are made immutable instead."""
    for path in paths:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i" if read_only else "-i", str(path)], check=True)
        elif read_only:
            path.chmod(0o555 if path.is_dir() else 0o444)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)


async def _make_database(settings: Settings) -> None:
    from storage.sqlite_store import SqliteJobStore

    store = await SqliteJobStore.open(settings)
    await store.enqueue(NewJob("telegram", "c", "u", "kept", JobParams(**TINY)), picture_bytes())
    await store.close()


@pytest.mark.parametrize("command", [["-m", "bot.cli", "serve"], ["-m", "engine.worker", "--name", "w"]])
def test_a_read_only_database_refuses_to_start_with_one_message(tmp_path, tiny_models_dir, command):
    settings = worker_settings(tmp_path, tiny_models_dir)
    asyncio.run(_make_database(settings))
    data = Path(settings.data_dir)
    paths = [data, *data.rglob("*")]
    _make_read_only(paths, True)
    try:
        done = subprocess.run([sys.executable, *command], env=worker_env(settings), cwd=Path(__file__).parents[1],
                              capture_output=True, text=True, timeout=120)
    finally:
        _make_read_only(paths, False)
    output = done.stdout + done.stderr
    assert done.returncode in (2, worker_module.EXIT_CANNOT_START), output
    assert "cannot be written" in output and "Traceback" not in output, output


async def test_the_queue_says_when_no_worker_can_render(stores, tmp_path):
    from bot import texts

    store = await stores(Settings(data_dir=tmp_path / "d", lease_seconds=30))
    await store.heartbeat("gpu0", "FramePack weights are missing from the folder /srv/models")
    (job_id,) = await _enqueue(store)
    text = texts.queue_summary(await store.user_jobs("telegram", "u0"), await store.positions(),
                               await store.queue_length(), await store.worker_status())
    assert "No worker can render right now" in text and "/srv/models" not in text
    await store.heartbeat("gpu0")
    text = texts.queue_summary(await store.user_jobs("telegram", "u0"), await store.positions(),
                               await store.queue_length(), await store.worker_status())
    assert "No worker" not in text
    assert await job_finished(store, job_id) is None


async def test_a_frontend_that_dies_is_restarted_and_each_death_logged(stores, tmp_path, monkeypatch, caplog):
    from fake_telegram import FakeTelegram

    import bot.serve
    from bot import telegram_frontend

    monkeypatch.setattr(bot.serve, "BACKOFF_START", 0.1)
    fake = FakeTelegram("42:tok")
    url = await fake.start()
    fake.server_errors["getMe"] = 2  # the Bot API is down at start, twice
    settings = Settings(data_dir=tmp_path / "d", telegram_token="42:tok", telegram_api_url=url)
    store = await stores(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(bot.serve.supervise(
        "telegram", lambda: telegram_frontend.run(settings, store, stop), stop))
    try:
        fake.send_text(7, 7, "/help")
        await fake.wait_for("sendMessage", lambda p: "I animate a picture" in p.get("text", ""), timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await fake.stop()
    deaths = [r.getMessage() for r in caplog.records if "frontend telegram stopped" in r.getMessage()]
    assert len(deaths) == 2 and "Internal Server Error" in deaths[0], deaths


def test_secrets_are_redacted_from_log_lines_and_tracebacks():
    import logging

    from storage.log_setup import RedactingFilter, secrets_of

    settings = Settings(telegram_token="123456:AAH-secret-part-xyz", discord_token="disc.ord.tok3n",
                        database_url="sqlite:///x.db")
    secrets = secrets_of(settings)
    assert {"123456:AAH-secret-part-xyz", "AAH-secret-part-xyz", "disc.ord.tok3n"} <= set(secrets)

    class Postgres:  # a future backend's URL: its password is a secret too
        database_url = "postgresql://bot:pa55w0rd-here@db:5432/framepack"

    assert secrets_of(Postgres()) == ["pa55w0rd-here"]
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, "POST %s", ("https://api/bot123456:AAH-"
                               "secret-part-xyz/getMe",), None)
    try:
        raise RuntimeError("token disc.ord.tok3n rejected")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    RedactingFilter(secrets).filter(record)
    text = logging.Formatter().format(record)
    assert "secret-part" not in text and "tok3n" not in text and "bot***" in text


def _tiny_render(models, tmp_path: Path, name: str, **changes):
    from conftest import make_picture

    from engine.render import RenderRequest, render

    request = RenderRequest(prompt="a lighthouse blinks", steps=2, resolution=64, seconds=3.6, seed=5, **changes)
    return render(models, make_picture(), request, tmp_path / name, tmp_path / f"{name}.mp4")


@pytest.mark.parametrize("variant", ["original", "f1"])
def test_a_segment_damaged_while_paused_is_rendered_again_on_resume(models_for, tmp_path, variant):
    from conftest import make_picture
    from helpers import video_frames

    from engine.render import Paused, RenderRequest, render

    models = models_for[variant]
    whole = _tiny_render(models, tmp_path, "whole", variant=variant)
    request = RenderRequest(prompt="a lighthouse blinks", steps=2, resolution=64, seconds=3.6, seed=5, variant=variant)
    seen = []
    with pytest.raises(Paused):  # stopped in the third section, its first step done
        render(models, make_picture(), request, tmp_path / "job", tmp_path / "job.mp4",
               on_step=lambda e: seen.append((e.section, e.step)), should_pause=lambda: (3, 1) in seen)
    segments = sorted((tmp_path / "job").glob("segment_*.mp4"))
    assert segments
    segments[-1].write_bytes(segments[-1].read_bytes()[:300])  # truncated
    if len(segments) > 1:
        segments[0].unlink()  # gone
    resumed = render(models, make_picture(), request, tmp_path / "job", tmp_path / "job.mp4")
    assert resumed.frames == whole.frames == 109
    assert np.array_equal(video_frames(resumed.video), video_frames(whole.video))


def test_a_segment_that_goes_bad_before_the_join_is_rendered_again(models_for, tmp_path, monkeypatch, caplog):
    from helpers import video_frames

    import engine.render

    models = models_for["original"]
    whole = _tiny_render(models, tmp_path, "whole")
    real_write = engine.render.write_segment
    spoiled = []

    def write_then_spoil(path, frames, crf):
        written = real_write(path, frames, crf)
        if not spoiled:  # the first segment silently loses its end on disk
            spoiled.append(path)
            path.write_bytes(path.read_bytes()[:-500])
        return written

    monkeypatch.setattr(engine.render, "write_segment", write_then_spoil)
    result = _tiny_render(models, tmp_path, "job")
    assert spoiled and "missing or damaged" in caplog.text
    assert result.frames == 109 and np.array_equal(video_frames(result.video), video_frames(whole.video))


def test_without_the_saved_latents_a_bad_segment_renders_from_the_start(models_for, tmp_path):
    from conftest import make_picture
    from helpers import video_frames

    from engine.render import RenderRequest, render

    models = models_for["f1"]
    whole = _tiny_render(models, tmp_path, "whole", variant="f1")
    request = RenderRequest(prompt="a lighthouse blinks", steps=2, resolution=64, seconds=3.6, seed=5, variant="f1")
    render(models, make_picture(), request, tmp_path / "job", tmp_path / "job.mp4")
    for latents in (tmp_path / "job").glob("latents_*.pt"):
        latents.unlink()
    sorted((tmp_path / "job").glob("segment_*.mp4"))[-1].unlink()
    again = render(models, make_picture(), request, tmp_path / "job", tmp_path / "job.mp4")
    assert again.frames == 109 and np.array_equal(video_frames(again.video), video_frames(whole.video))


def test_a_bad_segment_found_after_the_gpu_was_given_up_waits_for_it_then_renders_again(models_for, tmp_path,
                                                                                          monkeypatch):
    """The render gives up its GPU turn after its last decode; a segment found spoiled after that (at the
    check before the join) sends it back for the turn, held meanwhile by the next job, and it puts its
    own LoRAs back before rendering that part again."""
    import threading
    import time

    from helpers import video_frames

    import engine.render
    from engine.gpu_turn import GpuTurn

    models = models_for["original"]
    whole = _tiny_render(models, tmp_path, "whole")
    lock, events = threading.Lock(), []
    next_job = GpuTurn(lock)

    def next_job_runs():  # takes the GPU as soon as it is given up, holds it a while
        next_job.take_back()
        events.append("next job has the GPU")
        time.sleep(0.5)
        events.append("next job done")
        next_job.release()

    turn = GpuTurn(lock, on_release=lambda: threading.Thread(target=next_job_runs).start())
    real_check, real_loras = engine.render._first_section_to_redo, engine.render.use_loras
    spoiled, loras = [], []

    def spoil_then_check(work_dir, segments, request, complete=False):
        if complete and not spoiled:  # every section decoded, the turn given up
            deadline = time.monotonic() + 30
            while "next job has the GPU" not in events and time.monotonic() < deadline:
                time.sleep(0.01)
            spoiled.append(sorted(work_dir.glob("segment_*.mp4"))[0])
            spoiled[0].write_bytes(spoiled[0].read_bytes()[:-500])
        return real_check(work_dir, segments, request, complete)

    def use_loras(*args):
        loras.append(turn.held)
        events.append("this job's LoRAs")
        return real_loras(*args)

    monkeypatch.setattr(engine.render, "_first_section_to_redo", spoil_then_check)
    monkeypatch.setattr(engine.render, "use_loras", use_loras)
    with turn:
        result = _tiny_render_with_turn(models, tmp_path, "job", turn)
    assert spoiled and events[0] == "this job's LoRAs"
    # It waited for the turn, and gave it up again after the section it rendered again.
    assert events[1:5] == ["next job has the GPU", "next job done", "this job's LoRAs", "next job has the GPU"]
    assert loras == [True, True]
    assert result.frames == 109 and np.array_equal(video_frames(result.video), video_frames(whole.video))


def _tiny_render_with_turn(models, tmp_path: Path, name: str, turn):
    from conftest import make_picture

    from engine.render import RenderRequest, render

    request = RenderRequest(prompt="a lighthouse blinks", steps=2, resolution=64, seconds=3.6, seed=5)
    return render(models, make_picture(), request, tmp_path / name, tmp_path / f"{name}.mp4", gpu_turn=turn)


@pytest.mark.parametrize("max_chars", [2000, 4096])  # Discord's message limit, Telegram's
async def test_a_long_queue_is_listed_as_far_as_one_message_holds(stores, tmp_path, max_chars):
    from bot import texts

    store = await stores(Settings(data_dir=tmp_path / "d", max_queued_per_user=200))
    for _ in range(120):  # an admin raised the quota
        job = NewJob("telegram", "c", "u0", "a boat drifts", JobParams(**{"seconds": 1.0, **TINY}))
        await store.enqueue(job, picture_bytes())
    await store.heartbeat("gpu0", "FramePack weights are missing")
    jobs = await store.user_jobs("telegram", "u0")
    text = texts.queue_summary(jobs, await store.positions(), await store.queue_length(), await store.worker_status(),
                               max_chars=max_chars)
    listed = text.count("in the queue;") + text.count("next in line;")
    assert len(text) <= max_chars and 10 < listed < 120
    assert f"… and {120 - listed} more of yours." in text
    assert text.endswith("120 job(s) waiting in all.\n" + texts.NO_WORKER)


@pytest.mark.parametrize("setting", ["DATA_DIR", "STORAGE_URL"])
def test_a_folder_that_cannot_be_made_refuses_to_start_with_one_message(tmp_path, tiny_models_dir, setting):
    settings = worker_settings(tmp_path, tiny_models_dir)
    (tmp_path / "a_file").write_text("not a folder")
    folder = tmp_path / "a_file" / "below"  # under a file: no permission setting makes it possible, even as root
    env = worker_env(settings) | {setting: str(folder) if setting == "DATA_DIR" else f"file://{folder}"}
    done = subprocess.run([sys.executable, "-m", "bot.cli", "frontends"], env=env, cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=60)  # a store left open would hang it here
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "cannot start" in output and "cannot be made" in output, output
    assert "Traceback" not in output, output


async def test_a_quota_of_zero_says_the_bot_is_paused(stores, tmp_path):
    store = await stores(Settings(data_dir=tmp_path / "d"))
    await store.set_limit("max_queued_per_user", "0", "admin")
    job = NewJob("telegram", "c", "u0", "a boat drifts", JobParams(**{"seconds": 1.0, **TINY}))
    with pytest.raises(QueueFull, match="takes no new videos right now"):
        await store.enqueue(job, picture_bytes())


async def test_a_delivery_failing_for_weeks_keeps_its_hourly_pause(stores, tmp_path):
    store = await stores(Settings(data_dir=tmp_path / "d"))
    (job_id,) = await _enqueue(store)
    for attempts in (0, 12, 1100):  # 2**1100 seconds is no float: the pause stays capped
        async with store._write() as session:
            await session.execute("UPDATE jobs SET delivery_attempts=? WHERE id=?", (attempts, job_id))
        pause = await store.delivery_failed(job_id, "a passing error", permanent=False)
        assert pause == (5.0 if attempts == 0 else 3600.0)
