"""A job's folder under the data directory kept in step with the bucket, so that any host can take any job.

The data directory stays the working copy (the render reads and writes plain files); the bucket holds what
another host needs: the inputs once enqueued, the work folder after every section (checkpoint, latents,
segments, previews), the videos at the end. A host that claims a job, or delivers one, downloads what it lacks.

Every method blocks: the store calls them through asyncio.to_thread.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
from pathlib import Path, PurePosixPath

from storage.extension_rules import KEPT_LATENTS
from storage.files import JobFiles
from storage.jobs import Job
from storage.object_store import ObjectStore

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"  # engine/render.py's record of the sections done: uploaded after what it names
# Files being written (render's save_atomic, write_durably, our own downloads and snapshots): never uploaded.
UNFINISHED_SUFFIXES = (".tmp", ".part", ".download", ".upload")


class JobSync:
    def __init__(self, objects: ObjectStore, files: JobFiles):
        self.objects = objects
        self.files = files
        self.data_dir = files.root.parent
        self._in_step: dict[str, tuple[int, int]] = {}  # key -> (size, mtime_ns) of the local file the bucket holds
        self._lock = threading.Lock()  # one upload pass at a time, so a later pass never sends an older checkpoint

    def key(self, path: Path) -> str:
        return Path(path).relative_to(self.data_dir).as_posix()

    def job_prefix(self, job_id: int) -> str:
        return self.key(self.files.job_dir(job_id)) + "/"

    # ---- uploads ----------------------------------------------------------------------------------------

    def upload_inputs(self, job_id: int) -> int:
        """The pictures or the source video a frontend stored at enqueue (the job folder's own files)."""
        folder = self.files.job_dir(job_id)
        inputs = [self.files.input_path(job_id), self.files.end_path(job_id), self.files.source_video_path(job_id),
                  *sorted(folder.glob("keyframe_*"))]
        return self._upload([path for path in inputs if path.is_file()])

    def upload_work(self, job_id: int) -> int:
        """The work folder's new and changed files, the checkpoint last: a resume elsewhere finds every segment and
        latent the checkpoint names. The checkpoint is copied first, since the render may replace it meanwhile
        with one naming files this pass has not seen."""
        work = self.files.work_dir(job_id)
        if not work.is_dir():
            return 0
        with self._lock:
            checkpoint = work / CHECKPOINT
            snapshot = work / (CHECKPOINT + ".upload")
            try:
                shutil.copyfile(checkpoint, snapshot)
            except FileNotFoundError:
                snapshot = None
            try:
                sent = self._upload([p for p in sorted(work.iterdir()) if p.is_file() and p.name != CHECKPOINT])
                if snapshot is not None and self._changed(checkpoint):
                    stat = checkpoint.stat()
                    self.objects.put_file(self.key(checkpoint), snapshot)
                    self._in_step[self.key(checkpoint)] = (stat.st_size, stat.st_mtime_ns)
                    sent += 1
            finally:
                if snapshot is not None:
                    snapshot.unlink(missing_ok=True)
        return sent

    def upload_results(self, job_id: int, video: str, fitted: dict[int, str]) -> int:
        """The finished video, its upload copies and the work folder's last files (continuation.pt)."""
        sent = self.upload_work(job_id)
        return sent + self._upload([Path(p) for p in [video, *fitted.values()] if p and Path(p).is_file()])

    def _upload(self, paths: list[Path]) -> int:
        sent = 0
        for path in paths:
            if path.name.endswith(UNFINISHED_SUFFIXES) or not self._changed(path):
                continue
            stat = path.stat()
            self.objects.put_file(self.key(path), path)
            self._in_step[self.key(path)] = (stat.st_size, stat.st_mtime_ns)
            sent += 1
        return sent

    def _changed(self, path: Path) -> bool:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        return self._in_step.get(self.key(path)) != (stat.st_size, stat.st_mtime_ns)

    # ---- downloads --------------------------------------------------------------------------------------

    def download_job(self, job_id: int) -> int:
        """What the bucket holds of a job and this host lacks. The bucket's checkpoint always wins: another host
        may have rendered further since this one last had the job (its older files are the same bytes, the
        render being deterministic, and any that are torn the render itself checks and redoes)."""
        fetched = 0
        for key, size in self.objects.list(self.job_prefix(job_id)).items():
            path = self.data_dir / PurePosixPath(key)
            if path.name.endswith(UNFINISHED_SUFFIXES):
                continue
            local = path.stat().st_size if path.is_file() else None
            if local == size and path.name != CHECKPOINT:
                continue
            if self.objects.get_file(key, path):
                stat = path.stat()
                self._in_step[key] = (stat.st_size, stat.st_mtime_ns)
                fetched += 1
        return fetched

    def fetch_inputs(self, job_id: int) -> int:
        """The job's pictures or sent video that this host lacks (a re-roll or /info on another frontend host),
        not its work folder or videos."""
        folder = self.files.job_dir(job_id)
        named = {self.files.input_path(job_id).name, self.files.end_path(job_id).name,
                 self.files.source_video_path(job_id).name}
        fetched = 0
        for key in self.objects.list(self.job_prefix(job_id)):
            path = self.data_dir / PurePosixPath(key)
            if path.parent == folder and (path.name in named or path.name.startswith("keyframe_")) \
                    and not path.is_file():
                fetched += bool(self.objects.get_file(key, path))
        return fetched

    def fetch_kept_latents(self, job_id: int) -> bool:
        """A finished job's kept latents, the one file a frontend reads before it queues an extension of the job
        (storage/extension_rules.py checks they exist); the worker that claims the extension fetches the rest."""
        path = self.files.work_dir(job_id) / KEPT_LATENTS
        return path.is_file() or self.objects.get_file(self.key(path), path)

    def download_for_claim(self, job: Job) -> int:
        """A claimed job's inputs and work folder, and for an extension of a job, that job's work folder."""
        fetched = self.download_job(job.id)
        if job.extends is not None and job.extends.job_id is not None:
            fetched += self.download_job(job.extends.job_id)
        return fetched

    def local_copy(self, job_id: int, path: str | None, missing: str | None = "keep") -> str | None:
        """A file a worker named by its own path (a result, a preview), as a path on this host, downloaded when
        missing. A file the bucket lacks too: its local path (the caller finds it missing), or None with
        `missing=None` (a preview not uploaded yet is shown on a later look)."""
        if not path:
            return path
        local = self._local_path(job_id, path)
        if local is None:
            return path
        if not local.is_file() and not self.objects.get_file(self.key(local), local) and missing is None:
            return None
        return str(local)

    def _local_path(self, job_id: int, path: str) -> Path | None:
        """The same file under this host's data directory: the part of `path` from "jobs/<id>/" on."""
        parts = PurePosixPath(Path(path).as_posix()).parts
        root = self.files.root.name
        for index in range(len(parts) - 2, -1, -1):
            if parts[index] == root and parts[index + 1] == str(int(job_id)):
                return self.files.root.joinpath(*parts[index + 1:])
        return None

    def with_local_files(self, job: Job) -> Job:
        """`job` with its video, upload copies and newest preview at paths on this host (fetched if missing)."""
        if job.files_removed_at is not None:
            return job
        progress = dataclasses.replace(job.progress, preview=self.local_copy(job.id, job.progress.preview, None))
        if job.video is None and not job.fitted:
            return dataclasses.replace(job, progress=progress)
        return dataclasses.replace(job, progress=progress, video=self.local_copy(job.id, job.video),
                                   fitted={limit: self.local_copy(job.id, p) for limit, p in job.fitted.items()})

    # ---- retention --------------------------------------------------------------------------------------

    def delete_job(self, job_id: int) -> int:
        return self.objects.delete_prefix(self.job_prefix(job_id))
