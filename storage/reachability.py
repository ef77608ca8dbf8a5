"""Can this host reach the database and the bucket its settings name? `framepack-bot doctor` asks, before a
worker or a frontends process would find out by failing to start.

Nothing here changes the database (no migration, no table made): it connects, reads the schema version and
says how it compares with this version's migrations. The bucket check writes one small probe object under the
prefix, lists it, reads it back and deletes it. Messages name the server or the bucket, never a password or a
key (DATABASE_URL's password is replaced; the STORAGE_ secrets are handed to obstore alone).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from storage.files import nearest_existing
from storage.settings import Settings

PROBE_PREFIX = "doctor-probes/"


@dataclass
class Check:
    ok: bool
    message: str


def check_database(settings: Settings) -> Check:
    """SQLite: its folder writable, its version. PostgreSQL: it connects, its version."""
    from storage.postgres_connect import is_postgres_url

    url = settings.database_url
    if is_postgres_url(url):
        return _check_postgres(url)
    path = Path(url.removeprefix("sqlite:///")).expanduser() if url else Path(settings.data_dir) / "framepack.db"
    return _check_sqlite(path)


def _versions(found: int, newest: int, where: str) -> Check:
    if found > newest:
        return Check(False, f"{where} is at schema version {found}, newer than this version of the bot knows "
                            f"({newest}): update the bot on this host")
    if found < newest:
        return Check(True, f"{where} is at schema version {found}; the first worker or frontends process to "
                           f"start migrates it to {newest}")
    return Check(True, f"{where}: reachable, schema version {found} (up to date)")


def _check_sqlite(path: Path) -> Check:
    from storage.schema import MIGRATIONS

    where = f"the SQLite database {path}"
    if not path.exists():
        folder = nearest_existing(path.parent)
        if not os.access(folder, os.W_OK):
            return Check(False, f"{where} does not exist and {folder} cannot be written, so it cannot be made")
        return Check(True, f"{where} does not exist yet; the first start makes it (its folder can be written)")
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        return Check(False, f"{where} (or its folder, which holds its write-ahead log) cannot be written")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.Error as error:
        return Check(False, f"{where} cannot be read: {error}")
    return _versions(version, len(MIGRATIONS), where)


def _check_postgres(url: str) -> Check:
    from storage.postgres_connect import CONNECT_TIMEOUT_SECONDS, safe_url, unreachable
    from storage.postgres_schema import MIGRATIONS

    where = f"the PostgreSQL database {safe_url(url)}"
    try:
        import psycopg
    except ImportError:
        return Check(False, "DATABASE_URL names a PostgreSQL server, but its driver is not installed: "
                            "pip install 'framepack-bot[postgres]'")
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            found = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
            row = conn.execute("SELECT version FROM schema_version").fetchone() if found else None
    except psycopg.Error as error:
        return Check(False, str(unreachable(url, error)))
    return _versions(row[0] if row else 0, len(MIGRATIONS), where)


def check_bucket(settings: Settings) -> Check | None:
    """Put, list, read back and delete a probe object under STORAGE_URL; None when job files stay local."""
    from storage.object_store import ObjectStoreError, open_object_store

    if not settings.storage_url:
        return None
    try:
        objects = open_object_store(settings)
        return _probe(objects)
    except ObjectStoreError as error:
        return Check(False, f"the bucket cannot be used: {error}. Check STORAGE_URL, STORAGE_ENDPOINT_URL, "
                            "STORAGE_REGION and the access key's rights (list, put, get and delete)")


def _probe(objects) -> Check:
    key = f"{PROBE_PREFIX}{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    body = f"framepack-bot doctor probe from {socket.gethostname()}\n".encode()
    with tempfile.TemporaryDirectory(prefix="framepack-doctor-") as folder:
        sent, back = Path(folder) / "probe", Path(folder) / "back"
        sent.write_bytes(body)
        objects.put_file(key, sent)
        try:
            listed = objects.list(PROBE_PREFIX)
            if key not in listed:
                return Check(False, f"{objects.where}: a probe object was put but a listing does not show it")
            if not objects.get_file(key, back) or back.read_bytes() != body:
                return Check(False, f"{objects.where}: a probe object was put but did not read back the same")
        finally:
            objects.delete([key])
    return Check(True, f"the bucket {objects.where}: reachable (a probe object put, listed, read and deleted)")
