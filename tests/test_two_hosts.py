"""Two worker "hosts" sharing only the database (one SQLite file, or a PostgreSQL server) and the bucket
(STORAGE_URL on a real S3 API server): one is killed with SIGKILL mid-job, the other resumes from the bucket's
checkpoint and makes the uninterrupted video; a frontend on a third host delivers it from the bucket."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import picture_bytes, reference_video, video_frames, wait_for, worker_env, worker_settings
from s3_server import SECRET_KEY, storage_env

from storage.jobs import JobParams, JobState, NewJob
from storage.settings import Settings
from storage.store import open_store


def _start_host(tmp_path: Path, models_dir: Path, host: str, name: str, database: str, bucket: dict,
                log: Path) -> subprocess.Popen:
    settings = worker_settings(tmp_path / host, models_dir)  # its own data folder: tmp_path/host/data
    env = {**worker_env(settings), "DATABASE_URL": database, **storage_env(bucket)}
    return subprocess.Popen([sys.executable, "-m", "engine.worker", "--name", name], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_kill_9_on_one_host_and_another_host_resumes_from_the_bucket(tmp_path, tiny_models_dir, s3_settings,
                                                                           backend, request):
    shared_file = f"sqlite:///{tmp_path / 'shared.db'}"
    database = shared_file if backend == "sqlite" else request.getfixturevalue("postgres_url")
    frontend = await open_store(Settings(data_dir=tmp_path / "frontend" / "data", database_url=database,
                                         max_queued_per_user=50, **s3_settings))
    other_frontend = await open_store(Settings(data_dir=tmp_path / "other_frontend" / "data",
                                               database_url=database, **s3_settings))
    try:
        params = JobParams(seconds=4.8, seed=21, resolution=64, steps=4)
        job_id = (await frontend.enqueue(NewJob("telegram", "c", "u", "a dog runs", params), picture_bytes())).job_id
        bucket = frontend.job_sync.objects
        log = tmp_path / "hosts.log"

        first = _start_host(tmp_path, tiny_models_dir, "host_a", "doomed", database, s3_settings, log)
        try:
            async def two_sections_in_the_bucket():
                job = await frontend.get(job_id)
                keys = bucket.list(f"jobs/{job_id}/work/")
                return (job.progress.section >= 3 and f"jobs/{job_id}/work/latents_0002.pt" in keys
                        and f"jobs/{job_id}/work/checkpoint.pt" in keys)

            await wait_for(two_sections_in_the_bucket, timeout=180)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        finally:
            first.kill()
        assert (await frontend.get(job_id)).state is JobState.RUNNING  # still leased by the dead worker
        assert not (tmp_path / "host_b").exists()

        rescuer = _start_host(tmp_path, tiny_models_dir, "host_b", "rescuer", database, s3_settings, log)
        try:
            async def finished():
                job = await frontend.get(job_id)
                return job if job.state in (JobState.DONE, JobState.FAILED) else None

            job = await wait_for(finished, timeout=180)
        finally:
            rescuer.send_signal(signal.SIGTERM)
            rescuer.wait(timeout=60)
        text = log.read_text()
        assert job.state is JobState.DONE and job.worker == "rescuer", text[-3000:]
        # From the bucket's checkpoint, not from the start: section 3 or 4 as a rule, 2 when the kill came between
        # section 2's files and its checkpoint (uploaded last); the video is the same either way.
        assert any(f"resuming at section {n}" in text for n in (2, 3, 4)), text[-3000:]
        assert job.video.startswith(str(tmp_path / "host_b"))
        assert SECRET_KEY not in text

        # A frontend on a host that never had the job's folder posts the video from the bucket.
        delivered = (await other_frontend.undelivered("telegram"))[0]
        assert delivered.id == job_id and delivered.video.startswith(str(tmp_path / "other_frontend"))
        reference = reference_video(tiny_models_dir, tmp_path, params, "a dog runs")
        assert np.array_equal(video_frames(Path(delivered.video)), reference)
        assert Path(delivered.video).read_bytes() == Path(job.video).read_bytes()
    finally:
        await frontend.close()
        await other_frontend.close()
