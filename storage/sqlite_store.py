"""The job queue on SQLite in WAL mode, through aiosqlite: the embedded default backend.

Every state change that more than one process can race on runs inside `BEGIN IMMEDIATE`, so two
workers never claim one job and a quota is never overrun. A PostgreSQL backend would implement the
same `JobStore` methods with `SELECT ... FOR UPDATE SKIP LOCKED` claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path

import aiosqlite

from storage.direction_rules import check_direction
from storage.eta import Speed, finish_times, preparation_seconds
from storage.extension_rules import check_extension_request, check_extension_source
from storage.files import JobFiles, write_durably
from storage.inputs import InputError, check_prompt, load_image
from storage.jobs import (
    MAX_JOB_ID,
    Enqueued,
    Extends,
    GuidePictures,
    Job,
    JobParams,
    JobPictures,
    JobState,
    NewJob,
    Progress,
    QueueFull,
    Unavailable,
    WorkerStatus,
)
from storage.limits import LIMIT_NAMES, VARIANTS, Limits, parse_limit
from storage.schema import MIGRATIONS
from storage.settings import Settings
from storage.uploaded_videos import VideoLimits, check_video_bytes
from storage.wakeups import poll
from storage.worker_info import WORKERS_SQL, WorkerInfo, worker_info

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a job that takes down its worker this often is failed instead of retried
# A delivery that failed for a passing reason waits this long before the next try, doubling up to the cap.
DELIVERY_RETRY_FIRST, DELIVERY_RETRY_MAX = 5.0, 3600.0
_JOB_COLUMNS = (
    "id, platform, chat_id, reply_to, user_id, user_name, prompt, params, state, created_at, started_at, "
    "finished_at, worker, lease_expires_at, attempts, cancel_requested, progress, error, result, delivered, "
    "status_message, guild_id, delivery_error, delivery_attempts, guides, files_removed_at, extends_job, "
    "extends_video, lease"
)


# A worker's write matches the job only while its claim holds: the job running, under this worker's name and,
# when the worker gives the claim's lease number, under that claim (a job taken over has a higher number).
# Arguments: job id, worker, lease, lease.
_HELD = "id=? AND worker=? AND state='running' AND (? IS NULL OR lease=?)"


class StorageNotWritable(RuntimeError):
    """The database or the data folder cannot be written; the message says which and what to do."""


def _job_from_row(row) -> Job:
    params = json.loads(row[7])
    params["upload_limits"] = tuple(params.get("upload_limits", ()))
    result = json.loads(row[18]) if row[18] else {}
    return Job(
        id=row[0], platform=row[1], chat_id=row[2], reply_to=row[3], user_id=row[4], user_name=row[5],
        prompt=row[6], params=JobParams(**params), state=JobState(row[8]), created_at=row[9],
        started_at=row[10], finished_at=row[11], worker=row[12], lease_expires_at=row[13], attempts=row[14],
        cancel_requested=bool(row[15]), progress=Progress(**json.loads(row[16])) if row[16] else Progress(),
        error=row[17], video=result.get("video"),
        fitted={int(k): v for k, v in result.get("fitted", {}).items()},
        delivered=bool(row[19]), status_message=row[20], guild_id=row[21], delivery_error=row[22],
        delivery_attempts=row[23], guides=_guides_from_json(row[24]), files_removed_at=row[25],
        extends=_extends(row[26], row[27]), lease=row[28],
    )


def _extends(job_id: int | None, video_name: str | None) -> Extends | None:
    """An extension's source; None for a job made from pictures (every row from before migration 7)."""
    if job_id is None and video_name is None:
        return None
    return Extends(job_id, video_name)


def _guides_from_json(text: str | None) -> GuidePictures:
    if not text:
        return GuidePictures()
    raw = json.loads(text)
    return GuidePictures(end=bool(raw.get("end")), keyframes=tuple(raw.get("keyframes", ())))


class SqliteJobStore:
    """Open with `await SqliteJobStore.open(settings)`; close with `await store.close()`."""

    def __init__(self, db: aiosqlite.Connection, settings: Settings, files: JobFiles):
        self.db = db
        self.settings = settings
        self.files = files
        # One connection serves many coroutines: their transactions must not interleave.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, settings: Settings, path: Path | None = None) -> SqliteJobStore:
        data_dir = Path(settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        path = path or data_dir / "framepack.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(path, isolation_level=None, timeout=30)
        except sqlite3.OperationalError as error:
            raise StorageNotWritable(_not_writable(path, error)) from None
        store = cls(db, settings, JobFiles(data_dir))
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=30000")
            await store._migrate()
            await store._check_writable(path)
        except sqlite3.OperationalError as error:
            await db.close()
            if "readonly" in str(error) or "read-only" in str(error) or "unable to open" in str(error):
                raise StorageNotWritable(_not_writable(path, error)) from None
            raise
        except BaseException:
            await db.close()
            raise
        return store

    async def _check_writable(self, path: Path) -> None:
        """Refuse to start on a read-only database or data folder: every worker would crash-loop on it."""
        async with self._write() as db:
            await db.execute("CREATE TABLE IF NOT EXISTS write_probe (x)")
            await db.execute("DROP TABLE write_probe")
        probe = self.files.root.parent / ".write-probe"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as error:
            raise StorageNotWritable(
                f"The data folder {probe.parent} cannot be written ({error.strerror or error}). "
                "Check its permissions and free disk space, or point DATA_DIR elsewhere."
            ) from None

    async def close(self) -> None:
        await self.db.close()

    @contextlib.asynccontextmanager
    async def _write(self):
        """One write transaction that takes the database's write lock up front."""
        async with self._lock:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                yield self.db
            except BaseException:
                # Also when the task was cancelled while BEGIN waited: aiosqlite's thread still runs it, and
                # this ROLLBACK queues behind it, so no transaction is left open for the next writer.
                with contextlib.suppress(sqlite3.OperationalError):  # BEGIN itself failed: nothing to undo
                    await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    async def _migrate(self) -> None:
        async with self._write() as db:
            version = (await (await db.execute("PRAGMA user_version")).fetchone())[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {number}")
                log.info("database migrated to version %d", number)

    async def _one(self, sql: str, args=()) -> tuple | None:
        return await (await self.db.execute(sql, args)).fetchone()

    async def _all(self, sql: str, args=()) -> list[tuple]:
        return list(await (await self.db.execute(sql, args)).fetchall())

    # ----- waiting for changes --------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> bool:
        """Other processes' writes to the file are not heard of here: waits `timeout` (the poll interval)."""
        return await poll(timeout)

    async def wait_for_changes(self, timeout: float) -> bool:
        return await poll(timeout)

    # ----- limits ---------------------------------------------------------------------------------

    async def get_limits(self) -> Limits:
        limits = Limits.from_settings(self.settings)
        for name, value in await self._all("SELECT name, value FROM limits"):
            if name in LIMIT_NAMES:
                decoded = json.loads(value)
                limits = limits.with_value(name, tuple(decoded) if isinstance(decoded, list) else decoded)
        return limits

    async def set_limit(self, name: str, raw: str, changed_by: str) -> Limits:
        """Parse and store one limit; raises InputError with the reason for a bad name or value."""
        name, value = parse_limit(name, str(raw))
        async with self._write() as db:
            await db.execute(
                "INSERT INTO limits (name, value, changed_by, changed_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value, changed_by=excluded.changed_by, "
                "changed_at=excluded.changed_at",
                (name, json.dumps(value), changed_by, time.time()),
            )
        log.info("limit %s set to %r by %s", name, value, changed_by)
        return await self.get_limits()

    async def limit_changes(self) -> dict[str, tuple[str | None, float]]:
        """Who last changed each limit, and when."""
        rows = await self._all("SELECT name, changed_by, changed_at FROM limits")
        return {name: (by, at) for name, by, at in rows}

    # ----- enqueue --------------------------------------------------------------------------------

    def _check_request(self, job: NewJob, limits: Limits) -> None:
        p = job.params
        if job.extends is not None:  # first: its own words for what an extension cannot take
            check_extension_request(job, limits)
        if p.variant not in VARIANTS:
            raise InputError(f"Unknown variant {p.variant!r}; the variants are {', '.join(VARIANTS)}.")
        if not 0 <= p.seed < 2**63:
            raise InputError("The seed must be a whole number from 0 to 2^63-1.")
        if not 0.0 <= p.teacache <= 1.0:
            raise InputError("The TeaCache threshold must be between 0 and 1.")
        if p.variant not in limits.allowed_variants:
            raise InputError(f"The {p.variant} variant is switched off here; use {', '.join(limits.allowed_variants)}.")
        if not 1 <= p.seconds <= limits.max_seconds:
            raise InputError(f"The duration must be between 1 and {limits.max_seconds:g} seconds.")
        if not 1 <= p.steps <= limits.max_steps:
            raise InputError(f"Steps must be between 1 and {limits.max_steps}.")
        check_prompt(job.prompt, self.settings.max_prompt_chars)
        check_direction(job.prompt, p, job.guides, limits, self.settings.max_prompt_chars)

    async def _check_quota(self, job: NewJob, limits: Limits) -> None:
        (waiting,) = await self._one(
            "SELECT COUNT(*) FROM jobs WHERE platform=? AND user_id=? AND state IN ('queued', 'running')",
            (job.platform, job.user_id),
        )
        if waiting >= limits.max_queued_per_user:
            raise QueueFull(
                f"You already have {waiting} video(s) waiting; the limit is {limits.max_queued_per_user}. "
                "Wait for one to finish or cancel one."
            )

    async def check_request(self, job: NewJob) -> None:
        """Everything enqueue checks except the picture: lets a frontend refuse before it downloads anything."""
        limits = await self.get_limits()
        self._check_request(job, limits)
        if job.extends is not None and job.extends.job_id is not None:
            await self._check_source(job)
        await self._check_quota(job, limits)

    async def enqueue(self, job: NewJob, pictures: bytes | JobPictures) -> Enqueued:
        """Store the request and its pictures in one transaction; returns the job id and its position.

        `pictures` is the start picture's bytes, or a JobPictures with the end picture and keyframes that
        `job.guides` names. Raises InputError for a request over the limits or a picture that does not
        decode, and QueueFull over the person's quota; nothing is stored then.
        """
        if job.extends is not None:
            raise ValueError("an extension job is queued with enqueue_extension")
        if isinstance(pictures, bytes):
            pictures = JobPictures(pictures)
        limits = await self.get_limits()
        self._check_request(job, limits)
        _check_pictures_match(job.guides, pictures)
        # The frontends check the pictures first; checking again here means nothing unreadable is ever stored.
        await asyncio.to_thread(_check_pictures, job.guides, pictures, limits)
        async with self._write() as db:
            await self._check_quota(job, limits)
            job_id = await self._insert(db, job)
            # Inside the transaction: if a file cannot be written, no row is committed.
            try:
                self.files.write_pictures(job_id, pictures)
            except OSError as error:
                log.error("job %d: could not store the pictures: %s", job_id, error)
                raise Unavailable(_storage_trouble(error)) from None
        return await self._queued(job, job_id)

    async def enqueue_extension(self, job: NewJob, video: bytes | None = None) -> Enqueued:
        """Store an extension request (`job.extends` names its source) and, for a video a person sent, its
        bytes; returns the job id and its position. The source job must be finished, this person's or shown in
        this chat, and still stored; the video passes storage/uploaded_videos.py's checks. Raises InputError,
        QueueFull or Unavailable as enqueue does; nothing is stored then."""
        if job.extends is None or (video is not None) != job.extends.from_video:
            raise ValueError("an uploaded video goes with an extension of a video, and only there")
        limits = await self.get_limits()
        self._check_request(job, limits)
        if job.extends.job_id is not None:
            await self._check_source(job)
        if video is not None:
            await asyncio.to_thread(check_video_bytes, video, VideoLimits.from_settings(self.settings),
                                    self.files.root.parent / "tmp")
        async with self._write() as db:
            await self._check_quota(job, limits)
            if job.extends.job_id is not None:  # the retention cleanup may have run since the check above
                await self._check_source(job)
            job_id = await self._insert(db, job)
            try:
                if video is not None:
                    write_durably(self.files.source_video_path(job_id), video)
            except OSError as error:
                log.error("job %d: could not store the video: %s", job_id, error)
                raise Unavailable(_storage_trouble(error)) from None
        return await self._queued(job, job_id)

    async def _check_source(self, job: NewJob) -> None:
        source = await self.get(job.extends.job_id)
        check_extension_source(job, source, self.files, self.settings.result_retention_days, time.time())

    async def _insert(self, db, job: NewJob) -> int:
        guides = json.dumps(asdict(job.guides)) if job.guides.any else None
        extends = job.extends or Extends()
        cursor = await db.execute(
            "INSERT INTO jobs (platform, chat_id, reply_to, user_id, user_name, prompt, params, state, "
            "created_at, guild_id, guides, extends_job, extends_video) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
            (job.platform, job.chat_id, job.reply_to, job.user_id, job.user_name, job.prompt,
             json.dumps(asdict(job.params)), time.time(), job.guild_id, guides, extends.job_id, extends.video_name),
        )
        return cursor.lastrowid

    async def _queued(self, job: NewJob, job_id: int) -> Enqueued:
        position, eta = await self.position(job_id)
        log.info("job %d queued for %s:%s at position %d%s", job_id, job.platform, job.user_id, position,
                 f" (extends {job.extends})" if job.extends else "")
        return Enqueued(job_id, position, eta)

    # ----- reading --------------------------------------------------------------------------------

    async def get(self, job_id: int) -> Job | None:
        if not 1 <= job_id <= MAX_JOB_ID:  # not a job id at all (and too large for SQLite's integers)
            return None
        row = await self._one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,))
        return _job_from_row(row) if row else None

    async def queue_length(self) -> int:
        (count,) = await self._one("SELECT COUNT(*) FROM jobs WHERE state='queued'")
        return count

    async def user_jobs(self, platform: str, user_id: str, include_finished: bool = False) -> list[Job]:
        states = "" if include_finished else "AND state IN ('queued', 'running')"
        rows = await self._all(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE platform=? AND user_id=? {states} ORDER BY id",
            (platform, user_id),
        )
        return [_job_from_row(r) for r in rows]

    async def active_jobs(self, platform: str) -> list[Job]:
        rows = await self._all(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE platform=? AND state IN ('queued', 'running') ORDER BY id",
            (platform,),
        )
        return [_job_from_row(r) for r in rows]

    async def undelivered(self, platform: str) -> list[Job]:
        """Finished jobs (done, failed, cancelled) whose result the frontend has not yet posted and may try
        now: one whose last try failed for a passing reason waits out its pause first."""
        rows = await self._all(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE platform=? AND delivered=0 "
            "AND state IN ('done', 'failed', 'cancelled') AND (next_delivery_at IS NULL OR next_delivery_at <= ?) "
            "AND (delivery_claim_expires_at IS NULL OR delivery_claim_expires_at < ?) ORDER BY id",
            (platform, time.time(), time.time()),
        )
        return [_job_from_row(r) for r in rows]

    async def claim_delivery(self, job_id: int, process: str, seconds: float) -> bool:
        """Take the job's delivery for `seconds` (again: keep it) before posting; False when it was delivered
        meanwhile or another frontend process holds it. Several processes of one bot post each video once."""
        now = time.time()
        async with self._write() as db:
            cursor = await db.execute(
                "UPDATE jobs SET delivery_claimed_by=?, delivery_claim_expires_at=? WHERE id=? AND delivered=0 "
                "AND state IN ('done', 'failed', 'cancelled') AND (delivery_claimed_by IS NULL "
                "OR delivery_claimed_by=? OR delivery_claim_expires_at < ?)",
                (process, now + seconds, job_id, process, now),
            )
        return cursor.rowcount == 1

    async def mark_delivered(self, job_id: int) -> None:
        async with self._write() as db:
            await db.execute("UPDATE jobs SET delivered=1, delivery_claimed_by=NULL, delivery_claim_expires_at=NULL "
                             "WHERE id=?", (job_id,))

    async def delivery_failed(self, job_id: int, reason: str, permanent: bool) -> float | None:
        """Record a failed delivery. Permanent (the person blocked the bot, the file is gone): never tried
        again, the reason kept. Otherwise tried again after a pause that doubles each time; returns it."""
        async with self._write() as db:
            if permanent:
                await db.execute("UPDATE jobs SET delivered=1, delivery_error=?, delivery_claimed_by=NULL, "
                                 "delivery_claim_expires_at=NULL WHERE id=?", (reason[:500], job_id))
                return None
            (attempts,) = await self._one("SELECT delivery_attempts FROM jobs WHERE id=?", (job_id,))
            pause = min(DELIVERY_RETRY_FIRST * 2**attempts, DELIVERY_RETRY_MAX)
            await db.execute(  # the claim goes: the next try may come from any frontend process
                "UPDATE jobs SET delivery_attempts=delivery_attempts+1, next_delivery_at=?, delivery_claimed_by=NULL, "
                "delivery_claim_expires_at=NULL WHERE id=?",
                (time.time() + pause, job_id),
            )
            return pause

    # ----- retention -----------------------------------------------------------------------------

    async def expired_jobs(self, finished_before: float) -> list[int]:
        """Ids of the jobs whose folders may go: finished (done, failed, cancelled) before `finished_before`,
        their delivery over (delivered, or given up), and their folder not yet removed. A queued or running job,
        or a finished one still to be delivered, is never among them; nor is the source of an extension that is
        queued or running (it reads the source's kept latents when it starts, or again when it resumes)."""
        rows = await self._all(
            "SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND delivered=1 "
            "AND finished_at IS NOT NULL AND finished_at < ? AND files_removed_at IS NULL "
            "AND id NOT IN (SELECT extends_job FROM jobs WHERE extends_job IS NOT NULL "
            "AND state IN ('queued', 'running')) ORDER BY id",
            (finished_before,),
        )
        return [job_id for (job_id,) in rows]

    async def mark_files_removed(self, job_ids: list[int]) -> None:
        """Record that these finished jobs' folders are gone; their rows stay (history, /info)."""
        if not job_ids:
            return
        async with self._write() as db:
            await db.executemany(
                "UPDATE jobs SET files_removed_at=? WHERE id=? AND state IN ('done', 'failed', 'cancelled')",
                [(time.time(), job_id) for job_id in job_ids],
            )

    async def set_status_message(self, job_id: int, message_id: str | None) -> None:
        async with self._write() as db:
            await db.execute("UPDATE jobs SET status_message=? WHERE id=?", (message_id, job_id))

    # ----- order, position, ETA -------------------------------------------------------------------

    def _order_sql(self) -> str:
        """Queued jobs in the order workers take them. Fair: a person's n-th waiting job (counting
        their running ones) goes after everyone's (n-1)-th, so ten jobs from one person do not block
        one from another."""
        if not self.settings.fair_queue:
            return "SELECT id, params, extends_job, extends_video FROM jobs WHERE state='queued' ORDER BY id"
        return (
            "SELECT q.id, q.params, q.extends_job, q.extends_video FROM ("
            " SELECT id, params, platform, user_id, extends_job, extends_video,"
            "  ROW_NUMBER() OVER (PARTITION BY platform, user_id ORDER BY id) AS turn FROM jobs"
            " WHERE state='queued') AS q "
            "LEFT JOIN (SELECT platform, user_id, COUNT(*) AS busy FROM jobs WHERE state='running'"
            " GROUP BY platform, user_id) AS r ON r.platform=q.platform AND r.user_id=q.user_id "
            "ORDER BY q.turn + COALESCE(r.busy, 0), q.id"
        )

    async def speed(self) -> tuple[Speed, int]:
        """The measured speed (mean over live workers) and how many workers are alive."""
        live_since = time.time() - 2 * self.settings.lease_seconds
        rows = await self._all(
            "SELECT seconds_per_step, section_overhead, teacache_factor FROM workers WHERE seen_at >= ?",
            (live_since,),
        )
        measured = [(s, o) for s, o, _ in rows if s is not None]
        if measured:
            sps = sum(s for s, _ in measured) / len(measured)
            overhead = sum(o for _, o in measured) / len(measured)
        else:
            sps, overhead = self.settings.default_seconds_per_step, self.settings.default_section_overhead
        factors = [f for _, _, f in rows if f is not None]
        factor = sum(factors) / len(factors) if factors else self.settings.default_teacache_factor
        return Speed(sps, overhead, factor), max(len(rows), 1)

    async def positions(self) -> dict[int, tuple[int, float]]:
        """(position, seconds until done) of every queued and running job, from one pass over the
        queue: position 0 means it is rendering now."""
        speed, workers = await self.speed()
        result, running_left = {}, []
        for row in await self._all(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state='running'"):
            r = _job_from_row(row)
            left_steps = max(r.params.total_steps - r.progress.steps_done, 0)
            left_sections = max(r.params.sections - max(r.progress.section - 1, 0), 0)
            # Only the job's own threshold counts: a worker's ENGINE_TEACACHE is already in its plain figure.
            step = speed.step_seconds(r.params.teacache > 0, r.params.cfg > 1)
            preparing = preparation_seconds(speed, r.extends) if r.progress.section == 0 else 0.0
            running_left.append(left_steps * step + left_sections * speed.section_overhead + preparing)
            result[r.id] = (0, running_left[-1])
        queued_ids, durations = [], []
        for job_id, params, extends_job, extends_video in await self._all(self._order_sql()):
            p = json.loads(params)
            queued_ids.append(job_id)
            sections = JobParams(seconds=p["seconds"]).sections
            # Rows from before the fast option have no "teacache": plain.
            durations.append(speed.job_seconds(sections, p["steps"], p.get("teacache", 0) > 0, p.get("cfg", 1) > 1)
                             + preparation_seconds(speed, _extends(extends_job, extends_video)))
        for position, (job_id, finish) in enumerate(
            zip(queued_ids, finish_times(running_left, durations, workers), strict=True), start=1
        ):
            result[job_id] = (position, finish)
        return result

    async def position(self, job_id: int) -> tuple[int, float]:
        """(position, seconds until done) of one job; (0, 0) once it has finished."""
        job = await self.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return (await self.positions()).get(job_id, (0, 0.0))

    # ----- worker side ----------------------------------------------------------------------------

    async def heartbeat(self, worker: str, problem: str | None = None, starting: bool = False) -> None:
        """The worker is alive; `problem` says why it cannot render now (None: it can); `starting`: it is
        getting ready (loading and compiling) and claims nothing yet."""
        now = time.time()
        async with self._write() as db:
            await db.execute(
                "INSERT INTO workers (name, seen_at, problem, problem_since, starting) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET seen_at=excluded.seen_at, problem=excluded.problem, "
                "starting=excluded.starting, "
                "problem_since=CASE WHEN excluded.problem IS NULL THEN NULL "
                "WHEN workers.problem IS excluded.problem THEN workers.problem_since ELSE excluded.seen_at END",
                (worker, now, problem, now if problem else None, int(starting)),
            )

    async def _live_workers(self) -> list[tuple[str, str | None, float | None, int]]:
        """(name, problem, since, starting) of every worker seen within two leases."""
        live_since = time.time() - 2 * self.settings.lease_seconds
        return await self._all("SELECT name, problem, problem_since, starting FROM workers WHERE seen_at >= ? "
                               "ORDER BY name", (live_since,))

    async def worker_status(self) -> WorkerStatus:
        """Live workers, how many of them can render, how many are starting up, and the others' reasons."""
        rows = await self._live_workers()
        problems = tuple(dict.fromkeys(problem for _, problem, _, _ in rows if problem))
        ready = sum(1 for _, problem, _, starting in rows if not problem and not starting)
        starting = sum(1 for _, problem, _, starting in rows if not problem and starting)
        return WorkerStatus(alive=len(rows), ready=ready, problems=problems, starting=starting)

    async def describe_worker(self, worker: str, host: str, gpu: str | None, plan: str | None) -> None:
        """Where the worker runs and its memory plan, for /admin workers."""
        async with self._write() as db:
            await db.execute(
                "INSERT INTO workers (name, seen_at, host, gpu, plan) VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO "
                "UPDATE SET seen_at=excluded.seen_at, host=excluded.host, gpu=excluded.gpu, plan=excluded.plan",
                (worker, time.time(), host, gpu, plan),
            )

    async def workers(self) -> list[WorkerInfo]:
        """Every live worker (seen within two leases): host, GPU, plan, seconds per step, current job."""
        since = time.time() - 2 * self.settings.lease_seconds
        return [worker_info(row) for row in await self._all(WORKERS_SQL.format(since="?"), (since,))]

    async def worker_problems(self) -> list[tuple[str, str, float]]:
        """(worker, problem, since) of every live worker that cannot render now."""
        return [row[:3] for row in await self._live_workers() if row[1]]

    async def claim_notice(self, key: str) -> bool:
        """True the first time `key` is claimed, ever: what admins are told once, across restarts too."""
        async with self._write() as db:
            cursor = await db.execute("INSERT OR IGNORE INTO notices (key, sent_at) VALUES (?, ?)", (key, time.time()))
        return cursor.rowcount == 1

    async def record_speed(
        self, worker: str, seconds_per_step: float, section_overhead: float, teacache: bool = False
    ) -> None:
        """Blend a new measurement into the worker's figures (recent jobs weigh more). A TeaCache job
        only moves the worker's TeaCache factor, its step time over the plain one, so the plain
        figure stays what a plain job takes."""
        async with self._write() as db:
            row = await self._one(
                "SELECT seconds_per_step, section_overhead, teacache_factor FROM workers WHERE name=?", (worker,)
            )
            if teacache:
                if row and row[0]:  # nothing to divide by before the first plain job
                    factor = seconds_per_step / row[0]
                    if row[2] is not None:
                        factor = 0.7 * factor + 0.3 * row[2]
                    await db.execute("UPDATE workers SET teacache_factor=?, seen_at=? WHERE name=?",
                                     (factor, time.time(), worker))
                return
            if row and row[0] is not None:
                seconds_per_step = 0.7 * seconds_per_step + 0.3 * row[0]
                section_overhead = 0.7 * section_overhead + 0.3 * row[1]
            await db.execute(
                "INSERT INTO workers (name, seconds_per_step, section_overhead, samples, seen_at) "
                "VALUES (?, ?, ?, 1, ?) ON CONFLICT(name) DO UPDATE SET seconds_per_step=excluded.seconds_per_step,"
                " section_overhead=excluded.section_overhead, samples=samples+1, seen_at=excluded.seen_at",
                (worker, seconds_per_step, section_overhead, time.time()),
            )

    async def claim(self, worker: str, lease_seconds: float | None = None) -> Job | None:
        """Take the next job under a lease: first any job whose worker died (its lease ran out), then
        the queue in order. A job that has already been taken MAX_ATTEMPTS times is failed instead."""
        lease = lease_seconds or self.settings.lease_seconds
        now = time.time()
        async with self._write() as db:
            while True:
                row = await self._one(
                    "SELECT id, attempts FROM jobs WHERE state='running' AND lease_expires_at < ? ORDER BY id LIMIT 1",
                    (now,),
                )
                if row is None:
                    row = await self._one(self._order_sql() + " LIMIT 1")
                    if row is None:
                        return None
                    row = await self._one("SELECT id, attempts FROM jobs WHERE id=?", (row[0],))
                job_id, attempts = row
                if attempts >= MAX_ATTEMPTS:
                    await db.execute(
                        "UPDATE jobs SET state='failed', finished_at=?, worker=NULL, lease_expires_at=NULL, "
                        "error=? WHERE id=?",
                        (now, f"The render stopped its worker {attempts} times, so it was given up.", job_id),
                    )
                    log.warning("job %d failed after %d attempts", job_id, attempts)
                    continue
                await db.execute(
                    "UPDATE jobs SET state='running', worker=?, lease_expires_at=?, attempts=attempts+1, "
                    "lease=lease+1, started_at=COALESCE(started_at, ?) WHERE id=?",
                    (worker, now + lease, now, job_id),
                )
                break
        log.info("job %d claimed by %s (attempt %d)", job_id, worker, attempts + 1)
        return await self.get(job_id)

    async def renew(self, job_id: int, worker: str, lease_seconds: float | None = None,
                    lease: int | None = None) -> bool:
        """Extend the lease; False when this worker's claim (`lease`: its number) no longer holds the job (it
        must stop)."""
        seconds = lease_seconds or self.settings.lease_seconds
        async with self._write() as db:
            cursor = await db.execute(
                f"UPDATE jobs SET lease_expires_at=? WHERE {_HELD}",
                (time.time() + seconds, job_id, worker, lease, lease),
            )
            await db.execute("UPDATE workers SET seen_at=? WHERE name=?", (time.time(), worker))
        return cursor.rowcount == 1

    async def report_progress(self, job_id: int, worker: str, progress: Progress, lease: int | None = None) -> bool:
        """Record the progress; False (nothing written) when this claim no longer holds the job."""
        async with self._write() as db:
            cursor = await db.execute(
                f"UPDATE jobs SET progress=? WHERE {_HELD}",
                (json.dumps(asdict(progress)), job_id, worker, lease, lease),
            )
        return cursor.rowcount == 1

    async def _finish(self, job_id: int, worker: str, lease: int | None, state: JobState, **columns) -> bool:
        sets = ", ".join(f"{k}=?" for k in columns)
        extra = f", {sets}" if sets else ""
        async with self._write() as db:
            cursor = await db.execute(
                f"UPDATE jobs SET state=?, finished_at=?, lease_expires_at=NULL{extra} WHERE {_HELD}",
                (state.value, time.time(), *columns.values(), job_id, worker, lease, lease),
            )
        return cursor.rowcount == 1

    async def complete(self, job_id: int, worker: str, video: str, fitted: dict[int, str],
                       lease: int | None = None) -> bool:
        """Mark the job done; False if this worker no longer holds it, or if a cancel came in after its
        last step: the person was told it would stop, so it ends cancelled and no video is sent."""
        result = json.dumps({"video": video, "fitted": {str(k): v for k, v in fitted.items()}})
        async with self._write() as db:
            cursor = await db.execute(
                "UPDATE jobs SET state=CASE WHEN cancel_requested THEN 'cancelled' ELSE 'done' END, finished_at=?, "
                f"lease_expires_at=NULL, result=CASE WHEN cancel_requested THEN NULL ELSE ? END WHERE {_HELD}",
                (time.time(), result, job_id, worker, lease, lease),
            )
            if cursor.rowcount != 1:
                return False
            (state,) = await self._one("SELECT state FROM jobs WHERE id=?", (job_id,))
        if state == JobState.CANCELLED.value:
            log.info("job %d finished rendering after it was cancelled: cancelled, not delivered", job_id)
            return False
        log.info("job %d done by %s", job_id, worker)
        return True

    async def fail(self, job_id: int, worker: str, error: str, lease: int | None = None) -> bool:
        log.warning("job %d failed on %s: %s", job_id, worker, error)
        return await self._finish(job_id, worker, lease, JobState.FAILED, error=error[:2000])

    async def mark_cancelled(self, job_id: int, worker: str, lease: int | None = None) -> bool:
        return await self._finish(job_id, worker, lease, JobState.CANCELLED)

    async def release(self, job_id: int, worker: str, lease: int | None = None) -> bool:
        """Give a job back to the queue on a clean shutdown; it resumes from its checkpoint and the
        attempt does not count against it."""
        async with self._write() as db:
            cursor = await db.execute(
                "UPDATE jobs SET state='queued', worker=NULL, lease_expires_at=NULL, attempts=MAX(attempts-1, 0) "
                f"WHERE {_HELD}",
                (job_id, worker, lease, lease),
            )
        return cursor.rowcount == 1

    async def is_cancel_requested(self, job_id: int) -> bool:
        row = await self._one("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,))
        return bool(row and row[0])

    # ----- cancel ---------------------------------------------------------------------------------

    async def cancel(self, job_id: int, platform: str, user_id: str, is_admin: bool = False,
                     moderated_guild: str | None = None) -> str:
        """Cancel for a person: 'cancelled' (was waiting), 'stopping' (its worker stops within a step),
        'finished' (too late), 'not_found', or 'not_allowed'. The owner and the bot's admins (`is_admin`)
        may cancel; a server's moderator (`moderated_guild`) only the jobs that came from that server."""
        if not 1 <= job_id <= MAX_JOB_ID:
            return "not_found"
        async with self._write() as db:
            row = await self._one("SELECT platform, user_id, state, guild_id FROM jobs WHERE id=?", (job_id,))
            if row is None or row[0] != platform:
                return "not_found"
            moderates = moderated_guild is not None and row[3] == moderated_guild
            if row[1] != user_id and not is_admin and not moderates:
                return "not_allowed"
            state = JobState(row[2])
            if state.finished:
                return "finished"
            if state is JobState.QUEUED:
                await db.execute(
                    "UPDATE jobs SET state='cancelled', cancel_requested=1, finished_at=? WHERE id=?",
                    (time.time(), job_id),
                )
                log.info("job %d cancelled while queued", job_id)
                return "cancelled"
            await db.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))
            log.info("job %d: cancel requested while running", job_id)
            return "stopping"


def _check_pictures_match(guides: GuidePictures, pictures: JobPictures) -> None:
    """The request names the pictures it carries: a frontend bug otherwise, never a person's."""
    if (pictures.end is not None) != guides.end or len(pictures.keyframes) != len(guides.keyframes):
        raise ValueError("the job's guides do not match the pictures given")


def _check_pictures(guides: GuidePictures, pictures: JobPictures, limits: Limits) -> None:
    """Every picture through the start picture's checks; a bad one's message says which picture it is."""
    named = [("", pictures.start)]
    if pictures.end is not None:
        named.append(("The end picture: ", pictures.end))
    named += [(f"The keyframe at {at:g}s: ", data) for at, data in zip(guides.keyframes, pictures.keyframes,
                                                                          strict=True)]
    for name, data in named:
        try:
            load_image(data, limits.max_image_pixels, limits.max_image_bytes)
        except InputError as error:
            raise InputError(f"{name}{error}") from None


def _not_writable(path: Path, error: Exception) -> str:
    return (f"The database {path} cannot be written ({error}). Check the permissions of the file and of its "
            "folder, and the free disk space.")


def _storage_trouble(error: OSError) -> str:
    """What a person reads when the bot could not store their job: no path, no error text."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "The bot's server is out of disk space right now, so it cannot take new videos. Try again later."
    return "The bot could not store your picture just now (a problem on its server). Try again in a while."
