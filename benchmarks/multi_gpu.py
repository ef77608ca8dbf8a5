"""One worker per GPU, measured (issue 19): the serve's own worker slots on one GPU, then on every GPU.

    python -m benchmarks.multi_gpu --checkpoint /tmp/ckpt --rounds 1,all --jobs 4 --out results.jsonl

The full-size random models are written once in the Hub layout (benchmarks/full_size.py, seeded) and each
worker process loads them with the bot's own loader, as `framepack-bot serve` starts it: `bot.serve`'s
`worker_slots` (one slot per GPU, its own CUDA_VISIBLE_DEVICES, its share of the host's RAM) and
`python -m engine.worker`. Each round has a fresh data folder and SQLite store with `--jobs` jobs from two
people. A round reports each job's worker, attempts and times, each worker's seconds per step (the store's
figure) and peak and private host memory, jobs per hour from the first claim to the last completion, whether
every job ran once, and whether the jobs were claimed in the queue's fair order. `--device cpu --workers N`
runs the same rounds with CPU workers on a models folder given by `--models` (the tests' tiny models).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.engine_e2e import write
from benchmarks.worker_jobs import add_job_arguments, enqueue_jobs
from bot.serve import worker_slots
from engine.host_memory import process_memory_bytes
from storage.jobs import JobParams, JobState
from storage.settings import Settings
from storage.store import open_store

POLL_SECONDS = 1.0


@contextlib.contextmanager
def environment(values: dict[str, str | None]):
    """os.environ with `values` set (None: unset) for the body: Settings() and worker_slots() read it."""
    before = {name: os.environ.get(name) for name in values}
    try:
        _put(values)
        yield
    finally:
        _put(before)


def _put(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def process_memory(pid: int) -> dict[str, float]:
    """Peak resident (VmHWM) and private (RssAnon) memory of a process, in GiB; {} once it has gone."""
    fields = process_memory_bytes(pid)
    return {name: round(fields[name] / 2**30, 2) for name in ("VmHWM", "RssAnon") if name in fields}


async def run_round(label: str, env: dict[str, str | None], jobs: int, params: JobParams, logs: Path,
                    timeout: float) -> dict:
    with environment(env):
        settings = Settings()
        slots = worker_slots(settings)
    logs.mkdir(parents=True, exist_ok=True)
    store = await open_store(settings)
    processes: dict[str, subprocess.Popen] = {}
    memory: dict[str, dict] = {}
    try:
        ids = await enqueue_jobs(store, jobs, params)
        began = time.time()
        for slot in slots:
            with (logs / f"{label}-{slot.name}.log").open("ab") as log:
                processes[slot.name] = subprocess.Popen([sys.executable, "-m", "engine.worker", "--name", slot.name],
                                                        env=slot.env, stdout=log, stderr=subprocess.STDOUT,
                                                        start_new_session=True)
        while True:
            for name, process in processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"worker {name} exited with {process.returncode}: see {logs}")
                memory[name] = {**memory.get(name, {}), **process_memory(process.pid)}
            finished = [await store.get(job_id) for job_id in ids]
            if all(job.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED) for job in finished):
                break
            if time.time() - began > timeout:
                raise TimeoutError(f"round {label}: {[job.state.value for job in finished]} after {timeout:.0f} s")
            await asyncio.sleep(POLL_SECONDS)
        workers = {info.name: info for info in await store.workers()}
    finally:
        stop_all(processes)
        await store.close()
    return round_record(label, slots, finished, workers, memory, began)


def stop_all(processes: dict[str, subprocess.Popen]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes.values():
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def round_record(label: str, slots, finished, workers: dict, memory: dict, began: float) -> dict:
    claimed = sorted(finished, key=lambda job: (job.started_at, job.id))
    first_claim = claimed[0].started_at
    span = max(job.finished_at for job in finished) - first_claim
    return {
        "bench": "multi_gpu", "round": label,
        "workers": [worker_record(slot, workers.get(slot.name), memory.get(slot.name, {})) for slot in slots],
        "jobs": [{"job": job.id, "person": job.user_id, "worker": job.worker, "state": job.state.value,
                  "attempts": job.attempts, "claimed_s": round(job.started_at - began, 2),
                  "claimed_to_done_s": round(job.finished_at - job.started_at, 2)} for job in finished],
        "every_job_done_once": all(job.state is JobState.DONE and job.attempts == 1 for job in finished),
        "claimed_in_fair_order": [job.id for job in claimed] == sorted(job.id for job in finished),
        "workers_used": sorted({job.worker for job in finished}),
        "start_up_s": round(first_claim - began, 2), "span_s": round(span, 2),
        "jobs_per_hour": round(3600 * len(finished) / span, 2),
    }


def worker_record(slot, info, memory: dict) -> dict:
    """One worker's slot (its GPU, its RAM share), what it told the store (None: it never did) and its memory."""
    return {"name": slot.name, "cuda_visible_devices": slot.env.get("CUDA_VISIBLE_DEVICES"),
            "engine_ram_gb": slot.env.get("ENGINE_RAM_GB"),
            "seconds_per_step": getattr(info, "seconds_per_step", None), "gpu": getattr(info, "gpu", None),
            "plan": getattr(info, "plan", None), "peak_rss_gb": memory.get("VmHWM"),
            "private_gb_at_end": memory.get("RssAnon")}


def compare(rounds: list[dict]) -> dict:
    """The last round against the first: jobs per hour, and each worker's s/step against the lone worker's."""
    lone, many = rounds[0], rounds[-1]
    lone_step = lone["workers"][0]["seconds_per_step"]
    return {"bench": "multi_gpu", "summary": f"{many['round']} vs {lone['round']}",
            "jobs_per_hour_ratio": round(many["jobs_per_hour"] / lone["jobs_per_hour"], 3),
            "s_per_step_vs_lone": [None if w["seconds_per_step"] is None or not lone_step
                                   else round(w["seconds_per_step"] / lone_step, 3) for w in many["workers"]]}


def round_env(args: argparse.Namespace, label: str, models: Path) -> dict[str, str | None]:
    env = {"DATA_DIR": str(args.work / label / "data"), "FRAMEPACK_MODELS_DIR": str(models),
           "FRAMEPACK_AUTO_DOWNLOAD": "false", "ALLOWED_VARIANTS": "original", "ENGINE_MEMORY_MODE": args.mode,
           "MAX_QUEUED_PER_USER": str(args.jobs), "RENDER_RESOLUTION": str(args.resolution),
           "ENGINE_ATTENTION": args.attention, "ENGINE_WARM_UP": "false" if args.no_warm_up else "true",
           "DATABASE_URL": None, "STORAGE_URL": None, "ENGINE_RAM_GB": None}
    if args.device == "cpu":
        return {**env, "ENGINE_DEVICE": "cpu", "ENGINE_GPUS": None,
                "ENGINE_WORKERS": str(1 if label == "1" else args.workers)}
    first = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    return {**env, "ENGINE_DEVICE": None, "ENGINE_GPUS": first if label == "1" else None}  # all: every GPU found


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", default="1,all", help="1: one GPU (the first), all: every GPU found")
    parser.add_argument("--mode", default="auto", help="ENGINE_MEMORY_MODE of the workers: auto, high or low")
    add_job_arguments(parser)
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/framepack_random_checkpoint"),
                        help="the full-size random models in the Hub layout (written when absent)")
    parser.add_argument("--models", type=Path, default=None, help="a models folder to use instead (--device cpu)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--workers", type=int, default=2, help="CPU workers in the round 'all' (--device cpu)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--work", type=Path, default=Path("/tmp/multi_gpu"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    models = args.models or write_checkpoint(args.checkpoint)
    params = JobParams(seconds=args.seconds, steps=args.steps, resolution=args.resolution)
    rounds = []
    for label in args.rounds.split(","):
        rounds.append(asyncio.run(run_round(label, round_env(args, label, models), args.jobs, params,
                                            args.work / "logs", args.timeout)))
        write(args.out, rounds[-1])
    if len(rounds) > 1:
        write(args.out, compare(rounds))
    return rounds


def write_checkpoint(root: Path) -> Path:
    """The seeded full-size models in the Hub layout, written once (about 45 GB), freed before the workers start."""
    if (root / "written").exists():
        return root
    import gc

    import torch

    from benchmarks.full_size import full_models, save_checkpoint
    from engine.sections import Variant

    save_checkpoint(full_models(Variant.ORIGINAL), root)
    gc.collect()
    torch.cuda.empty_cache()
    (root / "written").touch()
    return root


if __name__ == "__main__":
    main()
