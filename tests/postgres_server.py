"""A real PostgreSQL server for the tests: the pgserver wheel's own binaries, one server for the whole test
session (started by the first test that asks for it), a fresh database for each test.

pgserver listens on a Unix socket in its data folder only. Run as root (CI), it runs the server as a system
user of its own, `pgserver`, which it creates (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import warnings
from urllib.parse import quote

import pytest

# Durability is not under test: without fsync a new database takes milliseconds.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
_numbers = itertools.count(1)


class PostgresForTests:
    def __init__(self, server, folder: str):
        self.server = server
        self.folder = folder
        self.socket_dir = str(server.get_postmaster_info().socket_dir)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={quote(self.socket_dir)}"

    def admin(self):
        import psycopg

        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self) -> str:
        name = f"test_{os.getpid()}_{next(_numbers)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_server() -> PostgresForTests:
    try:
        with warnings.catch_warnings():  # platformdirs: no XDG_RUNTIME_DIR in CI, so /tmp it is (what we want)
            warnings.simplefilter("ignore")
            import pgserver
        import psycopg  # noqa: F401
    except ImportError as error:
        message = f"PostgreSQL tests need the test extras ({error.name} is missing): pip install -e '.[dev]'"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them: a missing one is a broken set-up, not a skip
        pytest.skip(message)
    folder = tempfile.mkdtemp(prefix="framepack-pg-")
    server = PostgresForTests(pgserver.get_server(folder, cleanup_mode="delete"), folder)
    with server.admin() as conn:
        for name, value in FAST_SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")
    return server


@pytest.fixture(scope="session")
def postgres_server():
    server = start_server()
    yield server
    server.stop()


@pytest.fixture()
def postgres_url(postgres_server):
    """The URL of a new, empty database on the session's server, dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
