"""A job's turn on the worker's GPU, given up as soon as the job has no more GPU work.

A render's last section ends with its segment written to an MP4, the segments joined and the job's
continuation saved: seconds of CPU work (3-4 s of a 98 s job on an H200, benchmarks/results/
2026-12-03_engine_e2e_fast_decode_jobs_in_a_row_h200.jsonl). The worker starts the next job's GPU work
meanwhile. A render that finds a damaged segment after giving up its turn takes it back, waiting for the
job that holds it, before it renders that part again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class GpuTurn:
    """`with turn:` holds `lock` (one per worker, shared by its jobs) until `release` or the end.
    `on_release` is told of a `release` before the end only: the GPU free while the job goes on."""

    def __init__(self, lock: threading.Lock, on_release: Callable[[], None] | None = None):
        self._lock = lock
        self._on_release = on_release
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def __enter__(self) -> GpuTurn:
        self.take_back()
        return self

    def __exit__(self, *exc) -> None:
        if self._held:
            self._held = False
            self._lock.release()

    def take_back(self) -> None:
        if not self._held:
            self._lock.acquire()
            self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()
            if self._on_release is not None:
                self._on_release()
