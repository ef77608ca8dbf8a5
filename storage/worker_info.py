"""What /admin workers shows of each live worker: where it runs, its memory plan, its speed, its current job."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    host: str | None  # None: a worker from before it said (or one that has not yet)
    gpu: str | None  # the device's name, e.g. "NVIDIA H200", or "cpu"
    plan: str | None  # its memory plan, e.g. "high" (engine/memory_plan.py), once its models are planned
    seconds_per_step: float | None  # measured, blended over recent jobs; None before its first job
    job_id: int | None  # the job it renders now
    problem: str | None = None  # why it cannot render now
    starting: bool = False  # loading and compiling before its first claim


# One query for both backends: live workers with their running job (`?`/`%s` and the clock filled in by each store).
WORKERS_SQL = (
    "SELECT w.name, w.host, w.gpu, w.plan, w.seconds_per_step, "
    "(SELECT MAX(j.id) FROM jobs AS j WHERE j.worker = w.name AND j.state = 'running'), w.problem, w.starting "
    "FROM workers AS w WHERE w.seen_at >= {since} ORDER BY w.name"
)


def worker_info(row) -> WorkerInfo:
    return WorkerInfo(*row[:7], starting=bool(row[7]))
