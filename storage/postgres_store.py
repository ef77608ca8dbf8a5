"""The job queue on PostgreSQL: the backend for workers and frontends on several machines.

It behaves as storage/sqlite_store.py does (tests/test_storage.py runs the same contract against both); what
differs is how races are settled. SQLite takes its one write lock up front. Here:

- a claim locks the row it takes with FOR UPDATE SKIP LOCKED: workers claiming at once take different jobs
  and never wait for one another;
- a claim's writes carry its fencing token, the job's lease number (storage/postgres_claims.py): once another
  claim took the job over, the old claim's writes are refused, even from a worker of the same name;
- a person's enqueue takes an advisory lock on that person, so two at once cannot both pass the quota;
- times are the database server's clock, so leases hold between machines whose clocks differ;
- changes send NOTIFY (storage/postgres_notify.py): `wait_for_work` and `wait_for_changes` return at once.

Why not procrastinate or PgQueuer: both are task runners with their own worker loop and job table. Neither orders
the queue round-robin by person, fences a lease with a token, or keeps progress and delivery on the job, and
PgQueuer deletes a finished job's row, which delivery, /info and retention read. Adopting one would mean bending
the engine's worker loop around it and keeping a second table for everything else; the SQL here is a few
statements per operation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from storage.extension_rules import check_extension_source
from storage.files import JobFiles, write_durably
from storage.jobs import (
    MAX_JOB_ID,
    Enqueued,
    Extends,
    Job,
    JobPictures,
    JobState,
    NewJob,
    QueueFull,
    Unavailable,
)
from storage.limits import LIMIT_NAMES, Limits, parse_limit
from storage.postgres_claims import WorkerSide
from storage.postgres_connect import connect, open_pool, unreachable
from storage.postgres_notify import JOBS_CHANNEL, WORK_CHANNEL, Listener
from storage.postgres_queries import ACTIVE, FINISHED, NOW
from storage.postgres_schema import migrate
from storage.queue_estimates import positions as estimate_positions
from storage.settings import Settings

# One copy of these for both backends: a field or a check added to a job there reaches this store too.
from storage.sqlite_store import (
    _JOB_COLUMNS,
    DELIVERY_RETRY_FIRST,
    DELIVERY_RETRY_MAX,
    SqliteJobStore,
    StorageNotWritable,
    _check_pictures,
    _check_pictures_match,
    _extends,
    _job_from_row,
    _storage_trouble,
)
from storage.uploaded_videos import VideoLimits, check_video_bytes

log = logging.getLogger(__name__)


class PostgresJobStore(WorkerSide):
    """Open with `await PostgresJobStore.open(settings)`; close with `await store.close()`. The workers' half
    (claims, leases, heartbeats) is WorkerSide in storage/postgres_claims.py."""

    def __init__(self, pool, settings: Settings, files: JobFiles, url: str):
        super().__init__(pool, settings)
        self.files = files
        self.listener = Listener(url)

    @classmethod
    async def open(cls, settings: Settings, url: str | None = None) -> PostgresJobStore:
        url = url or settings.database_url
        data_dir = Path(settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        async with await connect(url) as conn:  # a clear error first, when the server is out of reach
            try:
                await migrate(conn)
            except _psycopg_error() as error:  # no rights on the schema, say
                raise unreachable(url, error) from None
        pool = await open_pool(url)
        store = cls(pool, settings, JobFiles(data_dir), url)
        try:
            _check_data_folder(data_dir)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        await self.listener.close()
        await self.pool.close()

    # ----- notifications --------------------------------------------------------------------------

    async def listen(self, timeout: float = 10.0) -> bool:
        """Start listening for notifications now rather than at the first wait; True once listening."""
        return await self.listener.start(timeout)

    async def wait_for_work(self, timeout: float) -> bool:
        """Return as soon as a job may be claimable (True), or after `timeout` seconds (False); claim after
        either: a lease that ran out sends no notification."""
        return await self.listener.wait_for_work(timeout)

    async def wait_for_changes(self, timeout: float) -> bool:
        """Return as soon as any job changes (True), or after `timeout` seconds (False)."""
        return await self.listener.wait_for_changes(timeout)

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
        async with self._write() as conn:
            await conn.execute(
                f"INSERT INTO limits (name, value, changed_by, changed_at) VALUES (%s, %s, %s, {NOW}) "
                "ON CONFLICT (name) DO UPDATE SET value=excluded.value, changed_by=excluded.changed_by, "
                "changed_at=excluded.changed_at",
                (name, json.dumps(value), changed_by),
            )
        log.info("limit %s set to %r by %s", name, value, changed_by)
        return await self.get_limits()

    async def limit_changes(self) -> dict[str, tuple[str | None, float]]:
        """Who last changed each limit, and when."""
        rows = await self._all("SELECT name, changed_by, changed_at FROM limits")
        return {name: (by, at) for name, by, at in rows}

    # ----- enqueue --------------------------------------------------------------------------------

    def _check_request(self, job: NewJob, limits: Limits) -> None:
        # The SQLite store's checks use nothing but the settings: one set of rules for both backends.
        SqliteJobStore._check_request(self, job, limits)

    async def _check_quota(self, conn, job: NewJob, limits: Limits) -> None:
        row = await (await conn.execute(
            f"SELECT COUNT(*) FROM jobs WHERE platform=%s AND user_id=%s AND state IN {ACTIVE}",
            (job.platform, job.user_id),
        )).fetchone()
        if row[0] >= limits.max_queued_per_user:
            raise QueueFull(
                f"You already have {row[0]} video(s) waiting; the limit is {limits.max_queued_per_user}. "
                "Wait for one to finish or cancel one."
            )

    async def check_request(self, job: NewJob) -> None:
        """Everything enqueue checks except the picture: lets a frontend refuse before it downloads anything."""
        limits = await self.get_limits()
        self._check_request(job, limits)
        if job.extends is not None and job.extends.job_id is not None:
            await self._check_source(job)
        async with self.pool.connection() as conn:
            await self._check_quota(conn, job, limits)

    async def enqueue(self, job: NewJob, pictures: bytes | JobPictures) -> Enqueued:
        """Store the request and its pictures in one transaction; returns the job id and its position.

        Raises InputError for a request over the limits or a picture that does not decode, and QueueFull over
        the person's quota; nothing is stored then."""
        if job.extends is not None:
            raise ValueError("an extension job is queued with enqueue_extension")
        if isinstance(pictures, bytes):
            pictures = JobPictures(pictures)
        limits = await self.get_limits()
        self._check_request(job, limits)
        _check_pictures_match(job.guides, pictures)
        await asyncio.to_thread(_check_pictures, job.guides, pictures, limits)
        async with self._write() as conn:
            await self._lock_person(conn, job)
            await self._check_quota(conn, job, limits)
            job_id = await self._insert(conn, job)
            # Inside the transaction: if a file cannot be written, no row is committed.
            try:
                await asyncio.to_thread(self.files.write_pictures, job_id, pictures)
            except OSError as error:
                log.error("job %d: could not store the pictures: %s", job_id, error)
                raise Unavailable(_storage_trouble(error)) from None
        return await self._queued(job, job_id)

    async def enqueue_extension(self, job: NewJob, video: bytes | None = None) -> Enqueued:
        """Store an extension request (`job.extends` names its source) and, for a video a person sent, its
        bytes; returns the job id and its position. Checked as SqliteJobStore.enqueue_extension checks it."""
        if job.extends is None or (video is not None) != job.extends.from_video:
            raise ValueError("an uploaded video goes with an extension of a video, and only there")
        limits = await self.get_limits()
        self._check_request(job, limits)
        if job.extends.job_id is not None:
            await self._check_source(job)
        if video is not None:
            await asyncio.to_thread(check_video_bytes, video, VideoLimits.from_settings(self.settings),
                                    self.files.root.parent / "tmp")
        async with self._write() as conn:
            await self._lock_person(conn, job)
            await self._check_quota(conn, job, limits)
            if job.extends.job_id is not None:  # the retention cleanup may have run since the check above
                await self._check_source(job)
            job_id = await self._insert(conn, job)
            try:
                if video is not None:
                    await asyncio.to_thread(write_durably, self.files.source_video_path(job_id), video)
            except OSError as error:
                log.error("job %d: could not store the video: %s", job_id, error)
                raise Unavailable(_storage_trouble(error)) from None
        return await self._queued(job, job_id)

    async def _check_source(self, job: NewJob) -> None:
        source = await self.get(job.extends.job_id)
        check_extension_source(job, source, self.files, self.settings.result_retention_days, time.time())

    @staticmethod
    async def _lock_person(conn, job: NewJob) -> None:
        """One person's enqueues one at a time, until the transaction ends: two at once cannot both pass the
        quota."""
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                           (f"quota:{job.platform}:{job.user_id}",))

    async def _insert(self, conn, job: NewJob) -> int:
        guides = json.dumps(asdict(job.guides)) if job.guides.any else None
        extends = job.extends or Extends()
        cursor = await conn.execute(
            "INSERT INTO jobs (platform, chat_id, reply_to, user_id, user_name, prompt, params, state, "
            "created_at, guild_id, guides, extends_job, extends_video) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s, 'queued', {NOW}, %s, %s, %s, %s) RETURNING id",
            (job.platform, job.chat_id, job.reply_to, job.user_id, job.user_name, job.prompt,
             json.dumps(asdict(job.params)), job.guild_id, guides, extends.job_id, extends.video_name),
        )
        (job_id,) = await cursor.fetchone()
        await self._notify(conn, WORK_CHANNEL)  # sent when the transaction commits, not before
        return job_id

    async def _queued(self, job: NewJob, job_id: int) -> Enqueued:
        position, eta = await self.position(job_id)
        log.info("job %d queued for %s:%s at position %d%s", job_id, job.platform, job.user_id, position,
                 f" (extends {job.extends})" if job.extends else "")
        return Enqueued(job_id, position, eta)

    # ----- reading --------------------------------------------------------------------------------

    async def queue_length(self) -> int:
        (count,) = await self._one("SELECT COUNT(*) FROM jobs WHERE state='queued'")
        return count

    async def user_jobs(self, platform: str, user_id: str, include_finished: bool = False) -> list[Job]:
        states = "" if include_finished else f"AND state IN {ACTIVE}"
        rows = await self._all(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE platform=%s AND user_id=%s {states} ORDER BY id",
            (platform, user_id),
        )
        return [_job_from_row(r) for r in rows]

    async def active_jobs(self, platform: str) -> list[Job]:
        rows = await self._all(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE platform=%s AND state IN {ACTIVE} ORDER BY id", (platform,)
        )
        return [_job_from_row(r) for r in rows]

    async def is_cancel_requested(self, job_id: int) -> bool:
        row = await self._one("SELECT cancel_requested FROM jobs WHERE id=%s", (job_id,))
        return bool(row and row[0])

    # ----- delivery -------------------------------------------------------------------------------

    async def undelivered(self, platform: str) -> list[Job]:
        """Finished jobs whose result the frontend has not yet posted and may try now: one whose last try
        failed for a passing reason waits out its pause first."""
        rows = await self._all(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE platform=%s AND NOT delivered AND state IN {FINISHED} "
            f"AND (next_delivery_at IS NULL OR next_delivery_at <= {NOW}) "
            f"AND (delivery_claim_expires_at IS NULL OR delivery_claim_expires_at < {NOW}) ORDER BY id",
            (platform,),
        )
        return [_job_from_row(r) for r in rows]

    async def claim_delivery(self, job_id: int, process: str, seconds: float) -> bool:
        """Take the job's delivery for `seconds` (again: keep it) before posting; False when it was delivered
        meanwhile or another frontend process holds it. The UPDATE's row lock settles two claims at once."""
        async with self._write() as conn:
            cursor = await conn.execute(
                f"UPDATE jobs SET delivery_claimed_by=%s, delivery_claim_expires_at={NOW} + %s WHERE id=%s "
                f"AND NOT delivered AND state IN {FINISHED} AND (delivery_claimed_by IS NULL "
                f"OR delivery_claimed_by=%s OR delivery_claim_expires_at < {NOW})",
                (process, seconds, job_id, process),
            )
            return cursor.rowcount == 1

    async def mark_delivered(self, job_id: int) -> None:
        async with self._write() as conn:
            await conn.execute("UPDATE jobs SET delivered=TRUE, delivery_claimed_by=NULL, "
                               "delivery_claim_expires_at=NULL WHERE id=%s", (job_id,))

    async def delivery_failed(self, job_id: int, reason: str, permanent: bool) -> float | None:
        """Record a failed delivery. Permanent: never tried again, the reason kept. Otherwise tried again after
        a pause that doubles each time; returns it."""
        async with self._write() as conn:
            if permanent:
                await conn.execute("UPDATE jobs SET delivered=TRUE, delivery_error=%s, delivery_claimed_by=NULL, "
                                   "delivery_claim_expires_at=NULL WHERE id=%s", (reason[:500], job_id))
                return None
            (attempts,) = await (await conn.execute(
                "SELECT delivery_attempts FROM jobs WHERE id=%s FOR UPDATE", (job_id,))).fetchone()
            pause = min(DELIVERY_RETRY_FIRST * 2**attempts, DELIVERY_RETRY_MAX)
            await conn.execute(
                f"UPDATE jobs SET delivery_attempts=delivery_attempts+1, next_delivery_at={NOW} + %s, "
                "delivery_claimed_by=NULL, delivery_claim_expires_at=NULL WHERE id=%s",
                (pause, job_id),
            )
            return pause

    async def set_status_message(self, job_id: int, message_id: str | None) -> None:
        async with self._write() as conn:
            await conn.execute("UPDATE jobs SET status_message=%s WHERE id=%s", (message_id, job_id))

    # ----- retention ------------------------------------------------------------------------------

    async def expired_jobs(self, finished_before: float) -> list[int]:
        """Ids of finished, delivered (or given up) jobs finished before `finished_before` whose folder is
        still there; never the source of an extension that is queued or running (it reads the kept latents)."""
        rows = await self._all(
            f"SELECT id FROM jobs WHERE state IN {FINISHED} AND delivered AND finished_at IS NOT NULL "
            "AND finished_at < %s AND files_removed_at IS NULL "
            f"AND id NOT IN (SELECT extends_job FROM jobs WHERE extends_job IS NOT NULL AND state IN {ACTIVE}) "
            "ORDER BY id",
            (finished_before,),
        )
        return [job_id for (job_id,) in rows]

    async def mark_files_removed(self, job_ids: list[int]) -> None:
        """Record that these finished jobs' folders are gone; their rows stay (history, /info)."""
        if not job_ids:
            return
        async with self._write() as conn:
            await conn.execute(
                f"UPDATE jobs SET files_removed_at={NOW} WHERE id = ANY(%s) AND state IN {FINISHED}",
                (list(job_ids),),
            )

    # ----- order, position, ETA -------------------------------------------------------------------

    async def positions(self) -> dict[int, tuple[int, float]]:
        """(position, seconds until done) of every queued and running job: position 0 is rendering now."""
        speed, workers = await self.speed()
        running = await self._all(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state='running'")
        queued = await self._all(
            f"SELECT o.id, o.params, o.extends_job, o.extends_video FROM ({self._order_sql()}) AS o "
            "ORDER BY o.turn, o.id"
        )
        queued = [(job_id, params, _extends(job, video)) for job_id, params, job, video in queued]
        return estimate_positions([_job_from_row(r) for r in running], queued, speed, workers)

    async def position(self, job_id: int) -> tuple[int, float]:
        """(position, seconds until done) of one job; (0, 0) once it has finished."""
        if await self.get(job_id) is None:
            raise KeyError(job_id)
        return (await self.positions()).get(job_id, (0, 0.0))

    # ----- notices for the admins -----------------------------------------------------------------

    async def claim_notice(self, key: str) -> bool:
        """True the first time `key` is claimed, ever: what admins are told once, across restarts too."""
        async with self._write() as conn:
            cursor = await conn.execute(
                f"INSERT INTO notices (key, sent_at) VALUES (%s, {NOW}) ON CONFLICT (key) DO NOTHING", (key,)
            )
            return cursor.rowcount == 1

    # ----- cancel ---------------------------------------------------------------------------------

    async def cancel(self, job_id: int, platform: str, user_id: str, is_admin: bool = False,
                     moderated_guild: str | None = None) -> str:
        """Cancel for a person: 'cancelled' (was waiting), 'stopping' (its worker stops within a step),
        'finished' (too late), 'not_found', or 'not_allowed'. The owner and the bot's admins may cancel; a
        server's moderator only the jobs that came from that server."""
        if not 1 <= job_id <= MAX_JOB_ID:
            return "not_found"
        async with self._write() as conn:
            row = await (await conn.execute(
                "SELECT platform, user_id, state, guild_id FROM jobs WHERE id=%s FOR UPDATE", (job_id,))).fetchone()
            if row is None or row[0] != platform:
                return "not_found"
            moderates = moderated_guild is not None and row[3] == moderated_guild
            if row[1] != user_id and not is_admin and not moderates:
                return "not_allowed"
            state = JobState(row[2])
            if state.finished:
                return "finished"
            await self._notify(conn, JOBS_CHANNEL, job_id)
            if state is JobState.QUEUED:
                await conn.execute(
                    f"UPDATE jobs SET state='cancelled', cancel_requested=TRUE, finished_at={NOW} WHERE id=%s",
                    (job_id,),
                )
                log.info("job %d cancelled while queued", job_id)
                return "cancelled"
            await conn.execute("UPDATE jobs SET cancel_requested=TRUE WHERE id=%s", (job_id,))
            log.info("job %d: cancel requested while running", job_id)
            return "stopping"

def _psycopg_error() -> type[Exception]:
    import psycopg

    return psycopg.Error


def _check_data_folder(data_dir: Path) -> None:
    """Refuse to start on a data folder that cannot be written: every worker would crash-loop on it."""
    probe = data_dir / ".write-probe"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise StorageNotWritable(
            f"The data folder {data_dir} cannot be written ({error.strerror or error}). "
            "Check its permissions and free disk space, or point DATA_DIR elsewhere."
        ) from None
