"""The few ways the PostgreSQL store talks to its pool, and the SQL fragments its statements share."""

from __future__ import annotations

import contextlib

NOW = "extract(epoch from now())::float8"  # the server's clock, fixed for the length of a transaction
FINISHED = "('done', 'failed', 'cancelled')"
ACTIVE = "('queued', 'running')"


class PooledQueries:
    """One statement on a connection of the pool, or one transaction."""

    def __init__(self, pool):
        self.pool = pool

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
