"""Where a job's files live under the data directory: named by job id only, never by what a person sent."""

from __future__ import annotations

import os
from pathlib import Path


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists (a data folder not made yet is on its parent's disk)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class JobFiles:
    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / "jobs"

    def job_dir(self, job_id: int) -> Path:
        return self.root / str(int(job_id))

    def input_path(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "input"

    def work_dir(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "work"

    def video_path(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "video.mp4"

    def fitted_path(self, job_id: int, limit: int) -> Path:
        return self.job_dir(job_id) / f"video_{int(limit)}.mp4"

    def write_input(self, job_id: int, data: bytes) -> Path:
        """Write the picture durably (temp file, fsync, rename), so a crash never leaves half of it."""
        path = self.input_path(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        with tmp.open("wb") as sink:
            sink.write(data)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp, path)
        return path
