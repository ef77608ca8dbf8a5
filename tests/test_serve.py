"""`framepack-bot serve` end to end: workers on the tiny models, restarts, clean shutdown, no torch in bot/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import job_finished, picture_bytes, reference_video, video_frames, wait_for, worker_env, worker_settings

from bot.serve import worker_slots
from storage.jobs import JobParams, JobState, NewJob
from storage.settings import Settings


def _start_serve(settings: Settings, log: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "serve"], env={**worker_env(settings), "ENGINE_WORKERS": "1", **env},
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def _stop(process: subprocess.Popen, timeout: float = 90) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout)


async def test_serve_renders_queued_jobs_and_says_no_frontend_is_configured(stores, tmp_path, tiny_models_dir):
    settings = worker_settings(tmp_path, tiny_models_dir)
    store = await stores(settings)
    params = JobParams(seconds=1.2, seed=2, resolution=64, steps=2)
    job_id = (await store.enqueue(NewJob("telegram", "c", "u", "a bird", params), picture_bytes())).job_id
    log = tmp_path / "serve.log"
    serve = _start_serve(settings, log)
    try:
        job = await wait_for(lambda: job_finished(store, job_id), timeout=180)
    finally:
        assert _stop(serve) == 0
    text = log.read_text()
    assert job.state is JobState.DONE, text[-3000:]
    assert "No chat frontend is running: set DISCORD_TOKEN" in text
    assert "worker cpu0 started" in text and "worker cpu0 stopped" in text


async def test_restart_keeps_queued_running_and_undelivered_jobs(stores, tmp_path, tiny_models_dir):
    settings = worker_settings(tmp_path, tiny_models_dir, lease_seconds=30.0)
    store = await stores(settings)
    quick = JobParams(seconds=1, seed=1, resolution=64, steps=1)
    long = JobParams(seconds=2.4, seed=6, resolution=64, steps=30)
    done_id = (await store.enqueue(NewJob("discord", "c", "a", "first", quick), picture_bytes())).job_id
    long_id = (await store.enqueue(NewJob("discord", "c", "b", "long one", long), picture_bytes())).job_id
    log = tmp_path / "serve.log"
    serve = _start_serve(settings, log)

    async def long_is_rendering():
        job = await store.get(long_id)
        return job.state is JobState.RUNNING and job.progress.step >= 3

    try:
        await wait_for(long_is_rendering, timeout=180)
        waiting_id = (await store.enqueue(NewJob("discord", "c", "c", "waiting", quick), picture_bytes())).job_id
    finally:
        assert _stop(serve) == 0, log.read_text()[-3000:]
    assert (await store.get(done_id)).state is JobState.DONE
    assert [j.id for j in await store.undelivered("discord")] == [done_id]  # done, not yet delivered
    assert (await store.get(long_id)).state is JobState.QUEUED  # given back, with its checkpoint
    assert (await store.get(waiting_id)).state is JobState.QUEUED

    serve = _start_serve(settings, log)
    try:
        long_job = await wait_for(lambda: job_finished(store, long_id), timeout=240)
        waiting = await wait_for(lambda: job_finished(store, waiting_id), timeout=120)
    finally:
        assert _stop(serve) == 0
    assert long_job.state is JobState.DONE and waiting.state is JobState.DONE
    assert [j.id for j in await store.undelivered("discord")] == [done_id, long_id, waiting_id]
    reference = reference_video(tiny_models_dir, tmp_path, long, "long one")
    assert np.array_equal(video_frames(Path(long_job.video)), reference)


async def test_a_dead_worker_is_restarted_and_its_job_finishes(stores, tmp_path, tiny_models_dir):
    settings = worker_settings(tmp_path, tiny_models_dir, lease_seconds=2.0)
    store = await stores(settings)
    params = JobParams(seconds=2.4, seed=3, resolution=64, steps=20)
    job_id = (await store.enqueue(NewJob("telegram", "c", "u", "rain", params), picture_bytes())).job_id
    log = tmp_path / "serve.log"
    serve = _start_serve(settings, log)
    try:
        async def worker_pid():
            job = await store.get(job_id)
            if job.state is not JobState.RUNNING or job.progress.section < 2:
                return None
            out = subprocess.run(["pgrep", "-f", "engine.worker --name cpu0"], capture_output=True, text=True)
            return int(out.stdout.split()[0]) if out.stdout.strip() else None

        os.kill(await wait_for(worker_pid, timeout=180), signal.SIGKILL)
        job = await wait_for(lambda: job_finished(store, job_id), timeout=240)
    finally:
        assert _stop(serve) == 0
    text = log.read_text()
    assert "worker cpu0 exited with code -9; restarting in 1 s" in text, text[-3000:]
    assert job.state is JobState.DONE and job.attempts == 2


def test_worker_slots_follow_theworker_settings(tmp_path, monkeypatch):
    cpu = Settings(data_dir=tmp_path, engine_device="cpu", engine_workers=3)
    assert [s.name for s in worker_slots(cpu)] == ["cpu0", "cpu1", "cpu2"]
    assert all(s.env["CUDA_VISIBLE_DEVICES"] == "" for s in worker_slots(cpu))
    listed = Settings(data_dir=tmp_path, engine_gpus="0, 2")
    assert [(s.name, s.env["CUDA_VISIBLE_DEVICES"]) for s in worker_slots(listed)] == [("gpu0", "0"), ("gpu2", "2")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert [s.name for s in worker_slots(Settings(data_dir=tmp_path))] == ["gpu1", "gpu3"]


def test_workers_on_one_host_plan_with_their_share_of_its_ram(tmp_path, monkeypatch):
    import torch

    import engine.host_memory
    from engine.engine_options import EngineOptions

    monkeypatch.setattr(engine.host_memory, "mem_available_bytes", lambda: 96 * 2**30)
    monkeypatch.delenv("ENGINE_RAM_GB", raising=False)
    slots = worker_slots(Settings(data_dir=tmp_path, engine_gpus="0,1,2"))
    assert [s.env["ENGINE_RAM_GB"] for s in slots] == ["32.00"] * 3
    # what a worker started with that environment plans with
    monkeypatch.setenv("ENGINE_RAM_GB", slots[0].env["ENGINE_RAM_GB"])
    options = EngineOptions.from_settings(Settings(data_dir=tmp_path, engine_vram_gb=24))
    assert options.budget(torch.device("cpu")).ram == 32 * 2**30
    # one worker measures for itself at its start; a budget set by the owner is each worker's own
    monkeypatch.delenv("ENGINE_RAM_GB")
    assert "ENGINE_RAM_GB" not in worker_slots(Settings(data_dir=tmp_path, engine_gpus="0"))[0].env
    owned = worker_slots(Settings(data_dir=tmp_path, engine_gpus="0,1", engine_ram_gb=50))
    assert all("ENGINE_RAM_GB" not in s.env for s in owned)


def test_serve_without_gpus_says_how_to_run_workers(tmp_path):
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("ENGINE_DEVICE", None)
    process = subprocess.Popen([sys.executable, "-m", "bot.cli", "serve"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    time.sleep(4)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "No GPU found for the engine workers" in out and "ENGINE_DEVICE=cpu" in out
    assert (tmp_path / "data" / "framepack.db").exists()


def test_the_bot_side_never_imports_torch():
    code = "import sys, bot.cli, bot.serve, storage.store, storage.sqlite_store; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("command", ["animate", "extend", "download"])
def test_engine_commands_pass_through_the_main_entry_point(command):
    out = subprocess.run([sys.executable, "-m", "bot.cli", command, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and f"framepack-bot {command}" in out.stdout

