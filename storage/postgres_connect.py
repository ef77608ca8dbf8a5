"""Connecting to PostgreSQL through psycopg 3, with errors that name the server but never the password.

psycopg 3 rather than asyncpg: it speaks libpq's connection strings exactly as psql does (sslmode, a socket
folder in `?host=`, passfiles, services), its notifications are a plain async iterator, it has a maintained
pool beside it, and both procrastinate and PgQueuer run on it.
"""

from __future__ import annotations

import logging

from storage.jobs import StorageNotWritable
from storage.log_setup import redact
from storage.url_secrets import masked_url, url_passwords

log = logging.getLogger(__name__)

SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT_SECONDS = 10
POOL_SIZE = 4  # a frontend's watchers and deliveries, or a worker's renewals and progress, side by side


class DatabaseUnreachable(StorageNotWritable):
    """The database cannot be reached or refused us; the message says where and why, without the password.

    A StorageNotWritable, so that `serve` and the workers report it as a set-up to fix, not a crash."""


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and url.startswith(SCHEMES)


def safe_url(url: str) -> str:
    """The URL as a person may see it: user, hosts, database and parameters, every password replaced."""
    return masked_url(url)


def unreachable(url: str, error: Exception) -> DatabaseUnreachable:
    """libpq's reason for a failed connection, with the password taken out wherever it shows up."""
    reason = redact(str(error).strip(), url_passwords(url))
    reason = reason.removeprefix("connection failed: ").replace("\n", " ").replace("\t", "")
    return DatabaseUnreachable(
        f"The database at {safe_url(url)} cannot be used: {reason}. Check DATABASE_URL, that the server is "
        "running and reachable from this machine, and the user's password and rights."
    )


def _psycopg():
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise DatabaseUnreachable(
            "DATABASE_URL names a PostgreSQL server, but its driver is not installed: "
            "pip install 'framepack-bot[postgres]'."
        ) from None
    return psycopg, psycopg_pool


async def connect(url: str, **options):
    """One autocommit connection; DatabaseUnreachable when the server cannot be reached or refuses us."""
    psycopg, _ = _psycopg()
    options.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=True, **options)
    except psycopg.Error as error:
        raise unreachable(url, error) from None


async def open_pool(url: str, name: str = "framepack"):
    """A small pool of autocommit connections, each checked before it is lent (the server may have restarted)."""
    _, psycopg_pool = _psycopg()
    pool = psycopg_pool.AsyncConnectionPool(
        url, min_size=1, max_size=POOL_SIZE, name=name, open=False,
        kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS},
        check=psycopg_pool.AsyncConnectionPool.check_connection,
    )
    try:
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
    except psycopg_pool.PoolTimeout as error:
        await pool.close()
        raise unreachable(url, error) from None
    return pool
