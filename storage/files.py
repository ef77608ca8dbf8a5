"""Where a job's files live under the data directory: named by job id only, never by what a person sent."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from storage.jobs import GuidePictures, JobPictures, StorageNotWritable


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

    def end_path(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "end"

    def keyframe_path(self, job_id: int, index: int) -> Path:
        return self.job_dir(job_id) / f"keyframe_{int(index)}"

    def source_video_path(self, job_id: int) -> Path:
        """The video an extension job continues, when a person sent one."""
        return self.job_dir(job_id) / "source_video"

    def work_dir(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "work"

    def video_path(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "video.mp4"

    def fitted_path(self, job_id: int, limit: int) -> Path:
        return self.job_dir(job_id) / f"video_{int(limit)}.mp4"

    def remove_job(self, job_id: int) -> None:
        """Delete the job's whole folder (already gone is fine); OSError when part of it cannot be deleted."""
        folder = self.job_dir(job_id)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder)
        if folder.exists():  # a file that vanished midway stopped the first pass
            shutil.rmtree(folder)

    def write_input(self, job_id: int, data: bytes) -> Path:
        return write_durably(self.input_path(job_id), data)

    def write_pictures(self, job_id: int, pictures: JobPictures) -> None:
        """The start picture, the end picture and the keyframes (numbered in the order given)."""
        self.write_input(job_id, pictures.start)
        if pictures.end is not None:
            write_durably(self.end_path(job_id), pictures.end)
        for index, data in enumerate(pictures.keyframes):
            write_durably(self.keyframe_path(job_id, index), data)

    def read_pictures(self, job_id: int, guides: GuidePictures) -> JobPictures:
        """A stored job's pictures, for a re-roll; FileNotFoundError when one is gone."""
        end = self.end_path(job_id).read_bytes() if guides.end else None
        keyframes = tuple(self.keyframe_path(job_id, i).read_bytes() for i in range(len(guides.keyframes)))
        return JobPictures(self.input_path(job_id).read_bytes(), end, keyframes)


def write_durably(path: Path, data: bytes) -> Path:
    """Write a picture durably (temp file, fsync, rename), so a crash never leaves half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    with tmp.open("wb") as sink:
        sink.write(data)
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(tmp, path)
    return path


def check_data_folder(data_dir: Path) -> None:
    """Refuse to start on a data folder that cannot be written: every worker would crash-loop on it."""
    probe = data_dir / ".write-probe"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise StorageNotWritable(
            f"The data folder {data_dir} cannot be written ({error.strerror or error}). "
            "Check its permissions and free disk space, or point DATA_DIR elsewhere."
        ) from None
