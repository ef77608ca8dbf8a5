"""Queue position and ETA: list scheduling of the jobs ahead on the workers there are."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

CFG_FACTOR = 2.0


@dataclass(frozen=True)
class Speed:
    seconds_per_step: float
    section_overhead: float  # VAE decode, video segment and preview per section
    teacache_factor: float = 0.5  # a TeaCache job's seconds per step over a plain one's

    def step_seconds(self, teacache: bool = False, cfg: bool = False) -> float:
        # Real CFG (cfg > 1) runs the transformer twice a step: once with the prompt, once with the negative.
        return self.seconds_per_step * (self.teacache_factor if teacache else 1.0) * (CFG_FACTOR if cfg else 1.0)

    def job_seconds(self, sections: int, steps_per_section: int, teacache: bool = False, cfg: bool = False) -> float:
        return sections * (steps_per_section * self.step_seconds(teacache, cfg) + self.section_overhead)


def finish_times(running_left: list[float], queued: list[float], workers: int) -> list[float]:
    """When each queued job (durations in queue order) ends, given the seconds left on the running
    jobs and the number of workers (at least one): each job goes to the worker that is free first."""
    workers = max(workers, 1, len(running_left))
    free = sorted(running_left) + [0.0] * (workers - len(running_left))
    heapq.heapify(free)
    finishes = []
    for duration in queued:
        finish = heapq.heappop(free) + duration
        heapq.heappush(free, finish)
        finishes.append(finish)
    return finishes


def start_and_finish(
    running_left: list[float], ahead: list[float], own: float, workers: int
) -> tuple[float, float]:
    """When one job starts and ends, behind the queued jobs `ahead` of it."""
    finish = finish_times(running_left, [*ahead, own], workers)[-1]
    return finish - own, finish


# Making an extension's source ready, in sections' overheads: from kept latents, one decode of the last ones; from
# a video a person sent, the whole file decoded and its last 73 frames VAE-encoded (an encode costs about two
# decodes). Estimates until measured.
PREPARATION_SECTIONS_KEPT, PREPARATION_SECTIONS_VIDEO = 1.0, 3.0


def preparation_seconds(speed: Speed, extends) -> float:
    """The time an extension job (`extends`: storage.jobs.Extends) spends before its first step; 0 for others."""
    if extends is None:
        return 0.0
    sections = PREPARATION_SECTIONS_VIDEO if extends.from_video else PREPARATION_SECTIONS_KEPT
    return sections * speed.section_overhead
