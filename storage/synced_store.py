"""A JobStore whose job files follow its rows into the bucket (STORAGE_URL), so workers and frontends need no
shared disk. It wraps the SQLite or PostgreSQL store; every method it does not name passes straight through.

Where each file moves, at the row change that makes another host want it:
- enqueue: the frontend uploads the pictures or the source video it just stored, before the row is committed: a
  job any worker can see has its inputs in the bucket, and one whose inputs the bucket would not take is refused.
- check_request and enqueue_extension of a finished job: the frontend fetches that job's kept latents, which the
  rows' store checks.
- claim: the worker downloads the job's folder (inputs, the newest checkpoint, segments, latents) and, for an
  extension, its source job's work folder, renewing the lease meanwhile; a job whose inputs are not in the bucket
  goes back to the queue, and is failed once it is older than INPUTS_GRACE_SECONDS (queued by a host without
  STORAGE_URL, or its bucket lost them): it would otherwise hold the head of the queue for ever.
- report_progress with a new preview (a section finished): the worker uploads the work folder's new files, when
  the fenced write went through (a worker whose lease was taken over uploads nothing more).
- release (a stop mid-section) and complete: the work folder, then the videos, before the row says so.
- undelivered and active_jobs: a frontend gets the videos and previews at paths on its own host; while the bucket
  cannot be read it gets no jobs (a job with another host's paths would read as lost), and asks again next pass.
"""

from __future__ import annotations

import asyncio
import logging
import time

from storage.job_sync import JobSync
from storage.jobs import Enqueued, Job, JobPictures, NewJob, Progress, Unavailable
from storage.object_store import ObjectStoreError

log = logging.getLogger(__name__)

UPLOAD_PAUSES = (0.5, 2.0)  # seconds between the tries of an enqueue's upload: a bucket's passing hiccup
BUCKET_TROUBLE = ("The bot could not store your picture just now (its shared storage did not answer). Try again "
                  "in a while.")
INPUTS_GRACE_SECONDS = 120.0
INPUTS_MISSING = ("Its picture never reached the bot's shared storage, so no worker could render it. Please send it "
                  "again.")


class SyncedJobStore:
    def __init__(self, inner, job_sync: JobSync):
        self.inner = inner
        self.job_sync = job_sync  # storage/retention.py deletes the bucket's copies through it
        self._previews_sent: dict[int, str] = {}  # job id -> the preview whose section was last uploaded

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    @property
    def settings(self):
        return self.inner.settings

    @settings.setter
    def settings(self, value) -> None:
        # Limits changed on the store (the tests, a settings reload) must reach the rows' store, which reads them;
        # a plain assignment would land on this wrapper and be ignored.
        self.inner.settings = value

    # ---- frontends --------------------------------------------------------------------------------------

    async def enqueue(self, job: NewJob, pictures: bytes | JobPictures) -> Enqueued:
        return await self.inner.enqueue(job, pictures, stored=self._upload_inputs)

    async def check_request(self, job: NewJob) -> None:
        await self._fetch_extension_source(job)
        await self.inner.check_request(job)

    async def enqueue_extension(self, job: NewJob, video: bytes | None = None) -> Enqueued:
        await self._fetch_extension_source(job)
        return await self.inner.enqueue_extension(job, video, stored=self._upload_inputs)

    async def fetch_inputs(self, job_id: int) -> None:
        await self._quietly(self.job_sync.fetch_inputs, job_id, what="fetching the inputs")

    async def undelivered(self, platform: str) -> list[Job]:
        return await self._with_local_files(await self.inner.undelivered(platform))

    async def active_jobs(self, platform: str) -> list[Job]:
        return await self._with_local_files(await self.inner.active_jobs(platform))

    # ---- workers ----------------------------------------------------------------------------------------

    async def claim(self, worker: str, lease_seconds: float | None = None) -> Job | None:
        job = await self.inner.claim(worker, lease_seconds)
        if job is None:
            return None
        try:
            if not await self._download_leased(job, worker, lease_seconds or self.settings.lease_seconds):
                return None  # taken over meanwhile: the new owner has it
        except (ObjectStoreError, OSError) as error:
            log.error("%s: job %d: fetching its files failed, giving it back: %s", worker, job.id, error)
            await self.inner.release(job.id, worker, lease=job.lease)
            return None
        if not self._inputs_here(job):
            if time.time() - job.created_at > INPUTS_GRACE_SECONDS:
                await self.inner.fail(job.id, worker, INPUTS_MISSING, lease=job.lease)
                return None
            log.warning("%s: job %d: its inputs are not in the bucket yet; giving it back", worker, job.id)
            await asyncio.sleep(1.0)  # a release wakes every idle worker, this one too: not in a tight loop
            await self.inner.release(job.id, worker, lease=job.lease)
            return None
        return job

    async def _download_leased(self, job: Job, worker: str, lease_seconds: float) -> bool:
        """The claimed job's files, its lease renewed while they come (a source job's videos can take longer
        than a lease): False if another worker took the job over all the same."""
        download = asyncio.ensure_future(asyncio.to_thread(self.job_sync.download_for_claim, job))
        while not (await asyncio.wait({download}, timeout=lease_seconds / 3))[0]:
            if not await self.inner.renew(job.id, worker, lease_seconds, lease=job.lease):
                await asyncio.gather(download, return_exceptions=True)
                return False
        download.result()
        return True

    async def report_progress(self, job_id: int, worker: str, progress: Progress, lease: int | None = None) -> bool:
        wrote = await self.inner.report_progress(job_id, worker, progress, lease=lease)
        if wrote and progress.preview and self._previews_sent.get(job_id) != progress.preview:
            self._previews_sent[job_id] = progress.preview
            await self._quietly(self.job_sync.upload_work, job_id, what="uploading a section")
        return wrote

    async def release(self, job_id: int, worker: str, lease: int | None = None) -> bool:
        if await self.inner.renew(job_id, worker, lease=lease):  # still ours: its newest checkpoint goes up
            await self._quietly(self.job_sync.upload_work, job_id, what="uploading the checkpoint")
        return await self.inner.release(job_id, worker, lease=lease)

    async def complete(self, job_id: int, worker: str, video: str, fitted: dict[int, str],
                       lease: int | None = None) -> bool:
        self._previews_sent.pop(job_id, None)
        if not await self.inner.renew(job_id, worker, lease=lease):
            return False  # taken over: the new owner's files are the ones the bucket keeps
        # Raises when the bucket cannot take the video: the job stays running, its lease runs out and a worker
        # finishes it again from the bucket's checkpoint (every section done: only the join and the copies).
        await asyncio.to_thread(self.job_sync.upload_results, job_id, video, fitted)
        return await self.inner.complete(job_id, worker, video, fitted, lease=lease)

    # ---- helpers ----------------------------------------------------------------------------------------

    def _inputs_here(self, job: Job) -> bool:
        files = self.job_sync.files
        if job.extends is None:
            return files.input_path(job.id).is_file()
        if job.extends.job_id is None:
            return files.source_video_path(job.id).is_file()
        return True  # an extension of a job: the engine says so when its source is gone

    async def _fetch_extension_source(self, job: NewJob) -> None:
        # The rows' store checks that the source's kept latents exist, on this host's disk: a worker elsewhere
        # left them in the bucket.
        if job.extends is not None and job.extends.job_id is not None:
            await self._quietly(self.job_sync.fetch_kept_latents, job.extends.job_id,
                                what="fetching an extension's source")

    async def _upload_inputs(self, job_id: int) -> None:
        """Up they go before the row is committed, tried again over a passing error; Unavailable stores nothing."""
        for pause in (*UPLOAD_PAUSES, None):
            try:
                await asyncio.to_thread(self.job_sync.upload_inputs, job_id)
                return
            except (ObjectStoreError, OSError) as error:
                log.error("job %d: uploading the inputs failed%s: %s", job_id,
                          "" if pause is None else f", trying again in {pause:g} s", error)
            if pause is not None:
                await asyncio.sleep(pause)
        raise Unavailable(BUCKET_TROUBLE)

    async def _with_local_files(self, jobs: list[Job]) -> list[Job]:
        try:
            return await asyncio.to_thread(lambda: [self.job_sync.with_local_files(job) for job in jobs])
        except (ObjectStoreError, OSError) as error:
            log.warning("fetching results or previews from the bucket failed (trying again next pass): %s", error)
            return []

    async def _quietly(self, upload, job_id: int, what: str) -> None:
        """A bucket that is down for a moment must not stop the render: the next pass catches up. (An enqueue's
        upload is not quiet: _upload_inputs refuses the job instead.)"""
        try:
            await asyncio.to_thread(upload, job_id)
        except (ObjectStoreError, OSError) as error:
            log.error("job %d: %s failed: %s", job_id, what, error)


def with_object_storage(store, settings):
    """`store` itself when STORAGE_URL is unset, else `store` with its job files kept in the bucket too."""
    from storage.files import JobFiles
    from storage.object_store import open_object_store

    objects = open_object_store(settings)
    if objects is None:
        return store
    return SyncedJobStore(store, JobSync(objects, JobFiles(settings.data_dir)))
