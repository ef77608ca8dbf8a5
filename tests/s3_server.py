"""A real S3 API server for the tests: moto's server mode on 127.0.0.1, spoken to over HTTP like MinIO or AWS."""

from __future__ import annotations

import itertools
import logging

import pytest

ACCESS_KEY = "AKIAFRAMEPACKTEST"
SECRET_KEY = "s3cr3t-Framepack-Test-Key-9x"  # tests look for it in logs and error texts
_buckets = itertools.count()


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3_settings(s3_endpoint) -> dict[str, str]:
    """Settings fields for a fresh, empty bucket (under a prefix, as a shared bucket would be used)."""
    import boto3

    bucket = f"framepack-test-{next(_buckets)}"
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    return dict(storage_url=f"s3://{bucket}/bot", storage_endpoint_url=s3_endpoint, storage_region="us-east-1",
                storage_access_key_id=ACCESS_KEY, storage_secret_access_key=SECRET_KEY)


@pytest.fixture(scope="session")
def e2e_bucket(s3_endpoint) -> str:
    """One bucket for the session's postgres-s3 run; each test gets its own prefix in it."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                 region_name="us-east-1").create_bucket(Bucket="framepack-e2e")
    return "framepack-e2e"


def storage_env(fields: dict[str, str]) -> dict[str, str]:
    """The same settings as environment variables, for a worker process."""
    return {name.upper(): value for name, value in fields.items()}
