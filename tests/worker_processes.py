"""The worker behind a chat test's queue: an in-process `Worker` task on SQLite, and on PostgreSQL + S3
(FRAMEPACK_TEST_BACKEND=postgres-s3) a `python -m engine.worker` process on another "host": its own, empty data
folder, so the picture, an extended video's latents and the result reach it and come back only through the
database and the bucket, as they do between machines. The frontends stay in the test process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import TEST_BACKEND
from helpers import worker_env

from engine.worker import Worker
from storage.settings import Settings

STOP_SECONDS = 60.0  # a render step on the tiny models is well under this; then the process is killed
LOG_TAIL_CHARS = 4000


class InProcessWorker:
    """A `Worker` task in the test's event loop, sharing the test's store and data folder."""

    def __init__(self, store, settings: Settings, name: str):
        self.worker = Worker(store, settings, name)
        self.task: asyncio.Task | None = None

    def start(self, max_jobs: int | None = None) -> None:
        self.task = asyncio.create_task(self.worker.run(max_jobs))

    async def finished(self, timeout: float) -> None:
        await asyncio.wait_for(self.task, timeout)

    async def stop(self) -> None:
        self.worker.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, STOP_SECONDS)


class WorkerProcess:
    """`python -m engine.worker` with the test's settings in its environment and a data folder of its own."""

    def __init__(self, settings: Settings, name: str):
        self.name = name
        self.host = _new_host_folder(settings.data_dir.parent, name)
        self.log = self.host / "worker.log"
        # worker_env copies os.environ now: the backend's DATABASE_URL and STORAGE_* come with it.
        self.env = {**worker_env(settings), **settings_env(settings), "DATA_DIR": str(self.host / "data")}
        self.process: subprocess.Popen | None = None

    def start(self, max_jobs: int | None = None) -> None:
        command = [sys.executable, "-m", "engine.worker", "--name", self.name]
        if max_jobs is not None:
            command += ["--max-jobs", str(max_jobs)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    async def finished(self, timeout: float) -> None:
        """Waits for a worker started with max_jobs to exit by itself, and fails with its log if it did not
        exit cleanly."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.name} did not finish in {timeout:.0f} s\n{self.log_tail()}")
            await asyncio.sleep(0.2)
        assert self.process.returncode == 0, self.failure(self.process.returncode)

    async def stop(self) -> None:
        """SIGTERM (the worker gives its job back and exits 0), then SIGKILL past STOP_SECONDS. Prints the log,
        which pytest shows only when the test failed, and fails the teardown if the worker had crashed."""
        code = self.process.poll()
        if code is None:
            self.process.send_signal(signal.SIGTERM)
            code = await self._exit_code(STOP_SECONDS)
            if code is None:
                self.process.kill()
                code = await self._exit_code(10)
        print(f"--- worker {self.name} ({self.log}), exit code {code} ---\n{self.log_tail()}")
        assert code == 0, self.failure(code)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if self.log.exists() else "(no log)"

    def failure(self, code) -> str:
        return f"worker process {self.name} exited with {code}:\n{self.log_tail()}"

    async def _exit_code(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return self.process.poll()


def start_worker(store, settings: Settings, name: str = "w1", max_jobs: int | None = None):
    """A running worker for a chat test, chosen by the backend under test (see the module's docstring)."""
    worker = WorkerProcess(settings, name) if TEST_BACKEND == "postgres-s3" else InProcessWorker(store, settings, name)
    worker.start(max_jobs)
    return worker


async def run_worker(store, settings: Settings, max_jobs: int, name: str = "w1", timeout: float = 180) -> None:
    """A worker that takes max_jobs jobs and exits (the bot being down meanwhile, say)."""
    worker = start_worker(store, settings, name, max_jobs)
    try:
        await worker.finished(timeout)
    finally:
        if isinstance(worker, WorkerProcess) and worker.process.poll() is None:
            await worker.stop()


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings a test chose (resolution, steps, lease, limits...) as the environment variables that give a
    process the same ones; the data folder and what derives from it are each host's own."""
    derived = {"data_dir"}
    if settings.lora_dir == settings.data_dir / "loras":
        derived.add("lora_dir")
    env = {}
    for name in settings.model_fields_set - derived:
        value = getattr(settings, name)
        if value is not None:
            env[name.upper()] = _env_value(value)
    return env


def _env_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict, tuple, set)):
        return json.dumps(list(value) if isinstance(value, (tuple, set)) else value)
    return str(value)


def _new_host_folder(under: Path, name: str) -> Path:
    for n in range(1, 1000):
        host = under / f"host_{name}_{n}"
        with contextlib.suppress(FileExistsError):
            (host / "data").mkdir(parents=True)
            return host
    raise RuntimeError(f"no free host folder under {under}")

