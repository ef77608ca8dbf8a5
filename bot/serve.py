"""`framepack-bot serve`: the chat frontends in this process, one engine worker process per GPU.

On several machines the two halves run apart (ROLES): `framepack-bot worker` on each GPU host (workers only,
named after the host so that hosts never share a name), `framepack-bot frontends` on a host without a GPU (the
chat frontends, their deliveries and the retention cleanup; neither torch nor the engine is imported). Both
share the queue through DATABASE_URL=postgresql://...

Workers are started as `python -m engine.worker` with their own CUDA_VISIBLE_DEVICES; this process
never imports the engine. A worker or a frontend that dies (a refused token, an unreachable API, a
failed command sync) is logged with its reason and restarted after a growing pause; the others carry
on. SIGTERM or Ctrl-C asks every worker to finish its step, save and give its job back, then waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.watcher import STOP_GRACE_SECONDS
from storage.files import JobFiles
from storage.retention import remove_expired
from storage.settings import Settings
from storage.store import EXIT_CANNOT_START, JobStore, open_store

log = logging.getLogger("framepack.serve")

FRONTEND_TOKENS = {"discord": "discord_token", "telegram": "telegram_token"}
# name -> module with `async def run(settings, store, stop)`
AVAILABLE_FRONTENDS = {"discord": "bot.discord_frontend", "telegram": "bot.telegram_frontend"}
BACKOFF_START, BACKOFF_MAX, STABLE_SECONDS = 1.0, 60.0, 300.0
CLEANUP_INTERVAL_SECONDS = 3600.0  # RESULT_RETENTION_DAYS is in days: hourly keeps the disk within an hour of it
# role -> (runs the workers, runs the frontends)
ROLES = {"serve": (True, True), "worker": (True, False), "frontends": (False, True)}


@dataclass(frozen=True)
class WorkerSlot:
    name: str
    env: dict[str, str]


def visible_gpus() -> list[str]:
    """GPU indices this machine shows, without importing torch: CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()]


def worker_slots(settings: Settings, host: str = "") -> list[WorkerSlot]:
    """One slot per GPU (or ENGINE_WORKERS on the CPU), named `{host}-gpu0`...; without `host`, plain `gpu0`."""
    base = {**os.environ}
    prefix = f"{host}-" if host else ""
    if (settings.engine_device or "").startswith("cpu"):
        base["CUDA_VISIBLE_DEVICES"] = ""
        return [WorkerSlot(f"{prefix}cpu{i}", base) for i in range(settings.engine_workers)]
    listed = [g.strip() for g in (settings.engine_gpus or "").split(",") if g.strip()]
    gpus = listed or visible_gpus()
    return share_host_ram(settings, [WorkerSlot(f"{prefix}gpu{g}", {**base, "CUDA_VISIBLE_DEVICES": g}) for g in gpus])


def share_host_ram(settings: Settings, slots: list[WorkerSlot]) -> list[WorkerSlot]:
    """Workers on one host plan their RAM from one figure taken before any of them starts, each its share
    (ENGINE_RAM_GB): otherwise each plans on all the RAM it finds free, and two low-VRAM workers would both plan
    to pin what only one can have. A set ENGINE_RAM_GB is each worker's own and is left as it is."""
    from engine.host_memory import mem_available_bytes

    if len(slots) < 2 or settings.engine_ram_gb is not None:
        return slots
    available = mem_available_bytes()
    share = available / len(slots) / 2**30
    log.info("%d workers on this host: each plans with %.1f GiB of the %.1f GiB of RAM available (ENGINE_RAM_GB "
             "sets each one's)", len(slots), share, available / 2**30)
    return [WorkerSlot(slot.name, {**slot.env, "ENGINE_RAM_GB": f"{share:.2f}"}) for slot in slots]


class WorkerProcess:
    """Keeps one worker process running until told to stop."""

    def __init__(self, slot: WorkerSlot, grace_seconds: float):
        self.slot = slot
        self.grace = grace_seconds
        self.process: asyncio.subprocess.Process | None = None

    async def run(self, stop: asyncio.Event) -> None:
        backoff = BACKOFF_START
        while not stop.is_set():
            started = time.monotonic()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "engine.worker", "--name", self.slot.name, env=self.slot.env
            )
            log.info("worker %s started (pid %d)", self.slot.name, self.process.pid)
            code = await self.process.wait()
            if stop.is_set():
                log.info("worker %s stopped (exit %d)", self.slot.name, code)
                return
            if time.monotonic() - started > STABLE_SECONDS:
                backoff = BACKOFF_START
            if code == EXIT_CANNOT_START:  # it said why in its log; only a fixed set-up helps
                backoff = BACKOFF_MAX
            log.warning("worker %s exited with code %d; restarting in %.0f s", self.slot.name, code, backoff)
            await _pause(stop, backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=self.grace)
        except asyncio.TimeoutError:
            log.warning("worker %s did not stop within %.0f s; killing it", self.slot.name, self.grace)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def supervise(name: str, run: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Keep a frontend running until `stop`: each end of it is logged with its reason and followed by a
    restart after a pause that doubles (back to the start once it has run for a while)."""
    backoff = BACKOFF_START
    while not stop.is_set():
        started = time.monotonic()
        try:
            await run()
            reason = "it ended without an error"
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
        if stop.is_set():
            return
        if time.monotonic() - started > STABLE_SECONDS:
            backoff = BACKOFF_START
        log.error("frontend %s stopped (%s); restarting in %.0f s", name, reason, backoff)
        await _pause(stop, backoff)
        backoff = min(backoff * 2, BACKOFF_MAX)


async def clean_up_periodically(settings: Settings, store: JobStore, stop: asyncio.Event,
                                interval: float = CLEANUP_INTERVAL_SECONDS) -> None:
    """Delete the files of jobs past RESULT_RETENTION_DAYS at start, then every `interval` seconds, until
    `stop`. A round that fails is logged and the next one tries again: it never stops `serve`."""
    if settings.result_retention_days <= 0:
        log.info("RESULT_RETENTION_DAYS is 0: finished jobs' files are kept forever")
        return
    files = JobFiles(settings.data_dir)
    while not stop.is_set():
        try:
            await remove_expired(store, files, settings.result_retention_days)
        except Exception:
            log.exception("deleting the files of expired jobs failed; trying again in %.0f s", interval)
        await _pause(stop, interval)


def _frontends(settings: Settings) -> list[str]:
    names = []
    for name, field in FRONTEND_TOKENS.items():
        if not getattr(settings, field):
            continue
        if name not in AVAILABLE_FRONTENDS:
            log.warning("%s is configured, but this version has no %s frontend yet; its token is unused.",
                        field.upper(), name.capitalize())
            continue
        names.append(name)
    if not names:
        log.warning(
            "No chat frontend is running: set DISCORD_TOKEN and/or TELEGRAM_TOKEN in .env (see .env.example "
            "and README). Workers still render the jobs already in the queue."
        )
    return names


async def serve(settings: Settings, role: str = "serve") -> int:
    """Run `role` (ROLES) until SIGTERM or Ctrl-C."""
    from storage.sqlite_store import StorageNotWritable

    runs_workers, runs_frontends = ROLES[role]

    try:
        store = await open_store(settings)  # creates or migrates the database before anything starts
    except StorageNotWritable as error:
        log.error("cannot start: %s", error)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    slots = worker_slots(settings, socket.gethostname() if role == "worker" else "") if runs_workers else []
    if runs_workers and not slots:
        log.error(
            "No GPU found for the engine workers (nvidia-smi shows none). Set ENGINE_GPUS, or ENGINE_DEVICE=cpu "
            "to render on the CPU (very slow with the full model). Queued jobs wait until a worker runs."
        )
    workers = [WorkerProcess(slot, settings.shutdown_grace_seconds) for slot in slots]
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    frontends = _frontends(settings) if runs_frontends else []
    if runs_frontends:  # the host that delivers the files also deletes them once they expire
        tasks.append(asyncio.create_task(clean_up_periodically(settings, store, stop)))
    for name in frontends:
        module = __import__(AVAILABLE_FRONTENDS[name], fromlist=["run"])
        tasks.append(asyncio.create_task(supervise(name, lambda m=module: m.run(settings, store, stop), stop)))
    log.info("%s: %d worker(s) (%s) and frontends: %s; data in %s", role, len(workers),
             ", ".join(w.slot.name for w in workers) or "none", ", ".join(frontends) or "none", settings.data_dir)

    await stop.wait()
    log.info("shutting down: workers finish their current step and save")
    await asyncio.gather(*(w.stop() for w in workers))
    # The frontends end after the delivery each is in: cancelled mid-way, a posted video not yet marked would
    # be posted again by another process.
    _, unfinished = await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS) if tasks else (set(), set())
    for task in unfinished:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await store.close()
    log.info("stopped; queued and unfinished jobs continue on the next start")
    return 0
