"""The workers' side of the store, for both backends: heartbeats and speeds, and claims under fenced leases.

Every claim adds one to jobs.lease and returns it as Job.lease, the fencing token; the store also keeps it for
the (job, worker) it claimed. Every write under the claim (renew, progress, complete, fail, cancelled, release)
is an UPDATE that names the token, so once the lease ran out and another claim took the job, the old claim's
writes match no row. The backends differ only in how a claim keeps others off the row it takes (SQLite's one
write lock; PostgreSQL's FOR UPDATE SKIP LOCKED) and in what a write that names no token matches (_fence_token).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict

from storage.eta import Speed
from storage.job_rows import JOB_COLUMNS, job_from_row
from storage.jobs import MAX_JOB_ID, Job, JobState, Progress, WorkerStatus
from storage.settings import Settings
from storage.sql_dialect import NOW, PostgresDialect, Session, SqliteDialect
from storage.worker_info import WORKERS_SQL, WorkerInfo, worker_info

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a job that takes down its worker this often is failed instead of retried
NOT_CLAIMED_HERE = object()  # _fence_token: no token to write under, so nothing is written


class WorkerSide:
    """What a worker calls. A backend gives the connections (_read, _write) and its dialect; the SqlJobStore
    (storage/sql_store.py) adds what the frontends call."""

    dialect: SqliteDialect | PostgresDialect

    def __init__(self, settings: Settings):
        self.settings = settings
        # (job id, worker) -> the lease number of this store's claim: the fencing token its writes carry
        self._leases: dict[tuple[int, str], int] = {}

    # ----- what a backend provides ----------------------------------------------------------------

    def _read(self) -> contextlib.AbstractAsyncContextManager[Session]:
        """A session for statements outside a write transaction."""
        raise NotImplementedError

    def _write(self) -> contextlib.AbstractAsyncContextManager[Session]:
        """One write transaction, rolled back on any error or cancellation."""
        raise NotImplementedError

    async def _job_changed(self, session: Session, job_id: int) -> None:
        """Tell the watchers once the transaction commits (PostgreSQL's NOTIFY); SQLite's poll instead."""

    async def _work_available(self, session: Session) -> None:
        """Tell idle workers once the transaction commits (PostgreSQL's NOTIFY); SQLite's poll instead."""

    def _fence_token(self, job_id: int, worker: str, lease: int | None) -> int | None | object:
        """The lease number a write must match: the one the worker gives; without one (None), SQLite matches the
        worker's claim whatever its number, as it always has."""
        return lease

    async def _one(self, sql: str, args=()) -> tuple | None:
        async with self._read() as session:
            return await session.one(sql, args)

    async def _all(self, sql: str, args=()) -> list[tuple]:
        async with self._read() as session:
            return await session.all(sql, args)

    # ----- the queue as workers take it -----------------------------------------------------------

    async def get(self, job_id: int) -> Job | None:
        if not 1 <= job_id <= MAX_JOB_ID:  # not a job id at all (and too large for the databases' integers)
            return None
        row = await self._one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,))
        return job_from_row(row) if row else None

    def _order_sql(self) -> str:
        """Queued jobs as (id, params, extends_job, extends_video, turn); workers take them by turn, then id.
        Fair: a person's n-th waiting job (counting their running ones) goes after everyone's (n-1)-th, so ten
        jobs from one person do not block one from another."""
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
            f"SELECT seconds_per_step, section_overhead, teacache_factor FROM workers WHERE seen_at >= {NOW} - ?",
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

    # ----- workers --------------------------------------------------------------------------------

    async def heartbeat(self, worker: str, problem: str | None = None, starting: bool = False) -> None:
        """The worker is alive; `problem` says why it cannot render now (None: it can); `starting`: it is
        getting ready (loading and compiling) and claims nothing yet."""
        async with self._write() as session:
            await session.execute(
                "INSERT INTO workers (name, seen_at, problem, problem_since, starting) "
                f"VALUES (?, {NOW}, ?, CASE WHEN CAST(? AS TEXT) IS NULL THEN NULL ELSE {NOW} END, ?) "
                "ON CONFLICT (name) DO UPDATE SET seen_at=excluded.seen_at, problem=excluded.problem, "
                "starting=excluded.starting, "
                "problem_since=CASE WHEN excluded.problem IS NULL THEN NULL "
                f"WHEN workers.problem {self.dialect.null_safe_equal} excluded.problem THEN workers.problem_since "
                "ELSE excluded.seen_at END",
                (worker, problem, problem, starting),
            )

    async def _live_workers(self) -> list[tuple[str, str | None, float | None, bool]]:
        """(name, problem, since, starting) of every worker seen within two leases."""
        return await self._all(
            f"SELECT name, problem, problem_since, starting FROM workers WHERE seen_at >= {NOW} - ? ORDER BY name",
            (2 * self.settings.lease_seconds,),
        )

    async def worker_status(self) -> WorkerStatus:
        """Live workers, how many of them can render, how many are starting up, and the others' reasons."""
        rows = await self._live_workers()
        problems = tuple(dict.fromkeys(problem for _, problem, _, _ in rows if problem))
        ready = sum(1 for _, problem, _, starting in rows if not problem and not starting)
        starting = sum(1 for _, problem, _, starting in rows if not problem and starting)
        return WorkerStatus(alive=len(rows), ready=ready, problems=problems, starting=starting)

    async def describe_worker(self, worker: str, host: str, gpu: str | None, plan: str | None) -> None:
        """Where the worker runs and its memory plan, for /admin workers."""
        async with self._write() as session:
            await session.execute(
                f"INSERT INTO workers (name, seen_at, host, gpu, plan) VALUES (?, {NOW}, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET seen_at=excluded.seen_at, host=excluded.host, gpu=excluded.gpu, "
                "plan=excluded.plan",
                (worker, host, gpu, plan),
            )

    async def workers(self) -> list[WorkerInfo]:
        """Every live worker (seen within two leases): host, GPU, plan, seconds per step, current job."""
        rows = await self._all(WORKERS_SQL.format(since=f"{NOW} - ?"), (2 * self.settings.lease_seconds,))
        return [worker_info(row) for row in rows]

    async def worker_problems(self) -> list[tuple[str, str, float]]:
        """(worker, problem, since) of every live worker that cannot render now."""
        return [row[:3] for row in await self._live_workers() if row[1]]

    async def record_speed(
        self, worker: str, seconds_per_step: float, section_overhead: float, teacache: bool = False
    ) -> None:
        """Blend a new measurement into the worker's figures (recent jobs weigh more). A TeaCache job only
        moves the worker's TeaCache factor, its step time over the plain one, so the plain figure stays what a
        plain job takes."""
        async with self._write() as session:
            row = await session.one(
                "SELECT seconds_per_step, section_overhead, teacache_factor FROM workers WHERE name=?"
                + self.dialect.for_update(),
                (worker,),
            )
            if teacache:
                if row and row[0]:  # nothing to divide by before the first plain job
                    factor = seconds_per_step / row[0]
                    if row[2] is not None:
                        factor = 0.7 * factor + 0.3 * row[2]
                    await session.execute(f"UPDATE workers SET teacache_factor=?, seen_at={NOW} WHERE name=?",
                                          (factor, worker))
                return
            if row and row[0] is not None:
                seconds_per_step = 0.7 * seconds_per_step + 0.3 * row[0]
                section_overhead = 0.7 * section_overhead + 0.3 * row[1]
            await session.execute(
                "INSERT INTO workers (name, seconds_per_step, section_overhead, samples, seen_at) "
                f"VALUES (?, ?, ?, 1, {NOW}) ON CONFLICT (name) DO UPDATE SET "
                "seconds_per_step=excluded.seconds_per_step, section_overhead=excluded.section_overhead, "
                "samples=workers.samples+1, seen_at=excluded.seen_at",
                (worker, seconds_per_step, section_overhead),
            )

    # ----- claims and leases ----------------------------------------------------------------------

    async def claim(self, worker: str, lease_seconds: float | None = None) -> Job | None:
        """Take the next job under a lease: first any job whose worker died (its lease ran out), then the
        queue in order. A job already taken MAX_ATTEMPTS times is failed instead. On PostgreSQL, rows another
        claimer has locked are skipped, not waited for."""
        lease_seconds = lease_seconds or self.settings.lease_seconds
        async with self._write() as session:
            while True:
                row = await self._next_claimable(session)
                if row is None:
                    return None
                job_id, attempts = row
                await self._job_changed(session, job_id)
                if attempts < MAX_ATTEMPTS:
                    break
                await session.execute(
                    f"UPDATE jobs SET state='failed', finished_at={NOW}, worker=NULL, lease_expires_at=NULL, "
                    "error=? WHERE id=?",
                    (f"The render stopped its worker {attempts} times, so it was given up.", job_id),
                )
                log.warning("job %d failed after %d attempts", job_id, attempts)
            await session.execute(
                f"UPDATE jobs SET state='running', worker=?, lease_expires_at={NOW} + ?, attempts=attempts+1, "
                f"lease=lease+1, started_at=COALESCE(started_at, {NOW}) WHERE id=?",
                (worker, lease_seconds, job_id),
            )
            (lease,) = await session.one("SELECT lease FROM jobs WHERE id=?", (job_id,))
        self._leases[(job_id, worker)] = lease
        log.info("job %d claimed by %s (attempt %d, lease %d)", job_id, worker, attempts + 1, lease)
        return await self.get(job_id)

    async def _next_claimable(self, session: Session) -> tuple[int, int] | None:
        """(id, attempts) of the job to claim next, locked for this transaction."""
        row = await session.one(
            f"SELECT id, attempts FROM jobs WHERE state='running' AND lease_expires_at < {NOW} ORDER BY id LIMIT 1"
            + self.dialect.for_update(skip_locked=True)
        )
        if row is None:
            row = await session.one(
                f"SELECT j.id, j.attempts FROM jobs AS j JOIN ({self._order_sql()}) AS o ON o.id = j.id "
                "WHERE j.state='queued' ORDER BY o.turn, j.id LIMIT 1" + self.dialect.for_update(True, of="j")
            )
        return row

    def lease_token(self, job_id: int, worker: str) -> int | None:
        """The fencing token of this store's claim of the job for `worker`, or None without one."""
        return self._leases.get((job_id, worker))

    async def _fenced(self, session: Session, job_id: int, worker: str, lease: int | None, sets: str,
                      args=()) -> bool:
        """UPDATE the job with `sets` only while the claim numbered by _fence_token still holds it."""
        token = self._fence_token(job_id, worker, lease)
        if token is NOT_CLAIMED_HERE:  # never claimed here, or already finished: nothing to write under
            return False
        cursor = await session.execute(
            f"UPDATE jobs SET {sets} WHERE id=? AND worker=? AND state='running' "
            "AND (CAST(? AS BIGINT) IS NULL OR lease=?)",
            (*args, job_id, worker, token, token),
        )
        if cursor.rowcount != 1:
            log.warning("job %d: a write by %s under lease %s was refused: the job was taken over", job_id,
                        worker, token)
            return False
        await self._job_changed(session, job_id)
        return True

    async def renew(self, job_id: int, worker: str, lease_seconds: float | None = None,
                    lease: int | None = None) -> bool:
        """Extend the lease; False when this claim no longer holds the job (the worker must stop)."""
        lease_seconds = lease_seconds or self.settings.lease_seconds
        async with self._write() as session:
            await session.execute(f"UPDATE workers SET seen_at={NOW} WHERE name=?", (worker,))
            return await self._fenced(session, job_id, worker, lease, f"lease_expires_at={NOW} + ?",
                                      (lease_seconds,))

    async def report_progress(self, job_id: int, worker: str, progress: Progress, lease: int | None = None) -> bool:
        """Record the progress; False (nothing written) when this claim no longer holds the job."""
        async with self._write() as session:
            return await self._fenced(session, job_id, worker, lease, "progress=?", (json.dumps(asdict(progress)),))

    async def _finish(self, job_id: int, worker: str, lease: int | None, sets: str, args=()) -> bool:
        async with self._write() as session:
            done = await self._fenced(session, job_id, worker, lease,
                                      f"finished_at={NOW}, lease_expires_at=NULL, {sets}", args)
        self._leases.pop((job_id, worker), None)
        return done

    async def complete(self, job_id: int, worker: str, video: str, fitted: dict[int, str],
                       lease: int | None = None) -> bool:
        """Mark the job done; False if this claim no longer holds it, or if a cancel came in after its last
        step: the person was told it would stop, so it ends cancelled and no video is sent."""
        result = json.dumps({"video": video, "fitted": {str(k): v for k, v in fitted.items()}})
        if not await self._finish(
            job_id, worker, lease,
            "state=CASE WHEN cancel_requested THEN 'cancelled' ELSE 'done' END, "
            "result=CASE WHEN cancel_requested THEN NULL ELSE CAST(? AS TEXT) END",
            (result,),
        ):
            return False
        if (await self.get(job_id)).state is JobState.CANCELLED:
            log.info("job %d finished rendering after it was cancelled: cancelled, not delivered", job_id)
            return False
        log.info("job %d done by %s", job_id, worker)
        return True

    async def fail(self, job_id: int, worker: str, error: str, lease: int | None = None) -> bool:
        log.warning("job %d failed on %s: %s", job_id, worker, error)
        return await self._finish(job_id, worker, lease, "state='failed', error=?", (error[:2000],))

    async def mark_cancelled(self, job_id: int, worker: str, lease: int | None = None) -> bool:
        return await self._finish(job_id, worker, lease, "state='cancelled'")

    async def release(self, job_id: int, worker: str, lease: int | None = None) -> bool:
        """Give a job back to the queue on a clean shutdown; it resumes from its checkpoint and the attempt
        does not count against it."""
        async with self._write() as session:
            released = await self._fenced(
                session, job_id, worker, lease,
                "state='queued', worker=NULL, lease_expires_at=NULL, "
                "attempts=CASE WHEN attempts > 0 THEN attempts-1 ELSE 0 END",
            )
            if released:
                await self._work_available(session)
        self._leases.pop((job_id, worker), None)
        return released
