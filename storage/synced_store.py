"""A JobStore whose job files follow its rows into the bucket (STORAGE_URL), so workers and frontends need no
shared disk. It wraps the SQLite or PostgreSQL store; every method it does not name passes straight through.

Where each file moves, at the row change that makes another host want it:
- enqueue: the frontend uploads the pictures or the source video it just stored.
- check_request and enqueue_extension of a finished job: the frontend fetches that job's kept latents, which the
  rows' store checks.
- claim: the worker downloads the job's folder (inputs, the newest checkpoint, segments, latents) and, for an
  extension, its source job's work folder; a job whose inputs are not in the bucket yet goes back to the queue.
- report_progress with a new preview (a section finished): the worker uploads the work folder's new files, when
  the fenced write went through (a worker whose lease was taken over uploads nothing more).
- release (a stop mid-section) and complete: the work folder, then the videos, before the row says so.
- undelivered and active_jobs: a frontend gets the videos and previews at paths on its own host.
"""

from __future__ import annotations

import asyncio
import logging

from storage.job_sync import JobSync
from storage.jobs import Enqueued, Job, JobPictures, NewJob, Progress
from storage.object_store import ObjectStoreError

log = logging.getLogger(__name__)


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
        enqueued = await self.inner.enqueue(job, pictures)
        await self._upload_inputs(enqueued.job_id)
        return enqueued

    async def check_request(self, job: NewJob) -> None:
        await self._fetch_extension_source(job)
        await self.inner.check_request(job)

    async def enqueue_extension(self, job: NewJob, video: bytes | None = None) -> Enqueued:
        await self._fetch_extension_source(job)
        enqueued = await self.inner.enqueue_extension(job, video)
        await self._upload_inputs(enqueued.job_id)
        return enqueued

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
            await asyncio.to_thread(self.job_sync.download_for_claim, job)
        except (ObjectStoreError, OSError) as error:
            log.error("%s: job %d: fetching its files failed, giving it back: %s", worker, job.id, error)
            await self.inner.release(job.id, worker, lease=job.lease)
            return None
        if not self._inputs_here(job):
            log.warning("%s: job %d: its inputs are not in the bucket yet; giving it back", worker, job.id)
            await self.inner.release(job.id, worker, lease=job.lease)
            return None
        return job

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
        await self._quietly(self.job_sync.upload_inputs, job_id, what="uploading the inputs")

    async def _with_local_files(self, jobs: list[Job]) -> list[Job]:
        try:
            return await asyncio.to_thread(lambda: [self.job_sync.with_local_files(job) for job in jobs])
        except (ObjectStoreError, OSError) as error:
            log.warning("fetching results or previews from the bucket failed (trying again later): %s", error)
            return jobs

    async def _quietly(self, upload, job_id: int, what: str) -> None:
        """A bucket that is down for a moment must not stop the render or the enqueue: the next pass catches up."""
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
