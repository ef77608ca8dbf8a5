"""The job queue on PostgreSQL: the backend for workers and frontends on several machines.

It behaves as storage/sqlite_store.py does (tests/test_storage.py runs the same contract against both); what
differs is how races are settled. SQLite takes its one write lock up front. Here:

- a claim locks the row it takes with FOR UPDATE SKIP LOCKED: workers claiming at once take different jobs
  and never wait for one another;
- a person's enqueue takes an advisory lock on that person, so two at once cannot both pass the quota;
- every claim adds one to jobs.lease, the fencing token. The store keeps the token of each claim it made and
  every write a worker makes under it (renew, progress, complete, fail, release, cancelled) carries it, so once
  another claim took the job over, the old claim's writes are refused, even from a worker of the same name
  (a container restarted with its old hostname and pid);
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
import contextlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from storage.eta import Speed
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
    Progress,
    QueueFull,
    Unavailable,
    WorkerStatus,
)
from storage.limits import LIMIT_NAMES, Limits, parse_limit
from storage.postgres_connect import connect, open_pool, unreachable
from storage.postgres_notify import JOBS_CHANNEL, WORK_CHANNEL, Listener
from storage.postgres_schema import migrate
from storage.queue_estimates import positions as estimate_positions
from storage.settings import Settings

# One copy of these for both backends: a field or a check added to a job there reaches this store too.
from storage.sqlite_store import (
    _JOB_COLUMNS,
    DELIVERY_RETRY_FIRST,
    DELIVERY_RETRY_MAX,
    MAX_ATTEMPTS,
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

NOW = "extract(epoch from now())::float8"  # the server's clock, fixed for the length of a transaction
FINISHED = "('done', 'failed', 'cancelled')"
ACTIVE = "('queued', 'running')"


class PostgresJobStore:
    """Open with `await PostgresJobStore.open(settings)`; close with `await store.close()`."""

    def __init__(self, pool, settings: Settings, files: JobFiles, url: str):
        self.pool = pool
        self.settings = settings
        self.files = files
        self.listener = Listener(url)
        # (job id, worker) -> the lease number of this store's claim: the fencing token its writes carry
        self._leases: dict[tuple[int, str], int] = {}

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

    # ----- connections ----------------------------------------------------------------------------

    async def _one(self, sql: str, args=()) -> tuple | None:
        async with self.pool.connection() as conn:
            return await (await conn.execute(sql, args)).fetchone()

    async def _all(self, sql: str, args=()) -> list[tuple]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(sql, args)).fetchall()

    @contextlib.asynccontextmanager
    async def _write(self):
        """One transaction on a connection of the pool; rolled back on any error or cancellation."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn

    @staticmethod
    async def _notify(conn, channel: str, payload: object = "") -> None:
        await conn.execute("SELECT pg_notify(%s, %s)", (channel, str(payload)))

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

    async def get(self, job_id: int) -> Job | None:
        if not 1 <= job_id <= MAX_JOB_ID:  # not a job id at all (and too large for a BIGINT)
            return None
        row = await self._one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=%s", (job_id,))
        return _job_from_row(row) if row else None

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
            f"AND (next_delivery_at IS NULL OR next_delivery_at <= {NOW}) ORDER BY id",
            (platform,),
        )
        return [_job_from_row(r) for r in rows]

    async def mark_delivered(self, job_id: int) -> None:
        async with self._write() as conn:
            await conn.execute("UPDATE jobs SET delivered=TRUE WHERE id=%s", (job_id,))

    async def delivery_failed(self, job_id: int, reason: str, permanent: bool) -> float | None:
        """Record a failed delivery. Permanent: never tried again, the reason kept. Otherwise tried again after
        a pause that doubles each time; returns it."""
        async with self._write() as conn:
            if permanent:
                await conn.execute("UPDATE jobs SET delivered=TRUE, delivery_error=%s WHERE id=%s",
                                   (reason[:500], job_id))
                return None
            (attempts,) = await (await conn.execute(
                "SELECT delivery_attempts FROM jobs WHERE id=%s FOR UPDATE", (job_id,))).fetchone()
            pause = min(DELIVERY_RETRY_FIRST * 2**attempts, DELIVERY_RETRY_MAX)
            await conn.execute(
                f"UPDATE jobs SET delivery_attempts=delivery_attempts+1, next_delivery_at={NOW} + %s WHERE id=%s",
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

    def _order_sql(self) -> str:
        """Queued jobs as (id, params, extends_job, extends_video, turn); workers take them by turn, then id.
        Fair: a person's n-th waiting job (counting their running ones) goes after everyone's (n-1)-th."""
        if not self.settings.fair_queue:
            return "SELECT id, params, extends_job, extends_video, 0 AS turn FROM jobs WHERE state='queued'"
        return (
            "SELECT q.id, q.params, q.extends_job, q.extends_video, q.turn + COALESCE(r.busy, 0) AS turn FROM ("
            " SELECT id, params, platform, user_id, extends_job, extends_video,"
            "  ROW_NUMBER() OVER (PARTITION BY platform, user_id ORDER BY id) AS turn FROM jobs"
            " WHERE state='queued') AS q "
            "LEFT JOIN (SELECT platform, user_id, COUNT(*) AS busy FROM jobs WHERE state='running'"
            " GROUP BY platform, user_id) AS r ON r.platform=q.platform AND r.user_id=q.user_id"
        )

    async def speed(self) -> tuple[Speed, int]:
        """The measured speed (mean over live workers) and how many workers are alive."""
        rows = await self._all(
            "SELECT seconds_per_step, section_overhead, teacache_factor FROM workers "
            f"WHERE seen_at >= {NOW} - %s",
            (2 * self.settings.lease_seconds,),
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

    # ----- workers --------------------------------------------------------------------------------

    async def heartbeat(self, worker: str, problem: str | None = None, starting: bool = False) -> None:
        """The worker is alive; `problem` says why it cannot render now (None: it can); `starting`: it is
        getting ready (loading and compiling) and claims nothing yet."""
        async with self._write() as conn:
            await conn.execute(
                "INSERT INTO workers (name, seen_at, problem, problem_since, starting) "
                f"VALUES (%s, {NOW}, %s, CASE WHEN %s::text IS NULL THEN NULL ELSE {NOW} END, %s) "
                "ON CONFLICT (name) DO UPDATE SET seen_at=excluded.seen_at, problem=excluded.problem, "
                "starting=excluded.starting, "
                "problem_since=CASE WHEN excluded.problem IS NULL THEN NULL "
                "WHEN workers.problem IS NOT DISTINCT FROM excluded.problem THEN workers.problem_since "
                "ELSE excluded.seen_at END",
                (worker, problem, problem, starting),
            )

    async def _live_workers(self) -> list[tuple[str, str | None, float | None, bool]]:
        """(name, problem, since, starting) of every worker seen within two leases."""
        return await self._all(
            f"SELECT name, problem, problem_since, starting FROM workers WHERE seen_at >= {NOW} - %s ORDER BY name",
            (2 * self.settings.lease_seconds,),
        )

    async def worker_status(self) -> WorkerStatus:
        """Live workers, how many of them can render, how many are starting up, and the others' reasons."""
        rows = await self._live_workers()
        problems = tuple(dict.fromkeys(problem for _, problem, _, _ in rows if problem))
        ready = sum(1 for _, problem, _, starting in rows if not problem and not starting)
        starting = sum(1 for _, problem, _, starting in rows if not problem and starting)
        return WorkerStatus(alive=len(rows), ready=ready, problems=problems, starting=starting)

    async def worker_problems(self) -> list[tuple[str, str, float]]:
        """(worker, problem, since) of every live worker that cannot render now."""
        return [row[:3] for row in await self._live_workers() if row[1]]

    async def claim_notice(self, key: str) -> bool:
        """True the first time `key` is claimed, ever: what admins are told once, across restarts too."""
        async with self._write() as conn:
            cursor = await conn.execute(
                f"INSERT INTO notices (key, sent_at) VALUES (%s, {NOW}) ON CONFLICT (key) DO NOTHING", (key,)
            )
            return cursor.rowcount == 1

    async def record_speed(
        self, worker: str, seconds_per_step: float, section_overhead: float, teacache: bool = False
    ) -> None:
        """Blend a new measurement into the worker's figures (recent jobs weigh more). A TeaCache job only
        moves the worker's TeaCache factor, its step time over the plain one."""
        async with self._write() as conn:
            row = await (await conn.execute(
                "SELECT seconds_per_step, section_overhead, teacache_factor FROM workers WHERE name=%s FOR UPDATE",
                (worker,),
            )).fetchone()
            if teacache:
                if row and row[0]:  # nothing to divide by before the first plain job
                    factor = seconds_per_step / row[0]
                    if row[2] is not None:
                        factor = 0.7 * factor + 0.3 * row[2]
                    await conn.execute(f"UPDATE workers SET teacache_factor=%s, seen_at={NOW} WHERE name=%s",
                                       (factor, worker))
                return
            if row and row[0] is not None:
                seconds_per_step = 0.7 * seconds_per_step + 0.3 * row[0]
                section_overhead = 0.7 * section_overhead + 0.3 * row[1]
            await conn.execute(
                "INSERT INTO workers (name, seconds_per_step, section_overhead, samples, seen_at) "
                f"VALUES (%s, %s, %s, 1, {NOW}) ON CONFLICT (name) DO UPDATE SET "
                "seconds_per_step=excluded.seconds_per_step, section_overhead=excluded.section_overhead, "
                "samples=workers.samples+1, seen_at=excluded.seen_at",
                (worker, seconds_per_step, section_overhead),
            )

    # ----- claims and leases ----------------------------------------------------------------------

    async def claim(self, worker: str, lease_seconds: float | None = None) -> Job | None:
        """Take the next job under a lease: first any job whose worker died (its lease ran out), then the
        queue in order. A job already taken MAX_ATTEMPTS times is failed instead. Rows another claimer has
        locked are skipped, not waited for."""
        lease_seconds = lease_seconds or self.settings.lease_seconds
        async with self._write() as conn:
            while True:
                row = await (await conn.execute(
                    f"SELECT id, attempts FROM jobs WHERE state='running' AND lease_expires_at < {NOW} "
                    "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
                )).fetchone()
                if row is None:
                    row = await (await conn.execute(
                        f"SELECT j.id, j.attempts FROM jobs AS j JOIN ({self._order_sql()}) AS o ON o.id = j.id "
                        "WHERE j.state='queued' ORDER BY o.turn, j.id LIMIT 1 FOR UPDATE OF j SKIP LOCKED"
                    )).fetchone()
                if row is None:
                    return None
                job_id, attempts = row
                await self._notify(conn, JOBS_CHANNEL, job_id)
                if attempts < MAX_ATTEMPTS:
                    break
                await conn.execute(
                    f"UPDATE jobs SET state='failed', finished_at={NOW}, worker=NULL, lease_expires_at=NULL, "
                    "error=%s WHERE id=%s",
                    (f"The render stopped its worker {attempts} times, so it was given up.", job_id),
                )
                log.warning("job %d failed after %d attempts", job_id, attempts)
            (lease,) = await (await conn.execute(
                f"UPDATE jobs SET state='running', worker=%s, lease_expires_at={NOW} + %s, attempts=attempts+1, "
                f"lease=lease+1, started_at=COALESCE(started_at, {NOW}) WHERE id=%s RETURNING lease",
                (worker, lease_seconds, job_id),
            )).fetchone()
        self._leases[(job_id, worker)] = lease
        log.info("job %d claimed by %s (attempt %d, lease %d)", job_id, worker, attempts + 1, lease)
        return await self.get(job_id)

    def lease_token(self, job_id: int, worker: str) -> int | None:
        """The fencing token of this store's claim of the job for `worker`, or None without one."""
        return self._leases.get((job_id, worker))

    async def _fenced(self, conn, job_id: int, worker: str, sets: str, args=()) -> bool:
        """UPDATE the job with `sets` only while this store's claim of it for `worker` still holds."""
        token = self._leases.get((job_id, worker))
        if token is None:  # never claimed here, or already finished: nothing to write under
            return False
        cursor = await conn.execute(
            f"UPDATE jobs SET {sets} WHERE id=%s AND worker=%s AND lease=%s AND state='running'",
            (*args, job_id, worker, token),
        )
        if cursor.rowcount != 1:
            log.warning("job %d: a write by %s under lease %d was refused: the job was taken over", job_id,
                        worker, token)
            return False
        await self._notify(conn, JOBS_CHANNEL, job_id)
        return True

    async def renew(self, job_id: int, worker: str, lease_seconds: float | None = None) -> bool:
        """Extend the lease; False when this claim no longer holds the job (the worker must stop)."""
        lease_seconds = lease_seconds or self.settings.lease_seconds
        async with self._write() as conn:
            await conn.execute(f"UPDATE workers SET seen_at={NOW} WHERE name=%s", (worker,))
            return await self._fenced(conn, job_id, worker, f"lease_expires_at={NOW} + %s", (lease_seconds,))

    async def report_progress(self, job_id: int, worker: str, progress: Progress) -> None:
        async with self._write() as conn:
            await self._fenced(conn, job_id, worker, "progress=%s", (json.dumps(asdict(progress)),))

    async def _finish(self, job_id: int, worker: str, sets: str, args=()) -> bool:
        async with self._write() as conn:
            done = await self._fenced(conn, job_id, worker, f"finished_at={NOW}, lease_expires_at=NULL, {sets}",
                                      args)
        self._leases.pop((job_id, worker), None)
        return done

    async def complete(self, job_id: int, worker: str, video: str, fitted: dict[int, str]) -> bool:
        """Mark the job done; False if this claim no longer holds it, or if a cancel came in after its last
        step: the person was told it would stop, so it ends cancelled and no video is sent."""
        result = json.dumps({"video": video, "fitted": {str(k): v for k, v in fitted.items()}})
        if not await self._finish(
            job_id, worker,
            "state=CASE WHEN cancel_requested THEN 'cancelled' ELSE 'done' END, "
            "result=CASE WHEN cancel_requested THEN NULL ELSE %s::text END",
            (result,),
        ):
            return False
        if (await self.get(job_id)).state is JobState.CANCELLED:
            log.info("job %d finished rendering after it was cancelled: cancelled, not delivered", job_id)
            return False
        log.info("job %d done by %s", job_id, worker)
        return True

    async def fail(self, job_id: int, worker: str, error: str) -> bool:
        log.warning("job %d failed on %s: %s", job_id, worker, error)
        return await self._finish(job_id, worker, "state='failed', error=%s", (error[:2000],))

    async def mark_cancelled(self, job_id: int, worker: str) -> bool:
        return await self._finish(job_id, worker, "state='cancelled'")

    async def release(self, job_id: int, worker: str) -> bool:
        """Give a job back to the queue on a clean shutdown; it resumes from its checkpoint and the attempt
        does not count against it."""
        async with self._write() as conn:
            released = await self._fenced(
                conn, job_id, worker,
                "state='queued', worker=NULL, lease_expires_at=NULL, attempts=GREATEST(attempts-1, 0)",
            )
            if released:
                await self._notify(conn, WORK_CHANNEL)
        self._leases.pop((job_id, worker), None)
        return released


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
