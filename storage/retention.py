"""RESULT_RETENTION_DAYS: deleting the folders of finished, delivered jobs once they are old enough.

A job's folder (its pictures, the work folder with checkpoints, latents, segments, previews and the
continuation.pt an Extend starts from, the video and its upload copies) is the disk's main tenant; with
STORAGE_URL its copies in the bucket go too. The row
stays: the history and /info still find the job, and `files_removed_at` says its files are gone, so what
reads them later (a re-roll, /info's "Animate again") answers that they are no longer stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from storage.files import JobFiles
from storage.object_store import ObjectStoreError

log = logging.getLogger(__name__)

DAY_SECONDS = 86_400.0


class ExpiringJobs(Protocol):
    """The part of the JobStore (storage/store.py) the cleanup uses; the stores' own checks use this module's
    cutoff, so it names only these two rather than importing the store."""

    async def expired_jobs(self, finished_before: float) -> list[int]: ...
    async def mark_files_removed(self, job_ids: list[int]) -> None: ...


def expiry_cutoff(retention_days: float, now: float) -> float | None:
    """Jobs finished before this time are due for deletion; None where RESULT_RETENTION_DAYS keeps everything."""
    return now - retention_days * DAY_SECONDS if retention_days > 0 else None


async def remove_expired(store: ExpiringJobs, files: JobFiles, retention_days: float,
                         now: float | None = None) -> list[int]:
    """Delete the folders of the jobs finished more than `retention_days` ago whose delivery is over, and mark
    them; returns their ids. 0 days keeps everything. Running it again removes nothing more (idempotent); a
    folder that cannot be deleted is logged and tried again on the next run."""
    finished_before = expiry_cutoff(retention_days, time.time() if now is None else now)
    if finished_before is None:
        return []
    job_sync = getattr(store, "job_sync", None)  # STORAGE_URL: storage/synced_store.py's SyncedJobStore
    removed = []
    for job_id in await store.expired_jobs(finished_before):
        try:
            await asyncio.to_thread(files.remove_job, job_id)
            if job_sync is not None:  # its copies in the bucket go with it
                await asyncio.to_thread(job_sync.delete_job, job_id)
        except (OSError, ObjectStoreError) as error:
            log.warning("job %d: could not delete its folder %s (%s); trying again later",
                        job_id, files.job_dir(job_id), getattr(error, "strerror", None) or error)
            continue
        removed.append(job_id)
    await store.mark_files_removed(removed)
    if removed:
        log.info("deleted the files of %d job(s) finished more than %g day(s) ago: %s", len(removed),
                 retention_days, _ids(removed))
    return removed


def _ids(job_ids: list[int], shown: int = 20) -> str:
    text = ", ".join(str(i) for i in job_ids[:shown])
    return text + (f" and {len(job_ids) - shown} more" if len(job_ids) > shown else "")
