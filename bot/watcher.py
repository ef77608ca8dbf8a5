"""The loop every frontend runs: edit progress messages (throttled), deliver finished jobs, tell the
admins when a worker cannot render.

A frontend supplies a few coroutines; this loop decides when to call them, from storage alone, so it
picks up where it left off after a restart. A delivery that fails for good (the person blocked the
bot, the chat is gone, the file is gone) is recorded and not tried again; one that fails for a passing
reason is tried again after a pause that doubles, up to an hour, and never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot import texts
from storage.jobs import Job
from storage.store import JobStore
from storage.wakeups import wait_for_changes

log = logging.getLogger(__name__)

MIN_TICK_SECONDS = 0.2
# A frontend process holds a delivery this long, renewed while it posts; a process that died holds it no longer.
DELIVERY_CLAIM_SECONDS = 60.0


class Undeliverable(Exception):
    """Raised by a frontend when a job's result can never reach its person; the message says why."""


def _never_permanent(error: Exception) -> bool:
    return False


@dataclass
class Frontend:
    platform: str
    # (job, status text, newest preview GIF path or None) -> False when it did not try (the platform asked for a
    # pause in that chat): the same progress is offered again on the next tick
    show_progress: Callable[[Job, str, str | None], Awaitable[bool | None]]
    # (job) -> None; raises to keep the job undelivered (tried again) or Undeliverable (given up)
    deliver: Callable[[Job], Awaitable[None]]
    min_edit_seconds: Callable[[Job], float]
    # (text) -> None: a message to the bot's admins; None when the platform has none configured
    notify_admins: Callable[[str], Awaitable[None]] | None = None
    # Errors of this platform's library that will not go away by trying again (blocked, chat not found)
    is_permanent: Callable[[Exception], bool] = _never_permanent


def _reason(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


# How long a stopping frontend lets the delivery it is in finish (an upload of a video up to the chat's limit).
# Cut short between the post and its mark, the delivery claim holds the job for a minute and another process
# then posts the video a second time.
STOP_GRACE_SECONDS = 60.0


def process_name() -> str:
    """This frontend process among all those of the bot (several hosts, restarts): whose delivery claims are whose."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Watcher:
    def __init__(self, store: JobStore, frontend: Frontend, poll_seconds: float = 1.0, process: str | None = None):
        self.store = store
        self.frontend = frontend
        self.poll = poll_seconds
        self.process = process or process_name()
        self.stopping = asyncio.Event()  # set by run()'s `stop`: a batch of deliveries ends after the current one
        self.shown: dict[int, tuple[str, str | None]] = {}
        self.last_edit: dict[str, float] = {}  # per chat: platforms rate-limit edits per chat

    def _permanent(self, error: Exception) -> bool:
        return isinstance(error, (Undeliverable, FileNotFoundError)) or self.frontend.is_permanent(error)

    async def tick(self) -> None:
        await self._show_progress()
        await self._deliver()
        await self._tell_admins()

    async def _show_progress(self) -> None:
        positions = await self.store.positions()  # one pass for every job, not one per job
        note = texts.waiting_note(await self.store.worker_status())
        for job in await self.store.active_jobs(self.frontend.platform):
            if job.status_message is None or job.id not in positions:
                continue
            position, eta = positions[job.id]
            text = texts.progress(job, eta) if position == 0 else texts.queued(job.id, position, eta)
            if note and position > 0:
                text += "\n" + note
            preview = job.progress.preview
            if self.shown.get(job.id) == (text, preview):
                continue
            new_preview = preview != (self.shown.get(job.id) or (None, None))[1]
            # A chat not edited yet is never throttled (the monotonic clock may be younger than the interval).
            last = self.last_edit.get(job.chat_id)
            if not new_preview and last is not None and time.monotonic() - last < self.frontend.min_edit_seconds(job):
                continue
            try:
                if await self.frontend.show_progress(job, text, preview) is False:
                    continue
            except Exception as error:  # a deleted message or a flaky network must not stop the loop
                # e.g. blocked: stop editing; the result is still tried at the end. A preview file not found
                # is not that: the next section's comes.
                if self._permanent(error) and not isinstance(error, FileNotFoundError):
                    log.warning("job %d: progress can no longer be shown (%s)", job.id, _reason(error))
                    await self.store.set_status_message(job.id, None)
                else:
                    log.warning("job %d: progress update failed (%s)", job.id, _reason(error))
            self.shown[job.id] = (text, preview)
            self.last_edit[job.chat_id] = time.monotonic()

    async def _deliver(self) -> None:
        """Post each finished job once, whichever of the bot's frontend processes gets there first: a job is
        claimed before it is posted and marked delivered after. A process that dies between the platform
        accepting the post and the mark leaves the one case of a second post (by another process, once the claim
        ran out): one job per dead process, in a window of one HTTP answer and one UPDATE."""
        for job in await self.store.undelivered(self.frontend.platform):
            if self.stopping.is_set():
                return
            if not await self.store.claim_delivery(job.id, self.process, DELIVERY_CLAIM_SECONDS):
                continue  # another process is delivering it, or has delivered it since the list was read
            try:
                async with self._claim_kept(job):
                    await self.frontend.deliver(job)
            except Exception as error:
                await self._delivery_failed(job, error)
                continue
            await self.store.mark_delivered(job.id)
            self.shown.pop(job.id, None)

    @contextlib.asynccontextmanager
    async def _claim_kept(self, job: Job):
        """The delivery claim renewed while the body posts: an upload that waits out flood control is not
        mistaken for a dead process's."""
        async def keep() -> None:
            while True:
                await asyncio.sleep(DELIVERY_CLAIM_SECONDS / 3)
                if not await self.store.claim_delivery(job.id, self.process, DELIVERY_CLAIM_SECONDS):
                    log.warning("job %d: the delivery claim was lost while posting", job.id)

        keeping = asyncio.ensure_future(keep())
        try:
            yield
        finally:
            keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeping

    async def _delivery_failed(self, job: Job, error: Exception) -> None:
        reason = _reason(error)
        if self._permanent(error):
            await self.store.delivery_failed(job.id, reason, permanent=True)
            log.warning("job %d cannot be delivered (%s); given up, the reason is kept", job.id, reason)
            self.shown.pop(job.id, None)
            return
        pause = await self.store.delivery_failed(job.id, reason, permanent=False)
        if job.delivery_attempts == 0 and not isinstance(error, (OSError, asyncio.TimeoutError)):
            log.warning("delivery of job %d failed", job.id, exc_info=error)  # the first time, with its stack
        log.warning("delivery of job %d failed (%s); trying again in %.0f s", job.id, reason, pause)

    async def _tell_admins(self) -> None:
        """Each time a worker meets a problem (since it began: a problem that comes back after it was mended is
        told again), once per platform, even across restarts; a notice no admin could be sent is tried again."""
        if self.frontend.notify_admins is None:
            return
        for worker, problem, since in await self.store.worker_problems():
            key = f"{self.frontend.platform}:{worker}:{problem}:{since:.3f}"
            if not await self.store.claim_notice(key):
                continue
            try:
                await self.frontend.notify_admins(texts.worker_problem(worker, problem))
            except Exception as error:
                log.warning("could not tell the admins about worker %s (%s); trying again", worker, _reason(error))
                await self.store.release_notice(key)

    async def run(self, stop: asyncio.Event) -> None:
        self.stopping = stop
        while not stop.is_set():
            ticked = time.monotonic()
            try:
                await self.tick()
            except Exception:
                log.exception("watcher tick failed")
            await self._wait(stop, ticked)

    async def _wait(self, stop: asyncio.Event, ticked: float) -> None:
        """Until a job changed (at once on PostgreSQL, every `poll` seconds on SQLite) or `stop`; ticks stay
        MIN_TICK_SECONDS apart, so a busy queue's stream of step notifications does not become a stream of queries."""
        changed = asyncio.ensure_future(wait_for_changes(self.store, self.poll))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({changed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in (changed, stopped):
                waiting.cancel()
        rest = MIN_TICK_SECONDS - (time.monotonic() - ticked)
        if rest > 0 and not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=rest)
