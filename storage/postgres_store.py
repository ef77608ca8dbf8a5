"""The job queue on PostgreSQL: the backend for workers and frontends on several machines.

The queue's logic is SqlJobStore's (storage/sql_store.py, storage/sql_claims.py), shared with SQLite
(tests/test_storage.py runs the same contract against both); what is PostgreSQL's own is how races are settled.
SQLite takes its one write lock up front. Here:

- a claim locks the row it takes with FOR UPDATE SKIP LOCKED: workers claiming at once take different jobs
  and never wait for one another;
- a claim's writes carry its fencing token, the job's lease number (storage/sql_claims.py): once another
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

import contextlib
from pathlib import Path

from storage.files import JobFiles, check_data_folder
from storage.jobs import NewJob
from storage.postgres_connect import connect, open_pool, unreachable
from storage.postgres_notify import JOBS_CHANNEL, WORK_CHANNEL, Listener
from storage.postgres_schema import migrate
from storage.settings import Settings
from storage.sql_claims import NOT_CLAIMED_HERE
from storage.sql_dialect import PostgresDialect, Session
from storage.sql_store import SqlJobStore


class PostgresJobStore(SqlJobStore):
    """Open with `await PostgresJobStore.open(settings)`; close with `await store.close()`."""

    dialect = PostgresDialect()

    def __init__(self, pool, settings: Settings, files: JobFiles, url: str):
        super().__init__(settings, files)
        self.pool = pool
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
            check_data_folder(data_dir)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        await self.listener.close()
        await self.pool.close()

    # ----- connections ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _read(self):
        """One autocommit connection of the pool."""
        async with self.pool.connection() as conn:
            yield Session(conn, self.dialect)

    @contextlib.asynccontextmanager
    async def _write(self):
        """One transaction on a connection of the pool; rolled back on any error or cancellation."""
        async with self.pool.connection() as conn, conn.transaction():
            yield Session(conn, self.dialect)

    async def _lock_person(self, session: Session, job: NewJob) -> None:
        """One person's enqueues one at a time, until the transaction ends: two at once cannot both pass the
        quota."""
        await session.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
                              (f"quota:{job.platform}:{job.user_id}",))

    def _fence_token(self, job_id: int, worker: str, lease: int | None) -> int | object:
        """The lease the worker gives, else the one this store's claim got: a write never goes without one."""
        token = lease if lease is not None else self._leases.get((job_id, worker))
        return NOT_CLAIMED_HERE if token is None else token

    # ----- notifications --------------------------------------------------------------------------

    async def _job_changed(self, session: Session, job_id: int) -> None:
        await _notify(session, JOBS_CHANNEL, job_id)  # sent when the transaction commits, not before

    async def _work_available(self, session: Session) -> None:
        await _notify(session, WORK_CHANNEL)

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


async def _notify(session: Session, channel: str, payload: object = "") -> None:
    await session.execute("SELECT pg_notify(?, ?)", (channel, str(payload)))


def _psycopg_error() -> type[Exception]:
    import psycopg

    return psycopg.Error
