"""Queue position and ETA: list scheduling of the jobs ahead on the workers there are."""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(frozen=True)
class Speed:
    seconds_per_step: float
    section_overhead: float  # VAE decode, video segment and preview per section

    def job_seconds(self, sections: int, steps_per_section: int) -> float:
        return sections * (steps_per_section * self.seconds_per_step + self.section_overhead)


def start_and_finish(
    running_left: list[float], ahead: list[float], own: float, workers: int
) -> tuple[float, float]:
    """When a job starts and ends, given the seconds left on running jobs, the durations of the queued
    jobs ahead of it in order, its own duration, and the number of workers (at least one)."""
    workers = max(workers, 1, len(running_left))
    free = sorted(running_left) + [0.0] * (workers - len(running_left))
    heapq.heapify(free)
    for duration in ahead:
        heapq.heappush(free, heapq.heappop(free) + duration)
    start = heapq.heappop(free)
    return start, start + own
