"""Waiting for the queue to change, whichever backend: PostgreSQL wakes at once (LISTEN/NOTIFY), SQLite polls."""

from __future__ import annotations

import asyncio


async def wait_for_work(store, timeout: float) -> bool:
    """Until a job may be claimable (True) or `timeout` seconds passed (False); an idle worker claims after it."""
    wait = getattr(store, "wait_for_work", None)
    if wait is None:  # a store without notifications: the timeout is the poll interval
        await asyncio.sleep(timeout)
        return False
    return await wait(timeout)


async def wait_for_changes(store, timeout: float) -> bool:
    """Until any job changed (True) or `timeout` seconds passed (False); a frontend's watcher looks after it."""
    wait = getattr(store, "wait_for_changes", None)
    if wait is None:
        await asyncio.sleep(timeout)
        return False
    return await wait(timeout)
