"""The job queue on SQLite in WAL mode, through aiosqlite: the embedded default backend.

The queue's logic is SqlJobStore's (storage/sql_store.py), shared with PostgreSQL. What is SQLite's own: one
connection, and every state change that more than one process can race on runs inside `BEGIN IMMEDIATE`, so two
workers never claim one job and a quota is never overrun; other processes' writes are found by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path

import aiosqlite

from storage.files import JobFiles, check_data_folder
from storage.jobs import StorageNotWritable
from storage.schema import MIGRATIONS
from storage.settings import Settings
from storage.sql_claims import MAX_ATTEMPTS
from storage.sql_dialect import Session, SqliteDialect
from storage.sql_store import DELIVERY_RETRY_FIRST, DELIVERY_RETRY_MAX, SqlJobStore
from storage.wakeups import poll

# Imported from here by other modules and tests.
__all__ = ["DELIVERY_RETRY_FIRST", "DELIVERY_RETRY_MAX", "MAX_ATTEMPTS", "SqliteJobStore", "StorageNotWritable"]

log = logging.getLogger(__name__)


class SqliteJobStore(SqlJobStore):
    """Open with `await SqliteJobStore.open(settings)`; close with `await store.close()`."""

    dialect = SqliteDialect()

    def __init__(self, db: aiosqlite.Connection, settings: Settings, files: JobFiles):
        super().__init__(settings, files)
        self.db = db
        # One connection serves many coroutines: their transactions must not interleave.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, settings: Settings, path: Path | None = None) -> SqliteJobStore:
        data_dir = Path(settings.data_dir)
        path = path or data_dir / "framepack.db"
        for folder in (data_dir, path.parent):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StorageNotWritable(f"The folder {folder} cannot be made ({error.strerror or error}). Check "
                                         "DATA_DIR (and DATABASE_URL's path) and the permissions above it.") from None
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
        async with self._write() as session:
            await session.execute("CREATE TABLE IF NOT EXISTS write_probe (x)")
            await session.execute("DROP TABLE write_probe")
        check_data_folder(self.files.root.parent)

    async def close(self) -> None:
        await self.db.close()

    @contextlib.asynccontextmanager
    async def _read(self):
        # Reads need no lock: WAL lets them run beside a write, and they do not open a transaction.
        yield Session(self.db, self.dialect)

    @contextlib.asynccontextmanager
    async def _write(self):
        """One write transaction that takes the database's write lock up front."""
        async with self._lock:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                yield Session(self.db, self.dialect)
            except BaseException:
                # Also when the task was cancelled while BEGIN waited: aiosqlite's thread still runs it, and
                # this ROLLBACK queues behind it, so no transaction is left open for the next writer.
                with contextlib.suppress(sqlite3.OperationalError):  # BEGIN itself failed: nothing to undo
                    await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    async def _migrate(self) -> None:
        async with self._write() as session:
            (version,) = await session.one("PRAGMA user_version")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    await session.execute(statement)
                await session.execute(f"PRAGMA user_version = {number}")
                log.info("database migrated to version %d", number)

    # ----- waiting for changes --------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> bool:
        """Other processes' writes to the file are not heard of here: waits `timeout` (the poll interval)."""
        return await poll(timeout)

    async def wait_for_changes(self, timeout: float) -> bool:
        return await poll(timeout)


def _not_writable(path: Path, error: Exception) -> str:
    return (f"The database {path} cannot be written ({error}). Check the permissions of the file and of its "
            "folder, and the free disk space.")
