"""`framepack-bot doctor`'s database and bucket checks (storage/reachability.py) against the real servers the tests
start: SQLite, PostgreSQL (tests/postgres_server.py) and an S3 API (tests/s3_server.py). Reachable ones pass with
their schema version; unreachable ones fail the doctor with a reason that holds no password and no key."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import boto3
from s3_server import ACCESS_KEY, SECRET_KEY, storage_env

from storage.reachability import check_bucket, check_database
from storage.schema import MIGRATIONS
from storage.settings import Settings
from storage.store import open_store

PASSWORD = "Doct0r-s3cret-pw"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nobody listens once it is closed


async def test_sqlite_before_and_after_the_first_start(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    before = check_database(settings)
    assert before.ok and "does not exist yet" in before.message
    store = await open_store(settings)
    await store.close()
    after = check_database(settings)
    assert after.ok and f"schema version {len(MIGRATIONS)} (up to date)" in after.message


def test_a_sqlite_file_that_is_not_a_database_fails(tmp_path):
    (tmp_path / "framepack.db").write_bytes(b"not a database at all" * 100)
    check = check_database(Settings(data_dir=tmp_path))
    assert not check.ok and "cannot be read" in check.message


async def test_postgres_connects_and_reports_its_version(tmp_path, postgres_url):
    from storage.postgres_schema import MIGRATIONS as POSTGRES_MIGRATIONS

    settings = Settings(data_dir=tmp_path, database_url=postgres_url)
    fresh = check_database(settings)
    assert fresh.ok and "schema version 0" in fresh.message and "migrates it" in fresh.message
    store = await open_store(settings)
    await store.close()
    migrated = check_database(settings)
    assert migrated.ok and f"schema version {len(POSTGRES_MIGRATIONS)} (up to date)" in migrated.message


def test_an_unreachable_postgres_fails_without_the_password(tmp_path):
    url = f"postgresql://framepack:{PASSWORD}@127.0.0.1:{_closed_port()}/framepack"
    check = check_database(Settings(data_dir=tmp_path, database_url=url))
    assert not check.ok and "framepack:***@127.0.0.1" in check.message and PASSWORD not in check.message


def test_a_bucket_is_probed_and_left_clean(tmp_path, s3_settings, s3_endpoint):
    check = check_bucket(Settings(data_dir=tmp_path, **s3_settings))
    assert check.ok and "put, listed, read and deleted" in check.message
    bucket = s3_settings["storage_url"].removeprefix("s3://").split("/")[0]
    client = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # the probe is gone
    assert check_bucket(Settings(data_dir=tmp_path)) is None  # no STORAGE_URL: nothing to check


def test_unusable_buckets_fail_without_the_secret_key(tmp_path, s3_settings):
    missing = {**s3_settings, "storage_url": "s3://no-such-bucket/bot"}
    nobody_there = {**s3_settings, "storage_endpoint_url": f"http://127.0.0.1:{_closed_port()}"}
    for fields in (missing, nobody_there):
        check = check_bucket(Settings(data_dir=tmp_path, **fields))
        assert not check.ok and "the bucket cannot be used" in check.message, check.message
        assert SECRET_KEY not in check.message and ACCESS_KEY not in check.message


def _doctor(tmp_path, tiny_models_dir, env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "STORAGE_"))}
    return subprocess.run([sys.executable, "-m", "bot.cli", "doctor"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**clean, "HF_HUB_OFFLINE": "1", "DATA_DIR": str(tmp_path / "d"),
                                             "FRAMEPACK_MODELS_DIR": str(tiny_models_dir), "ENGINE_DEVICE": "cpu",
                                             **env})


def test_the_doctor_passes_with_both_servers_and_fails_without(tmp_path, tiny_models_dir, postgres_url,
                                                                 s3_settings):
    done = _doctor(tmp_path, tiny_models_dir, {"DATABASE_URL": postgres_url, **storage_env(s3_settings)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "database: the PostgreSQL database" in done.stdout and "bucket: the bucket s3://" in done.stdout

    down = {"DATABASE_URL": f"postgresql://framepack:{PASSWORD}@127.0.0.1:{_closed_port()}/framepack",
            **storage_env({**s3_settings, "storage_endpoint_url": f"http://127.0.0.1:{_closed_port()}"})}
    done = _doctor(tmp_path, tiny_models_dir, down)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "database: unreachable" in done.stdout and "bucket: unreachable" in done.stdout
    assert "The bot cannot run here" in done.stdout and "cannot be used" in done.stdout
    for secret in (PASSWORD, SECRET_KEY):
        assert secret not in done.stdout + done.stderr
