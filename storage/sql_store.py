"""The job queue's logic, written once over SQL for both backends: limits and quotas, enqueue, reading, positions
and ETAs, delivery, retention and cancel. The workers' side is WorkerSide (storage/sql_claims.py).

A backend (storage/sqlite_store.py, storage/postgres_store.py) opens the database and gives its connections, its
dialect (storage/sql_dialect.py) and what it does to settle races: SQLite takes its one write lock up front,
PostgreSQL locks rows (and a person's enqueues, _lock_person) and sends NOTIFY.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from storage.extension_rules import check_extension_source
from storage.files import JobFiles, write_durably
from storage.job_rows import JOB_COLUMNS, extends_from_row, job_from_row
from storage.jobs import MAX_JOB_ID, Enqueued, Extends, Job, JobPictures, JobState, NewJob, QueueFull, Unavailable
from storage.limits import LIMIT_NAMES, Limits, parse_limit
from storage.queue_estimates import positions as estimate_positions
from storage.request_checks import check_pictures, check_pictures_match, check_request, storage_trouble
from storage.settings import Settings
from storage.sql_claims import WorkerSide
from storage.sql_dialect import ACTIVE, FINISHED, NOW, Session, placeholders
from storage.uploaded_videos import VideoLimits, check_video_bytes

log = logging.getLogger(__name__)

# A delivery that failed for a passing reason waits this long before the next try, doubling up to the cap.
DELIVERY_RETRY_FIRST, DELIVERY_RETRY_MAX = 5.0, 3600.0
StoredHook = Callable[[int], Awaitable[None]]  # run with the new job's id before its row is committed
_IDS_PER_STATEMENT = 500  # mark_files_removed: well under either database's limit on arguments


class SqlJobStore(WorkerSide):
    """The JobStore (storage/store.py) but for opening, closing and waiting for changes, which each backend adds."""

    def __init__(self, settings: Settings, files: JobFiles):
        super().__init__(settings)
        self.files = files

    async def _lock_person(self, session: Session, job: NewJob) -> None:
        """Hold off the person's other enqueues until the transaction ends, so that two at once cannot both pass
        the quota. SQLite's write lock already does."""

    # ----- limits ---------------------------------------------------------------------------------

    async def get_limits(self) -> Limits:
        limits = self.settings.starting_limits()
        for name, value in await self._all("SELECT name, value FROM limits"):
            if name in LIMIT_NAMES:
                decoded = json.loads(value)
                limits = limits.with_value(name, tuple(decoded) if isinstance(decoded, list) else decoded)
        return limits

    async def set_limit(self, name: str, raw: str, changed_by: str) -> Limits:
        """Parse and store one limit; raises InputError with the reason for a bad name or value."""
        name, value = parse_limit(name, str(raw))
        async with self._write() as session:
            await session.execute(
                f"INSERT INTO limits (name, value, changed_by, changed_at) VALUES (?, ?, ?, {NOW}) "
                "ON CONFLICT (name) DO UPDATE SET value=excluded.value, changed_by=excluded.changed_by, "
                "changed_at=excluded.changed_at",
                (name, json.dumps(value), changed_by),
            )
        log.info("limit %s set to %r by %s", name, value, changed_by)
        return await self.get_limits()

    async def limit_changes(self) -> dict[str, tuple[str | None, float]]:
        """Who last changed each limit, and when."""
        rows = await self._all("SELECT name, changed_by, changed_at FROM limits")
        return {name: (by, at) for name, by, at in rows}

    # ----- enqueue --------------------------------------------------------------------------------

    async def _check_quota(self, session: Session, job: NewJob, limits: Limits) -> None:
        (waiting,) = await session.one(
            f"SELECT COUNT(*) FROM jobs WHERE platform=? AND user_id=? AND state IN {ACTIVE}",
            (job.platform, job.user_id),
        )
        if limits.max_queued_per_user == 0:
            raise QueueFull("The bot takes no new videos right now (its admins paused it). Try again later.")
        if waiting >= limits.max_queued_per_user:
            raise QueueFull(
                f"You already have {waiting} video(s) waiting; the limit is {limits.max_queued_per_user}. "
                "Wait for one to finish or cancel one."
            )

    async def check_request(self, job: NewJob) -> None:
        """Everything enqueue checks except the picture: lets a frontend refuse before it downloads anything."""
        limits = await self.get_limits()
        check_request(job, limits, self.settings)
        if job.extends is not None and job.extends.job_id is not None:
            await self._check_source(job)
        async with self._read() as session:
            await self._check_quota(session, job, limits)

    async def enqueue(self, job: NewJob, pictures: bytes | JobPictures, stored: StoredHook | None = None) -> Enqueued:
        """Store the request and its pictures in one transaction; returns the job id and its position.

        `pictures` is the start picture's bytes, or a JobPictures with the end picture and keyframes that
        `job.guides` names. Raises InputError for a request over the limits or a picture that does not
        decode, and QueueFull over the person's quota; nothing is stored then. `stored(job_id)` runs once the
        files are written, before the row is committed: it may raise Unavailable to store nothing.
        """
        if job.extends is not None:
            raise ValueError("an extension job is queued with enqueue_extension")
        if isinstance(pictures, bytes):
            pictures = JobPictures(pictures)
        limits = await self.get_limits()
        check_request(job, limits, self.settings)
        check_pictures_match(job.guides, pictures)
        # The frontends check the pictures first; checking again here means nothing unreadable is ever stored.
        await asyncio.to_thread(check_pictures, job.guides, pictures, limits)
        async with self._write() as session:
            await self._lock_person(session, job)
            await self._check_quota(session, job, limits)
            job_id = await self._insert(session, job)
            # Inside the transaction: if a file cannot be written, no row is committed.
            try:
                await asyncio.to_thread(self.files.write_pictures, job_id, pictures)
            except OSError as error:
                log.error("job %d: could not store the pictures: %s", job_id, error)
                raise Unavailable(storage_trouble(error)) from None
            if stored is not None:
                await stored(job_id)
        return await self._queued(job, job_id)

    async def enqueue_extension(self, job: NewJob, video: bytes | None = None,
                                stored: StoredHook | None = None) -> Enqueued:
        """Store an extension request (`job.extends` names its source) and, for a video a person sent, its
        bytes; returns the job id and its position. The source job must be finished, this person's or shown in
        this chat, and still stored; the video passes storage/uploaded_videos.py's checks. Raises InputError,
        QueueFull or Unavailable as enqueue does; nothing is stored then. `stored` as for enqueue."""
        if job.extends is None or (video is not None) != job.extends.from_video:
            raise ValueError("an uploaded video goes with an extension of a video, and only there")
        limits = await self.get_limits()
        check_request(job, limits, self.settings)
        if job.extends.job_id is not None:
            await self._check_source(job)
        if video is not None:
            await asyncio.to_thread(check_video_bytes, video, VideoLimits.from_settings(self.settings),
                                    self.files.root.parent / "tmp")
        async with self._write() as session:
            await self._lock_person(session, job)
            await self._check_quota(session, job, limits)
            if job.extends.job_id is not None:  # the retention cleanup may have run since the check above
                await self._check_source(job)
            job_id = await self._insert(session, job)
            try:
                if video is not None:
                    await asyncio.to_thread(write_durably, self.files.source_video_path(job_id), video)
            except OSError as error:
                log.error("job %d: could not store the video: %s", job_id, error)
                raise Unavailable(storage_trouble(error)) from None
            if stored is not None:
                await stored(job_id)
        return await self._queued(job, job_id)

    async def _check_source(self, job: NewJob) -> None:
        source = await self.get(job.extends.job_id)
        check_extension_source(job, source, self.files, self.settings.result_retention_days, time.time())

    async def _insert(self, session: Session, job: NewJob) -> int:
        guides = json.dumps(asdict(job.guides)) if job.guides.any else None
        extends = job.extends or Extends()
        job_id = await self.dialect.insert_returning_id(
            session,
            "INSERT INTO jobs (platform, chat_id, reply_to, user_id, user_name, prompt, params, state, "
            "created_at, guild_id, guides, extends_job, extends_video) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', {NOW}, ?, ?, ?, ?)",
            (job.platform, job.chat_id, job.reply_to, job.user_id, job.user_name, job.prompt,
             json.dumps(asdict(job.params)), job.guild_id, guides, extends.job_id, extends.video_name),
        )
        await self._work_available(session)  # told when the transaction commits, not before
        return job_id

    async def _queued(self, job: NewJob, job_id: int) -> Enqueued:
        position, eta = await self.position(job_id)
        log.info("job %d queued for %s:%s at position %d%s", job_id, job.platform, job.user_id, position,
                 f" (extends {job.extends})" if job.extends else "")
        return Enqueued(job_id, position, eta)

    # ----- reading --------------------------------------------------------------------------------

    async def queue_length(self) -> int:
        (count,) = await self._one("SELECT COUNT(*) FROM jobs WHERE state='queued'")
        return count

    async def user_jobs(self, platform: str, user_id: str, include_finished: bool = False) -> list[Job]:
        states = "" if include_finished else f"AND state IN {ACTIVE}"
        rows = await self._all(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE platform=? AND user_id=? {states} ORDER BY id",
            (platform, user_id),
        )
        return [job_from_row(r) for r in rows]

    async def active_jobs(self, platform: str) -> list[Job]:
        rows = await self._all(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE platform=? AND state IN {ACTIVE} ORDER BY id", (platform,)
        )
        return [job_from_row(r) for r in rows]

    async def is_cancel_requested(self, job_id: int) -> bool:
        row = await self._one("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,))
        return bool(row and row[0])

    # ----- delivery -------------------------------------------------------------------------------

    async def undelivered(self, platform: str) -> list[Job]:
        """Finished jobs (done, failed, cancelled) whose result the frontend has not yet posted and may try
        now: one whose last try failed for a passing reason waits out its pause first."""
        rows = await self._all(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE platform=? AND NOT delivered AND state IN {FINISHED} "
            f"AND (next_delivery_at IS NULL OR next_delivery_at <= {NOW}) "
            f"AND (delivery_claim_expires_at IS NULL OR delivery_claim_expires_at < {NOW}) ORDER BY id",
            (platform,),
        )
        return [job_from_row(r) for r in rows]

    async def claim_delivery(self, job_id: int, process: str, seconds: float) -> bool:
        """Take the job's delivery for `seconds` (again: keep it) before posting; False when it was delivered
        meanwhile or another frontend process holds it. Several processes of one bot post each video once."""
        async with self._write() as session:
            cursor = await session.execute(
                f"UPDATE jobs SET delivery_claimed_by=?, delivery_claim_expires_at={NOW} + ? WHERE id=? "
                f"AND NOT delivered AND state IN {FINISHED} AND (delivery_claimed_by IS NULL "
                f"OR delivery_claimed_by=? OR delivery_claim_expires_at < {NOW})",
                (process, seconds, job_id, process),
            )
            return cursor.rowcount == 1

    async def mark_delivered(self, job_id: int) -> None:
        async with self._write() as session:
            await session.execute("UPDATE jobs SET delivered=TRUE, delivery_claimed_by=NULL, "
                                  "delivery_claim_expires_at=NULL WHERE id=?", (job_id,))

    async def delivery_failed(self, job_id: int, reason: str, permanent: bool) -> float | None:
        """Record a failed delivery. Permanent (the person blocked the bot, the file is gone): never tried
        again, the reason kept. Otherwise tried again after a pause that doubles each time; returns it."""
        async with self._write() as session:
            if permanent:
                await session.execute("UPDATE jobs SET delivered=TRUE, delivery_error=?, delivery_claimed_by=NULL, "
                                      "delivery_claim_expires_at=NULL WHERE id=?", (reason[:500], job_id))
                return None
            (attempts,) = await session.one(
                "SELECT delivery_attempts FROM jobs WHERE id=?" + self.dialect.for_update(), (job_id,))
            pause = min(DELIVERY_RETRY_FIRST * 2 ** min(attempts, 30), DELIVERY_RETRY_MAX)  # 2**1024 is no float
            await session.execute(  # the claim goes: the next try may come from any frontend process
                f"UPDATE jobs SET delivery_attempts=delivery_attempts+1, next_delivery_at={NOW} + ?, "
                "delivery_claimed_by=NULL, delivery_claim_expires_at=NULL WHERE id=?",
                (pause, job_id),
            )
            return pause

    async def set_status_message(self, job_id: int, message_id: str | None) -> None:
        async with self._write() as session:
            await session.execute("UPDATE jobs SET status_message=? WHERE id=?", (message_id, job_id))

    async def move_chat(self, platform: str, old_chat_id: str, new_chat_id: str) -> int:
        """Every job of a chat that changed its id (a Telegram group upgraded to a supergroup) now in the new one;
        returns how many."""
        async with self._write() as session:
            ids = [row[0] for row in await session.all(
                "SELECT id FROM jobs WHERE platform=? AND chat_id=?", (platform, old_chat_id))]
            for job_id in ids:
                await session.execute("UPDATE jobs SET chat_id=? WHERE id=?", (new_chat_id, job_id))
                await self._job_changed(session, job_id)
        log.info("%s chat %s became %s: %d job(s) moved", platform, old_chat_id, new_chat_id, len(ids))
        return len(ids)

    # ----- retention ------------------------------------------------------------------------------

    async def expired_jobs(self, finished_before: float) -> list[int]:
        """Ids of the jobs whose folders may go: finished (done, failed, cancelled) before `finished_before`,
        their delivery over (delivered, or given up), and their folder not yet removed. A queued or running job,
        or a finished one still to be delivered, is never among them; nor is the source of an extension that is
        queued or running (it reads the source's kept latents when it starts, or again when it resumes)."""
        rows = await self._all(
            f"SELECT id FROM jobs WHERE state IN {FINISHED} AND delivered AND finished_at IS NOT NULL "
            "AND finished_at < ? AND files_removed_at IS NULL "
            f"AND id NOT IN (SELECT extends_job FROM jobs WHERE extends_job IS NOT NULL AND state IN {ACTIVE}) "
            "ORDER BY id",
            (finished_before,),
        )
        return [job_id for (job_id,) in rows]

    async def mark_files_removed(self, job_ids: list[int]) -> None:
        """Record that these finished jobs' folders are gone; their rows stay (history, /info)."""
        if not job_ids:
            return
        async with self._write() as session:
            for start in range(0, len(job_ids), _IDS_PER_STATEMENT):
                chunk = list(job_ids[start:start + _IDS_PER_STATEMENT])
                await session.execute(
                    f"UPDATE jobs SET files_removed_at={NOW} WHERE id IN {placeholders(len(chunk))} "
                    f"AND state IN {FINISHED}",
                    chunk,
                )

    # ----- order, position, ETA -------------------------------------------------------------------

    async def positions(self) -> dict[int, tuple[int, float]]:
        """(position, seconds until done) of every queued and running job: position 0 is rendering now."""
        speed, workers = await self.speed()
        running = await self._all(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state='running'")
        queued = await self._all(
            f"SELECT o.id, o.params, o.extends_job, o.extends_video FROM ({self._order_sql()}) AS o "
            "ORDER BY o.turn, o.id"
        )
        queued = [(job_id, params, extends_from_row(job, video)) for job_id, params, job, video in queued]
        return estimate_positions([job_from_row(r) for r in running], queued, speed, workers)

    async def position(self, job_id: int) -> tuple[int, float]:
        """(position, seconds until done) of one job; (0, 0) once it has finished."""
        if await self.get(job_id) is None:
            raise KeyError(job_id)
        return (await self.positions()).get(job_id, (0, 0.0))

    # ----- notices for the admins -----------------------------------------------------------------

    async def fetch_inputs(self, job_id: int) -> None:
        """The data folder is this host's: the inputs are here or gone (storage/synced_store.py fetches)."""

    async def claim_notice(self, key: str) -> bool:
        """True the first time `key` is claimed, ever: what admins are told once, across restarts too."""
        async with self._write() as session:
            cursor = await session.execute(
                f"INSERT INTO notices (key, sent_at) VALUES (?, {NOW}) ON CONFLICT (key) DO NOTHING", (key,)
            )
            return cursor.rowcount == 1

    async def release_notice(self, key: str) -> None:
        """A claimed notice that could not be sent: the next look claims it again."""
        async with self._write() as session:
            await session.execute("DELETE FROM notices WHERE key=?", (key,))

    # ----- cancel ---------------------------------------------------------------------------------

    async def cancel(self, job_id: int, platform: str, user_id: str, is_admin: bool = False,
                     moderated_guild: str | None = None) -> str:
        """Cancel for a person: 'cancelled' (was waiting), 'stopping' (its worker stops within a step),
        'finished' (too late), 'not_found', or 'not_allowed'. The owner and the bot's admins (`is_admin`)
        may cancel; a server's moderator (`moderated_guild`) only the jobs that came from that server."""
        if not 1 <= job_id <= MAX_JOB_ID:
            return "not_found"
        async with self._write() as session:
            row = await session.one(
                "SELECT platform, user_id, state, guild_id FROM jobs WHERE id=?" + self.dialect.for_update(),
                (job_id,),
            )
            if row is None or row[0] != platform:
                return "not_found"
            moderates = moderated_guild is not None and row[3] == moderated_guild
            if row[1] != user_id and not is_admin and not moderates:
                return "not_allowed"
            state = JobState(row[2])
            if state.finished:
                return "finished"
            await self._job_changed(session, job_id)
            if state is JobState.QUEUED:
                await session.execute(
                    f"UPDATE jobs SET state='cancelled', cancel_requested=TRUE, finished_at={NOW} WHERE id=?",
                    (job_id,),
                )
                log.info("job %d cancelled while queued", job_id)
                return "cancelled"
            await session.execute("UPDATE jobs SET cancel_requested=TRUE WHERE id=?", (job_id,))
            log.info("job %d: cancel requested while running", job_id)
            return "stopping"
