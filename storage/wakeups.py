"""Waiting for the queue to change, whichever backend: PostgreSQL wakes at once (LISTEN/NOTIFY), SQLite polls."""

from __future__ import annotations

import asyncio


async def poll(timeout: float) -> bool:
    """The wait of a store that hears of no change (SQLite: other processes write the file): the whole timeout,
    which is then the poll interval. Always False: nothing was heard."""
    await asyncio.sleep(timeout)
    return False


async def wait_for_work(store, timeout: float) -> bool:
    """Until a job may be claimable (True) or `timeout` seconds passed (False); an idle worker claims after it."""
    wait = getattr(store, "wait_for_work", None)
    return await (wait(timeout) if wait is not None else poll(timeout))  # a test's stand-in store may have none


async def wait_for_changes(store, timeout: float) -> bool:
    """Until any job changed (True) or `timeout` seconds passed (False); a frontend's watcher looks after it."""
    wait = getattr(store, "wait_for_changes", None)
    return await (wait(timeout) if wait is not None else poll(timeout))
