"""Queue positions and finish times from the rows a store read: the same arithmetic for every backend."""

from __future__ import annotations

import json

from storage.eta import Speed, finish_times, preparation_seconds
from storage.jobs import Extends, Job, JobParams


def running_seconds_left(job: Job, speed: Speed) -> float:
    """Seconds until a running job ends: its steps left, and the overhead of each section not yet finished."""
    left_steps = max(job.params.total_steps - job.progress.steps_done, 0)
    left_sections = max(job.params.sections - max(job.progress.section - 1, 0), 0)
    # Only the job's own threshold counts: a worker's ENGINE_TEACACHE is already in its plain figure.
    step = speed.step_seconds(job.params.teacache > 0, job.params.cfg > 1)
    # An extension still making its source ready has that ahead of its first step.
    preparing = preparation_seconds(speed, job.extends) if job.progress.section == 0 else 0.0
    return left_steps * step + left_sections * speed.section_overhead + preparing


def queued_seconds(params_json: str, extends: Extends | None, speed: Speed) -> float:
    """How long a queued job takes, from its stored params (rows from before an option read as without it)."""
    p = json.loads(params_json)
    sections = JobParams(seconds=p["seconds"]).sections
    return (speed.job_seconds(sections, p["steps"], p.get("teacache", 0) > 0, p.get("cfg", 1) > 1)
            + preparation_seconds(speed, extends))


def positions(
    running: list[Job], queued: list[tuple[int, str, Extends | None]], speed: Speed, workers: int
) -> dict[int, tuple[int, float]]:
    """(position, seconds until done) of every running job (position 0) and of every queued one, given as
    (id, params JSON, what it extends) in the order workers take them."""
    result, worker_free_in = {}, {}
    for job in running:
        left = running_seconds_left(job, speed)
        result[job.id] = (0, left)
        # A worker runs the next job while the last one writes its last segment and upload copies (the GPU
        # turn, engine/gpu_turn.py): its two running jobs share one slot, free when the longer one ends.
        slot = job.worker if job.worker is not None else f"job {job.id}"
        worker_free_in[slot] = max(worker_free_in.get(slot, 0.0), left)
    running_left = list(worker_free_in.values())
    durations = [queued_seconds(params, extends, speed) for _, params, extends in queued]
    finishes = finish_times(running_left, durations, workers)
    for position, ((job_id, _, _), finish) in enumerate(zip(queued, finishes, strict=True), start=1):
        result[job_id] = (position, finish)
    return result
