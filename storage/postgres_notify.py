"""LISTEN/NOTIFY: an idle worker wakes when a job can be claimed, a frontend's watcher when a job changed.

The store sends a NOTIFY inside the transaction that makes the change, so it arrives only once that change is
committed. A notification can still be missed (the listening connection dropped, a lease that ran out sends
none), so every wait has a timeout and the caller looks at the queue after it anyway: notifications make the
wait short, the timeout keeps it correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from storage.postgres_connect import connect

log = logging.getLogger(__name__)

WORK_CHANNEL = "framepack_work"  # a job can be claimed: it was queued or given back
JOBS_CHANNEL = "framepack_jobs"  # a job changed (claimed, progress, finished, cancelled); payload: its id
RECONNECT_PAUSE_SECONDS = (0.5, 30.0)  # the first pause after a lost listening connection, and the longest


class Listener:
    """Listens on its own connection, started by the first wait. One claim loop per store waits for work: a
    wake-up that came while it was busy is kept for its next wait. Any number of watchers wait for changes."""

    def __init__(self, url: str):
        self.url = url
        self._task: asyncio.Task | None = None
        self._listening = asyncio.Event()
        self._work = asyncio.Event()
        self._changed = asyncio.Event()

    async def start(self, timeout: float | None = None) -> bool:
        """Start listening (once); True when LISTEN is in place within `timeout`."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="postgres-listener")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout)
        return self._listening.is_set()

    async def wait_for_work(self, timeout: float) -> bool:
        """True as soon as a job may be claimable (at once if one became so since the last wait), False after
        `timeout` seconds without."""
        await self.start(timeout=0)
        if not self._work.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._work.wait(), timeout)
        woke = self._work.is_set()
        self._work.clear()
        return woke

    async def wait_for_changes(self, timeout: float) -> bool:
        """True as soon as any job changes, False after `timeout` seconds without."""
        await self.start(timeout=0)
        changed = self._changed
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)
        return changed.is_set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _wake(self, channel: str) -> None:
        if channel == WORK_CHANNEL:
            self._work.set()
        elif channel == JOBS_CHANNEL:
            # Every watcher waiting now wakes; the next ones wait on a fresh event.
            self._changed.set()
            self._changed = asyncio.Event()

    async def _listen(self) -> None:
        pause, reconnecting = RECONNECT_PAUSE_SECONDS[0], False
        while True:
            try:
                conn = await connect(self.url)
                async with conn:
                    for channel in (WORK_CHANNEL, JOBS_CHANNEL):
                        await conn.execute(f"LISTEN {channel}")
                    self._listening.set()
                    pause = RECONNECT_PAUSE_SECONDS[0]
                    if reconnecting:  # anything may have happened while not listening: wake everyone to look
                        self._wake(WORK_CHANNEL)
                        self._wake(JOBS_CHANNEL)
                    async for note in conn.notifies():
                        self._wake(note.channel)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the connection dropped or could not be made: waits fall back to timeouts
                log.warning("not listening for job notifications (%s); trying again in %.0f s", error, pause)
            self._listening.clear()
            reconnecting = True
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECONNECT_PAUSE_SECONDS[1])
