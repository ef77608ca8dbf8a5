"""Passwords in connection URLs, found as libpq finds them: masked for people, redacted from every log line."""

from __future__ import annotations

import logging

import pytest

from storage.log_setup import RedactingFilter, secrets_of
from storage.postgres_connect import safe_url, unreachable
from storage.settings import Settings
from storage.url_secrets import bad_hosts, masked_url, url_passwords

CASES = [  # (url, as a person sees it, the passwords)
    ("postgresql://bob:hunter2@db:5432/fp", "postgresql://bob:***@db:5432/fp", ["hunter2"]),
    ("postgresql://bob@db/fp?sslmode=require&password=hunter2", "postgresql://bob@db/fp?sslmode=require&password=***",
     ["hunter2"]),
    ("postgresql://bob:hunt#er2@db/fp", "postgresql://bob:***@db/fp", ["hunt#er2"]),  # urllib stops at the '#'
    ("postgresql://bob:hunt%40er2@[::1]:5432/fp", "postgresql://bob:***@[::1]:5432/fp", ["hunt%40er2", "hunt@er2"]),
    ("postgresql://db/fp", "postgresql://db/fp", []),
    ("postgresql:///fp?host=/var/run/postgresql", "postgresql:///fp?host=/var/run/postgresql", []),
    ("s3://AKIAX:hunter2@bucket/prefix", "s3://AKIAX:***@bucket/prefix", ["hunter2"]),
]


@pytest.mark.parametrize(("url", "shown", "passwords"), CASES)
def test_every_password_in_a_url_is_masked_and_found(url, shown, passwords):
    assert masked_url(url) == safe_url(url) == shown
    assert sorted(url_passwords(url)) == sorted(passwords)


@pytest.mark.parametrize(("url", "problem"), [
    ("postgresql://bob:pw@db:5432/fp", None), ("postgresql://db1:5432,db2,[::1]:5433/fp", None),
    ("postgresql://bob:pw@db:notaport/fp", "port"), ("postgresql://db:0/fp", "port"),
    ("postgresql://db:65536/fp", "port"), ("postgresql://[::1:5432/fp", "IPv6"),
])
def test_the_host_list_of_a_database_url_is_checked(url, problem):
    found = bad_hosts(url)
    assert (found is None) if problem is None else (problem in found)


def test_a_refused_connection_and_the_logs_show_no_password_however_it_was_given():
    for url, password in [("postgresql://bob@db/fp?password=hunter2xyz", "hunter2xyz"),
                          ("postgresql://bob:hunter2#xyz@db/fp", "hunter2#xyz")]:
        error = unreachable(url, OSError(f'connection to "{url}" failed: password {password} rejected'))
        assert "hunter2" not in str(error)
        record = logging.LogRecord("psycopg", logging.ERROR, __file__, 1, "connecting to %s", (url,), None)
        RedactingFilter(secrets_of(Settings(database_url=url))).filter(record)
        assert "hunter2" not in logging.Formatter().format(record)
