"""How SQLite and PostgreSQL spell the store's statements, so that the statements are written once.

Shared statements mark every argument with `?` and the current time (epoch seconds) with `$now`. SQLite binds the
store process's clock, read once per transaction as PostgreSQL's now() is; PostgreSQL uses the server's clock, so
that leases hold between machines whose clocks differ.
"""

from __future__ import annotations

import re
import time

NOW = "$now"
FINISHED = "('done', 'failed', 'cancelled')"
ACTIVE = "('queued', 'running')"
_MARKS = re.compile(r"(\?|\$now)")


class SqliteDialect:
    # One writer at a time holds the whole file (BEGIN IMMEDIATE): there are no row locks to take.
    null_safe_equal = "IS"

    def translate(self, sql: str, args, now: float) -> tuple[str, tuple]:
        """`?` stays; each `$now` becomes one more `?`, bound to `now`, in its place among the arguments."""
        if NOW not in sql:
            return sql, args
        given, bound, pieces = iter(args), [], _MARKS.split(sql)
        for i, piece in enumerate(pieces):
            if piece == "?":
                bound.append(next(given))
            elif piece == NOW:
                bound.append(now)
                pieces[i] = "?"
        return "".join(pieces), tuple(bound)

    def for_update(self, skip_locked: bool = False, of: str | None = None) -> str:
        return ""

    async def insert_returning_id(self, session: Session, sql: str, args) -> int:
        return (await session.execute(sql, args)).lastrowid

    async def rows(self, connection, sql: str, args) -> list[tuple]:
        """Runs and reads to the end in one call on aiosqlite's thread. A statement stepped but not yet read
        holds an old snapshot; if another process commits meanwhile, this connection's next BEGIN IMMEDIATE is
        refused at once ("database is locked", no busy wait), and reads share the connection with writes."""
        return list(await connection.execute_fetchall(sql, args))


class PostgresDialect:
    null_safe_equal = "IS NOT DISTINCT FROM"
    server_now = "extract(epoch from now())::float8"  # fixed for the length of a transaction

    def translate(self, sql: str, args, now: float) -> tuple[str, tuple]:
        return sql.replace("?", "%s").replace(NOW, self.server_now), args

    def for_update(self, skip_locked: bool = False, of: str | None = None) -> str:
        """Lock the rows read until the transaction ends; `skip_locked`: pass over rows another claimer holds."""
        return " FOR UPDATE" + (f" OF {of}" if of else "") + (" SKIP LOCKED" if skip_locked else "")

    async def insert_returning_id(self, session: Session, sql: str, args) -> int:
        (new_id,) = await (await session.execute(sql + " RETURNING id", args)).fetchone()
        return new_id

    async def rows(self, connection, sql: str, args) -> list[tuple]:
        return list(await (await connection.execute(sql, args)).fetchall())


class Session:
    """One connection (aiosqlite or psycopg) taking statements in the shared spelling, with one clock reading."""

    def __init__(self, connection, dialect: SqliteDialect | PostgresDialect):
        self.connection = connection
        self.dialect = dialect
        self.now = time.time()

    async def execute(self, sql: str, args=()):
        sql, args = self.dialect.translate(sql, tuple(args), self.now)
        return await self.connection.execute(sql, args)

    async def one(self, sql: str, args=()) -> tuple | None:
        """The first row of a query written to return at most one."""
        rows = await self.all(sql, args)
        return rows[0] if rows else None

    async def all(self, sql: str, args=()) -> list[tuple]:
        sql, args = self.dialect.translate(sql, tuple(args), self.now)
        return await self.dialect.rows(self.connection, sql, args)


def placeholders(count: int) -> str:
    """`(?, ?, ...)` for an IN list of `count` values."""
    return "(" + ", ".join("?" * count) + ")"
