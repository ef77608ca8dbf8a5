"""What only the PostgreSQL store does, on a real server (tests/postgres_server.py): fenced leases, SKIP LOCKED
claims from several processes, NOTIFY wake-ups, migrations that mirror SQLite's, and connection errors that
never show the password. The contract both stores share is tests/test_storage.py."""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import socket
import time
import traceback

import pytest
from child_processes import collect_answers
from PIL import Image

from storage.eta import PREPARATION_SECTIONS_KEPT
from storage.extension_rules import KEPT_LATENTS
from storage.jobs import Extends, JobParams, JobState, NewJob, Progress
from storage.postgres_connect import DatabaseUnreachable, safe_url
from storage.postgres_schema import MIGRATIONS as POSTGRES_MIGRATIONS
from storage.postgres_store import PostgresJobStore
from storage.schema import MIGRATIONS as SQLITE_MIGRATIONS
from storage.settings import Settings
from storage.sqlite_store import SqliteJobStore, StorageNotWritable
from storage.store import open_store
from storage.wakeups import wait_for_work


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()
PASSWORD = "s3cret-Pa55word"


def _job(user: str = "u1") -> NewJob:
    return NewJob(platform="telegram", chat_id="chat", user_id=user, prompt="a cat", params=JobParams())


def _settings(tmp_path, url: str, **changes) -> Settings:
    base = dict(data_dir=tmp_path / "data", database_url=url, max_queued_per_user=1000, lease_seconds=30.0)
    return Settings(**{**base, **changes})


@pytest.fixture()
async def open_pg(tmp_path, postgres_url):
    """Opens PostgreSQL stores on the test's database (each one as another process would); closes them all."""
    opened = []

    async def open_one(**changes) -> PostgresJobStore:
        opened.append(await open_store(_settings(tmp_path, postgres_url, **changes)))
        return opened[-1]

    yield open_one
    for store in opened:
        await store.close()


# ----- fencing --------------------------------------------------------------------------------------------


async def test_a_claim_taken_over_under_the_same_worker_name_cannot_write_any_more(open_pg):
    """A container restarted with its old hostname and pid claims the job under the same worker name: only the
    lease number tells the two claims apart, and every write of the old one is refused."""
    old, new = await open_pg(), await open_pg()
    job_id = (await old.enqueue(_job(), PNG)).job_id
    await old.claim("gpu-host-7", lease_seconds=0.2)
    first_lease = old.lease_token(job_id, "gpu-host-7")
    await asyncio.sleep(0.3)
    assert (await new.claim("gpu-host-7", lease_seconds=30)).id == job_id
    assert new.lease_token(job_id, "gpu-host-7") == first_lease + 1

    await old.report_progress(job_id, "gpu-host-7", Progress(section=4, sections=4, step=25, steps=25))
    assert not await old.renew(job_id, "gpu-host-7")
    assert not await old.complete(job_id, "gpu-host-7", "late.mp4", {})
    assert not await old.fail(job_id, "gpu-host-7", "late failure")
    assert not await old.mark_cancelled(job_id, "gpu-host-7")
    assert not await old.release(job_id, "gpu-host-7")
    job = await new.get(job_id)
    assert job.state is JobState.RUNNING and job.progress == Progress() and job.video is None and job.error is None

    await new.report_progress(job_id, "gpu-host-7", Progress(section=1, sections=4, step=3, steps=25))
    assert await new.renew(job_id, "gpu-host-7")
    assert await new.complete(job_id, "gpu-host-7", "v.mp4", {})
    done = await old.get(job_id)
    assert done.state is JobState.DONE and done.video == "v.mp4" and done.progress.step == 3


async def test_a_store_that_never_claimed_a_job_cannot_write_to_it(open_pg):
    holder, stranger = await open_pg(), await open_pg()
    job_id = (await holder.enqueue(_job(), PNG)).job_id
    await holder.claim("w1")
    assert not await stranger.renew(job_id, "w1")  # the right name is not enough without the claim's token
    assert not await stranger.complete(job_id, "w1", "v.mp4", {})
    assert (await holder.get(job_id)).state is JobState.RUNNING


# ----- SKIP LOCKED ----------------------------------------------------------------------------------------


async def test_a_claim_skips_a_job_another_claimer_has_locked_instead_of_waiting(open_pg, postgres_url):
    import psycopg

    store = await open_pg()
    first = (await store.enqueue(_job("a"), PNG)).job_id
    second = (await store.enqueue(_job("b"), PNG)).job_id
    async with await psycopg.AsyncConnection.connect(postgres_url) as other, other.transaction():
        await other.execute("SELECT id FROM jobs WHERE id=%s FOR UPDATE", (first,))  # a claimer mid-transaction
        job = await asyncio.wait_for(store.claim("w2"), timeout=5)  # a plain FOR UPDATE would wait here
        assert job.id == second
    assert (await store.claim("w3")).id == first  # free again once the other transaction ended


def _claim_all(url: str, data_dir: str, worker: str, ready, start, results) -> None:
    async def go():
        store = await open_store(Settings(data_dir=data_dir, database_url=url, lease_seconds=30))
        claimed = []
        ready.put((worker, True))
        start.wait()
        while (job := await store.claim(worker)) is not None:
            claimed.append((job.id, store.lease_token(job.id, worker)))
            assert await store.complete(job.id, worker, "v.mp4", {})
        await store.close()
        return claimed

    results.put((worker, asyncio.run(go())))


async def test_four_processes_claiming_at_once_take_every_job_exactly_once(open_pg, postgres_url, tmp_path):
    """No pause between claims, fair order on (the windowed query under FOR UPDATE OF ... SKIP LOCKED)."""
    store = await open_pg()
    ids = {(await store.enqueue(_job(f"u{i % 7}"), PNG)).job_id for i in range(200)}
    ctx = multiprocessing.get_context("spawn")
    results, ready, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim_all, args=(postgres_url, str(tmp_path / "data"), f"w{i}", ready, start,
                                                  results)) for i in range(4)]
    for p in procs:
        p.start()
    collect_answers(ready, procs)
    started = time.perf_counter()
    start.set()
    claimed = collect_answers(results, procs)
    elapsed = time.perf_counter() - started
    for p in procs:
        p.join(timeout=30)
    everything = [job_id for jobs in claimed.values() for job_id, _ in jobs]
    assert sorted(everything) == sorted(ids)  # each job exactly once
    assert {lease for jobs in claimed.values() for _, lease in jobs} == {1}  # nobody claimed one a second time
    assert sum(1 for jobs in claimed.values() if jobs) >= 2
    assert {(await store.get(i)).state for i in ids} == {JobState.DONE}
    print(f"4 processes: {len(ids)} claims and completions in {elapsed:.2f} s, {len(ids) / elapsed:.0f} a second")


# ----- LISTEN/NOTIFY --------------------------------------------------------------------------------------


async def test_an_enqueue_wakes_an_idle_claimer_at_once(open_pg):
    worker_side, frontend = await open_pg(), await open_pg()
    assert await worker_side.listen()
    assert not await worker_side.wait_for_work(0.05)  # nothing queued yet
    woke_at = []
    waiting = asyncio.create_task(wait_for_work(worker_side, 30))
    waiting.add_done_callback(lambda _: woke_at.append(time.perf_counter()))
    await asyncio.sleep(0.1)
    committed_before = time.perf_counter()
    job_id = (await frontend.enqueue(_job(), PNG)).job_id
    assert await asyncio.wait_for(waiting, timeout=5)
    assert woke_at[0] - committed_before < 1.0, "woken by the notification, not by the 30 s timeout"
    assert (await worker_side.claim("w1")).id == job_id


async def test_a_wake_up_that_came_while_the_claimer_was_busy_is_kept(open_pg):
    worker_side, frontend = await open_pg(), await open_pg()
    assert await worker_side.listen()
    await frontend.enqueue(_job(), PNG)  # while the worker is busy elsewhere
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    assert await worker_side.wait_for_work(30)
    assert time.perf_counter() - started < 0.5
    assert not await worker_side.wait_for_work(0.05)  # used up


async def test_progress_and_the_end_of_a_job_wake_the_watchers(open_pg):
    worker_side, frontend = await open_pg(), await open_pg()
    job_id = (await frontend.enqueue(_job(), PNG)).job_id
    await worker_side.claim("w1")
    assert await frontend.listen()
    watchers = [asyncio.create_task(frontend.wait_for_changes(30)) for _ in range(2)]
    await asyncio.sleep(0.1)
    await worker_side.report_progress(job_id, "w1", Progress(section=1, sections=4, step=1, steps=25))
    assert await asyncio.wait_for(asyncio.gather(*watchers), timeout=5) == [True, True]
    watcher = asyncio.create_task(frontend.wait_for_changes(30))
    await asyncio.sleep(0.1)
    await worker_side.complete(job_id, "w1", "v.mp4", {})
    assert await asyncio.wait_for(watcher, timeout=5)


async def test_sqlite_waits_by_polling(tmp_path):
    store = await SqliteJobStore.open(Settings(data_dir=tmp_path / "data"))
    try:
        started = time.perf_counter()
        assert not await wait_for_work(store, 0.2)
        assert time.perf_counter() - started >= 0.2
    finally:
        await store.close()


# ----- extension jobs (migration 7) ---------------------------------------------------------------------


async def test_an_extension_is_stored_estimated_and_keeps_its_source(open_pg):
    """The SQLite store's extension tests (tests/test_storage_extend.py) in brief, on PostgreSQL."""
    store = await open_pg(default_seconds_per_step=2.0, default_section_overhead=5.0)
    plain = NewJob("telegram", "chat", "u1", "a cat", JobParams(seconds=2.0, steps=3, variant="f1"))
    source = (await store.enqueue(plain, PNG)).job_id
    await store.claim("w1")
    store.files.work_dir(source).mkdir(parents=True)
    (store.files.work_dir(source) / KEPT_LATENTS).write_bytes(b"kept")
    assert await store.complete(source, "w1", "v.mp4", {})
    await store.mark_delivered(source)

    extension = NewJob("telegram", "chat", "u1", "the cat jumps", JobParams(seconds=1.2, steps=3, variant="f1"),
                       extends=Extends(source))
    job_id = (await store.enqueue_extension(extension)).job_id
    job = await store.get(job_id)
    assert job.extends == Extends(source) and job.state is JobState.QUEUED
    own = JobParams(seconds=1.2, steps=3).sections * (3 * 2.0 + 5.0) + PREPARATION_SECTIONS_KEPT * 5.0
    assert (await store.position(job_id)) == (1, pytest.approx(own))
    later = time.time() + 30 * 86_400
    assert await store.expired_jobs(later) == []  # the waiting extension still needs its source
    assert await store.cancel(job_id, "telegram", "u1") == "cancelled"
    assert await store.expired_jobs(later) == [source]


# ----- schema ---------------------------------------------------------------------------------------------


async def test_the_schema_mirrors_sqlite_migration_for_migration(open_pg, tmp_path):
    """A migration added to storage/schema.py without its PostgreSQL twin in storage/postgres_schema.py fails
    here: same version count, same tables, same columns."""
    assert len(POSTGRES_MIGRATIONS) == len(SQLITE_MIGRATIONS)
    pg = await open_pg()
    sqlite_store = await SqliteJobStore.open(Settings(data_dir=tmp_path / "sqlite"))
    try:
        sqlite_tables = {name for (name,) in await sqlite_store._all(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")}
        pg_tables = {name for (name,) in await pg._all(
            "SELECT table_name FROM information_schema.tables WHERE table_schema='public'")}
        assert pg_tables == sqlite_tables | {"schema_version"}
        for table in sqlite_tables:
            sqlite_columns = {row[1] for row in await sqlite_store._all(f"PRAGMA table_info({table})")}
            pg_columns = {name for (name,) in await pg._all(
                "SELECT column_name FROM information_schema.columns WHERE table_name=%s", (table,))}
            assert pg_columns == sqlite_columns, table
        assert await pg._one("SELECT version FROM schema_version") == (len(POSTGRES_MIGRATIONS),)
    finally:
        await sqlite_store.close()


async def test_processes_starting_together_migrate_once(tmp_path, postgres_url):
    settings = _settings(tmp_path, postgres_url)
    stores = await asyncio.gather(*(PostgresJobStore.open(settings) for _ in range(3)))
    try:
        assert await stores[0]._one("SELECT version FROM schema_version") == (len(POSTGRES_MIGRATIONS),)
        assert await stores[1]._one("SELECT COUNT(*) FROM schema_version") == (1,)
    finally:
        for store in stores:
            await store.close()


# ----- errors a person reads ------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _everything_said(error: BaseException, caplog) -> str:
    return "\n".join([str(error), repr(error), "".join(traceback.format_exception(error)), caplog.text])


async def test_an_unreachable_server_is_a_clear_error_without_the_password(tmp_path, caplog):
    port = _closed_port()
    url = f"postgresql://framepack:{PASSWORD}@127.0.0.1:{port}/framepack"
    started = time.perf_counter()
    with pytest.raises(DatabaseUnreachable) as raised:
        await open_store(_settings(tmp_path, url))
    assert time.perf_counter() - started < 15
    assert isinstance(raised.value, StorageNotWritable)  # serve and workers say "cannot start: ..." and stop
    said = _everything_said(raised.value, caplog)
    assert PASSWORD not in said
    message = str(raised.value)
    assert f"postgresql://framepack:***@127.0.0.1:{port}/framepack" in message
    assert "refused" in message and "DATABASE_URL" in message


async def test_a_missing_database_is_a_clear_error_without_the_password(tmp_path, caplog, postgres_server):
    url = postgres_server.url("no_such_database").replace("postgres@", f"postgres:{PASSWORD}@")
    with pytest.raises(DatabaseUnreachable) as raised:
        await open_store(_settings(tmp_path, url))
    assert PASSWORD not in _everything_said(raised.value, caplog)
    assert 'database "no_such_database" does not exist' in str(raised.value)


def test_a_url_shown_to_a_person_has_no_password():
    assert safe_url(f"postgresql://bot:{PASSWORD}@db.example:5432/framepack?sslmode=require") == (
        "postgresql://bot:***@db.example:5432/framepack?sslmode=require")
    assert safe_url("postgresql://bot@db/framepack") == "postgresql://bot@db/framepack"


def test_sqlite_never_needs_the_postgres_driver(tmp_path):
    """SQLite stays the embedded default: opening it imports nothing of psycopg's."""
    import subprocess
    import sys

    code = ("import asyncio, sys; from storage.settings import Settings; from storage.store import open_store\n"
            f"s = asyncio.run(open_store(Settings(data_dir={str(tmp_path / 'd')!r})))\n"
            "asyncio.run(s.close()); print('psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
