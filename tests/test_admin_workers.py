"""/admin workers' data on both backends: each live worker's host, GPU, plan, seconds per step and current job."""

from __future__ import annotations

from test_storage import PNG, _job

from bot import texts
from storage.settings import Settings
from storage.store import open_store


async def test_workers_lists_host_gpu_plan_speed_and_job(tmp_path, database_url):
    store = await open_store(Settings(data_dir=tmp_path / "data", database_url=database_url))
    try:
        job_id = (await store.enqueue(_job(), PNG)).job_id
        await store.describe_worker("host-a-gpu0", "host-a", "NVIDIA H200", "high")
        await store.record_speed("host-a-gpu0", 1.25, 4.0)
        await store.heartbeat("host-b-gpu1", "The weights are missing.")
        assert (await store.claim("host-a-gpu0")).id == job_id
        a, b = await store.workers()
        assert (a.name, a.host, a.gpu, a.plan, a.seconds_per_step, a.job_id) == (
            "host-a-gpu0", "host-a", "NVIDIA H200", "high", 1.25, job_id)
        assert (b.name, b.host, b.job_id, b.problem) == ("host-b-gpu1", None, None, "The weights are missing.")
        text = texts.workers_list([a, b])
        assert f"host-a-gpu0: host-a · NVIDIA H200 · plan high; 1.25 s/step; job #{job_id}" in text
        assert "host-b-gpu1: where unknown; no speed yet; cannot render: The weights are missing." in text
    finally:
        await store.close()
