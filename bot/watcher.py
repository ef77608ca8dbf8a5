"""The loop every frontend runs: edit progress messages (throttled) and deliver finished jobs.

A frontend supplies three coroutines; this loop decides when to call them, from storage alone, so it
picks up where it left off after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot import texts
from storage.jobs import Job
from storage.store import JobStore

log = logging.getLogger(__name__)


@dataclass
class Frontend:
    platform: str
    # (job, status text, newest preview GIF path or None) -> None
    show_progress: Callable[[Job, str, str | None], Awaitable[None]]
    # (job) -> None; must raise to keep the job undelivered (it is retried)
    deliver: Callable[[Job], Awaitable[None]]
    min_edit_seconds: Callable[[Job], float]


class Watcher:
    def __init__(self, store: JobStore, frontend: Frontend, poll_seconds: float = 1.0):
        self.store = store
        self.frontend = frontend
        self.poll = poll_seconds
        self.shown: dict[int, tuple[str, str | None]] = {}
        self.last_edit: dict[str, float] = {}  # per chat: platforms rate-limit edits per chat

    async def tick(self) -> None:
        positions = await self.store.positions()  # one pass for every job, not one per job
        for job in await self.store.active_jobs(self.frontend.platform):
            if job.status_message is None or job.id not in positions:
                continue
            position, eta = positions[job.id]
            text = texts.progress(job, eta) if position == 0 else texts.queued(job.id, position, eta)
            preview = job.progress.preview
            if self.shown.get(job.id) == (text, preview):
                continue
            new_preview = preview != (self.shown.get(job.id) or (None, None))[1]
            # A chat not edited yet is never throttled (the monotonic clock may be younger than the interval).
            last = self.last_edit.get(job.chat_id)
            if not new_preview and last is not None and time.monotonic() - last < self.frontend.min_edit_seconds(job):
                continue
            try:
                await self.frontend.show_progress(job, text, preview)
            except Exception:  # a deleted message or a flaky network must not stop the loop
                log.exception("progress update for job %d failed", job.id)
            self.shown[job.id] = (text, preview)
            self.last_edit[job.chat_id] = time.monotonic()
        for job in await self.store.undelivered(self.frontend.platform):
            try:
                await self.frontend.deliver(job)
            except Exception:
                log.exception("delivery of job %d failed; retrying later", job.id)
                continue
            await self.store.mark_delivered(job.id)
            self.shown.pop(job.id, None)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("watcher tick failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.poll)
