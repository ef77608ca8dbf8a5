"""A worker's calls to the job queue while its database is briefly away (PostgreSQL restarting, SQLite busy
past its timeout): the worker rides it out instead of failing a job or exiting.

A job's lease outlives a short outage, so the render goes on and the lease is renewed at the next call that
gets through. An outage is logged when it starts and when it ends, not at every retry.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)


class StoreOutage:
    def __init__(self, worker: str):
        self.worker = worker
        self.since: float | None = None  # monotonic time of the first failed call of this outage
        self.failures = 0  # failed calls, over the worker's life

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    async def attempt(self, call, default=None):
        """`await call`, or `default` when it raises: the worker tries again at its next turn."""
        try:
            result = await call
        except Exception as error:
            self._failed(error)
            return default
        self._through()
        return result

    async def persist(self, make_call, seconds: float, pause: float = 1.0):
        """`await make_call()` again and again until it gets through (its result), or until `seconds` have
        passed (its error raised): for a job's last word to the queue (done, failed, given back), which a
        short outage must not lose. After a lease's length another worker may own the job anyway."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                result = await make_call()
            except Exception as error:
                self._failed(error)
                if time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                continue
            self._through()
            return result

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s: the job queue cannot be reached (%s: %s); trying again", self.worker,
                        type(error).__name__, error)

    def _through(self) -> None:
        if self.since is not None:
            log.info("%s: the job queue is back after %.1f s", self.worker, time.monotonic() - self.since)
            self.since = None
