"""Process roles on PostgreSQL: `framepack-bot worker` (a GPU host: workers only) and `framepack-bot frontends`
(chat frontends and deliveries only, never importing torch) as separate processes sharing the queue."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

from fake_telegram import FakeTelegram
from helpers import job_finished, picture_bytes, wait_for, worker_env, worker_settings

from bot.serve import worker_slots
from storage.jobs import JobParams, JobState, NewJob
from storage.settings import Settings
from storage.store import open_store

TOKEN = "123456:TEST-token"


def _start(role: str, settings: Settings, log: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "bot.cli", role],
        env={**worker_env(settings), "DATABASE_URL": settings.database_url, "ENGINE_WORKERS": "1", **env},
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def _without_import_times(log: Path) -> str:
    return "".join(line for line in log.read_text().splitlines(keepends=True) if "import time:" not in line)


def _stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=90)


def test_a_worker_hosts_slots_carry_its_name(tmp_path):
    cpu = Settings(data_dir=tmp_path, engine_device="cpu", engine_workers=2)
    assert [s.name for s in worker_slots(cpu, "gpu-host-7")] == ["gpu-host-7-cpu0", "gpu-host-7-cpu1"]
    listed = Settings(data_dir=tmp_path, engine_gpus="0,3")
    assert [s.name for s in worker_slots(listed, "h")] == ["h-gpu0", "h-gpu3"]
    assert [s.name for s in worker_slots(listed)] == ["gpu0", "gpu3"]  # serve, one machine: as before


async def test_worker_and_frontends_processes_render_and_deliver_through_postgres(tmp_path, tiny_models_dir,
                                                                                   postgres_url):
    fake = FakeTelegram(TOKEN)
    url = await fake.start()
    settings = worker_settings(tmp_path, tiny_models_dir, database_url=postgres_url)
    store = await open_store(settings)
    worker_log, frontends_log = tmp_path / "worker.log", tmp_path / "frontends.log"
    worker = _start("worker", settings, worker_log)
    frontends = _start("frontends", settings, frontends_log, TELEGRAM_TOKEN=TOKEN, TELEGRAM_API_URL=url)
    try:
        params = JobParams(seconds=1.2, seed=3, resolution=64, steps=2)
        job_id = (await store.enqueue(NewJob("telegram", "4242", "4242", "a bird", params), picture_bytes())).job_id
        job = await wait_for(lambda: job_finished(store, job_id), timeout=180)
        assert job.state is JobState.DONE, worker_log.read_text()[-3000:]
        assert job.worker == f"{socket.gethostname()}-cpu0"
        video = await fake.wait_for("sendVideo", timeout=60)
        assert int(video["chat_id"]) == 4242
        await wait_for(lambda: _delivered(store, job_id), timeout=30)
    finally:
        codes = (_stop(worker), _stop(frontends))
        assert codes == (0, 0), (codes, _without_import_times(frontends_log)[-3000:])
        await store.close()
        await fake.stop()
    worker_text, frontends_text = worker_log.read_text(), frontends_log.read_text()
    assert "No chat frontend is running" not in worker_text and "worker: 1 worker(s)" in worker_text
    assert "frontends: 0 worker(s) (none) and frontends: telegram" in frontends_text
    imported = [line.rsplit("|", 1)[-1].strip() for line in frontends_text.splitlines() if "import time:" in line]
    assert "bot.telegram_frontend" in imported and not any(m == "torch" or m.startswith(("torch.", "engine"))
                                                           for m in imported)


async def _delivered(store, job_id: int) -> bool:
    return (await store.get(job_id)).delivered
